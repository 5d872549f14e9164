// The first block of a ConvNet on images of few channels (1 to 4: MNIST's gray, CIFAR's RGB):
// 3x3 convolution (stride 1, zero padding) -> GroupNorm(K, K) -> ReLU -> 2x2 average pool, per
// image for 32 output channels at a time with their full-size output in L2; and its backward
// to the block's parameters (not to the images: the first layer of a training step on data),
// per (image, output channel) plane in L1. The modules write the convolution's full-size output
// (128 x 32 x 32 floats per image) and read it back three times, and their backward makes five
// passes over its full-size gradient; this block writes only the pooled quarter, and its
// backward recomputes each plane (9 multiply-adds a pixel and input channel) instead of reading
// stored activations (benchmarks/RESULTS.md, issue 23). The forward's convolution is vectorised
// along the output channels (a pixel's 32 sums in four vector registers, two pixels a step;
// faster than along image rows, and already channel-minor for NHWC); the backward's runs along
// image rows, 8 outputs per vector.
//
// Compiled once per instruction set, as winograd.cpp (CMakeLists.txt, kernels/dispatch.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernel_common.h"  // the build's instruction set (from here on), check_f32

namespace fastdm {
namespace FASTDM_ISA {
namespace {

struct Shape {
  int64_t N, C, H, W, K, pad, Hp, Wp, Ho, Wo;
};

Shape shape_of(const at::Tensor& x, const at::Tensor& w, int64_t pad) {
  check_f32(x, "x", 4);
  check_f32(w, "weight", 4);
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= 4, "x must have 1 to 4 channels");
  TORCH_CHECK(w.size(1) == x.size(1) && w.size(2) == 3 && w.size(3) == 3,
              "weight must be [K, C, 3, 3] for x [N, C, H, W]");
  TORCH_CHECK(pad >= 0, "padding must be >= 0");
  Shape s{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), pad, 0, 0, 0, 0};
  s.Hp = s.H + 2 * pad, s.Wp = s.W + 2 * pad;
  s.Ho = s.Hp - 2, s.Wo = s.Wp - 2;
  TORCH_CHECK(s.Ho >= 1 && s.Wo >= 1, "the padded image is smaller than the 3x3 kernel");
  return s;
}

// shape_of, and the norm's parameters and the pool checked as both kernels need them.
Shape block_shape(const at::Tensor& x, const at::Tensor& w, int64_t pad, const at::Tensor& gamma,
                  const at::Tensor& beta) {
  const Shape s = shape_of(x, w, pad);
  check_f32(gamma, "gamma", 1);
  check_f32(beta, "beta", 1);
  TORCH_CHECK(gamma.size(0) == s.K && beta.size(0) == s.K, "gamma and beta need K entries");
  TORCH_CHECK(s.Ho >= 2 && s.Wo >= 2, "the convolution's output is smaller than the 2x2 pool");
  return s;
}

const float* optional_ptr(const std::optional<at::Tensor>& t, int64_t size, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_f32(*t, name, 1);
  TORCH_CHECK(t->size(0) == size, name, " has the wrong size");
  return t->data_ptr<float>();
}



// The image n ([C, H, W]) zero-padded into buf [C, Hp, Wp].
inline void pad_image(const float* x, const Shape& s, float* buf) {
  std::fill(buf, buf + s.C * s.Hp * s.Wp, 0.f);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t i = 0; i < s.H; ++i)
      std::memcpy(buf + (c * s.Hp + i + s.pad) * s.Wp + s.pad, x + (c * s.H + i) * s.W,
                  sizeof(float) * s.W);
}

// One input channel's share of an output plane: o[y, x] (= if first, else +=)
// sum_{dy, dx} w[dy, dx] xp[y + dy, x + dx], then + b if last. The bias comes after the taps,
// as oneDNN adds it: added first, a large bias rounds every tap's sum at its own magnitude.
inline void conv_channel(const float* xp, const float* w, float b, bool first, bool last,
                         const Shape& s, float* o) {
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6],
              w7 = w[7], w8 = w[8];
  const float add = last ? b : 0.f;
  const int64_t Wo = s.Wo, Wp = s.Wp;
  for (int64_t y = 0; y < s.Ho; ++y) {
    const float* r0 = xp + y * Wp;
    const float* r1 = r0 + Wp;
    const float* r2 = r1 + Wp;
    float* row = o + y * Wo;
    // (the branch outside the loop: inside it, GCC leaves the loop scalar, 3-4x slower)
    if (first) {
#pragma GCC ivdep
      for (int64_t x = 0; x < Wo; ++x)
        row[x] = (w0 * r0[x] + w1 * r0[x + 1] + w2 * r0[x + 2] + w3 * r1[x] + w4 * r1[x + 1] +
                  w5 * r1[x + 2] + w6 * r2[x] + w7 * r2[x + 1] + w8 * r2[x + 2]) + add;
    } else {
#pragma GCC ivdep
      for (int64_t x = 0; x < Wo; ++x)
        row[x] = (row[x] + (w0 * r0[x] + w1 * r0[x + 1] + w2 * r0[x + 2] + w3 * r1[x] +
                            w4 * r1[x + 1] + w5 * r1[x + 2] + w6 * r2[x] + w7 * r2[x + 1] +
                            w8 * r2[x + 2])) + add;
    }
  }
}

// One output plane of output channel k: every input channel's share, then the bias.
inline void conv_plane(const float* xp, const float* wk, float b, const Shape& s, float* o) {
  for (int64_t c = 0; c < s.C; ++c)
    conv_channel(xp + c * s.Hp * s.Wp, wk + 9 * c, b, c == 0, c == s.C - 1, s, o);
}

// sum_i (v[i] - c)^2 if c is given as centre (squares), else sum_i v[i]: in 16 float lanes
// (independent sums GCC vectorises without reassociating), the lanes added in double.
inline double lane_sum(const float* v, int64_t n, float centre, bool squares) {
  float lanes[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) {
      const float d = v[i + l] - centre;
      lanes[l] += squares ? d * d : d;
    }
  }
  double total = 0.0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(v[i]) - centre;
    total += squares ? d * d : d;
  }
  for (int l = 0; l < 16; ++l) total += lanes[l];
  return total;
}

// sum_i a[i] b[i] in 16 float lanes, the lanes added in double.
inline double lane_dot(const float* a, const float* b, int64_t n) {
  float lanes[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) lanes[l] += a[i + l] * b[i + l];
  double total = 0.0;
  for (; i < n; ++i) total += static_cast<double>(a[i]) * b[i];
  for (int l = 0; l < 16; ++l) total += lanes[l];
  return total;
}

// sw[3 dy + dx] += sum_{y, x} gy[y, x] xp[y + dy, x + dx]: the nine taps' sums in one pass
// over the plane, eight outputs a step, each tap in its own float lanes (then double).
inline void weight_taps(const float* gy, const float* xp, const Shape& s, double* sw) {
  float acc[9][8] = {{0.f}};
  double tail[9] = {0.0};
  for (int64_t y = 0; y < s.Ho; ++y) {
    const float* g = gy + y * s.Wo;
    const float* r0 = xp + y * s.Wp;
    const float* r1 = r0 + s.Wp;
    const float* r2 = r1 + s.Wp;
    int64_t x = 0;
    for (; x + 8 <= s.Wo; x += 8) {
      for (int l = 0; l < 8; ++l) {
        const float v = g[x + l];
        acc[0][l] += v * r0[x + l];
        acc[1][l] += v * r0[x + l + 1];
        acc[2][l] += v * r0[x + l + 2];
        acc[3][l] += v * r1[x + l];
        acc[4][l] += v * r1[x + l + 1];
        acc[5][l] += v * r1[x + l + 2];
        acc[6][l] += v * r2[x + l];
        acc[7][l] += v * r2[x + l + 1];
        acc[8][l] += v * r2[x + l + 2];
      }
    }
    for (; x < s.Wo; ++x) {
      const double v = g[x];
      for (int t = 0; t < 9; ++t) tail[t] += v * (t < 3 ? r0 : t < 6 ? r1 : r2)[x + t % 3];
    }
  }
  for (int t = 0; t < 9; ++t) {
    double total = tail[t];
    for (int l = 0; l < 8; ++l) total += acc[t][l];
    sw[t] += total;
  }
}

// Output channels per pass of the forward: 4 AVX2 (2 AVX-512) vectors of accumulators for each
// of two pixels; the group's full-size output ([Ho * Wo, G] floats, 128 KB at 32 x 32) stays in L2.
constexpr int64_t G = 32;

// Eight floats in one vector register (GCC's vector extension: AVX's ymm in the avx2 and
// avx512 builds, two SSE registers in the generic one).
typedef float f8 __attribute__((vector_size(32)));
constexpr int64_t V = G / 8;

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof(v)); }

// The convolution of output channels [k0, k0 + G) at every output pixel, pixel-major:
// buf[p * G + kk] = sum_{c, dy, dx} wg[(9 c + 3 dy + dx) * G + kk] xp[c, y + dy, x + dx], then
// + bias (after the taps, as oneDNN). Two pixels a step: eight independent accumulators.
inline void conv_group(const float* xp, const float* wg, const float* bg, const Shape& s,
                       float* buf) {
  const int64_t plane = s.Hp * s.Wp, Wp = s.Wp;
  f8 bias[V];
  for (int64_t v = 0; v < V; ++v) bias[v] = load8(bg + 8 * v);
  for (int64_t y = 0; y < s.Ho; ++y) {
    int64_t x = 0;
    for (; x + 2 <= s.Wo; x += 2) {
      f8 a0[V] = {}, a1[V] = {};
      for (int64_t c = 0; c < s.C; ++c) {
        const float* r = xp + c * plane + y * Wp + x;
        const float* w = wg + 9 * c * G;
        for (int64_t dy = 0; dy < 3; ++dy)
          for (int64_t dx = 0; dx < 3; ++dx, w += G) {
            const float v0 = r[dy * Wp + dx], v1 = r[dy * Wp + dx + 1];
            for (int64_t v = 0; v < V; ++v) {
              const f8 wv = load8(w + 8 * v);
              a0[v] += v0 * wv;
              a1[v] += v1 * wv;
            }
          }
      }
      float* o = buf + (y * s.Wo + x) * G;
      for (int64_t v = 0; v < V; ++v) {
        store8(o + 8 * v, a0[v] + bias[v]);
        store8(o + G + 8 * v, a1[v] + bias[v]);
      }
    }
    for (; x < s.Wo; ++x) {
      f8 a0[V] = {};
      for (int64_t c = 0; c < s.C; ++c) {
        const float* r = xp + c * plane + y * Wp + x;
        const float* w = wg + 9 * c * G;
        for (int64_t dy = 0; dy < 3; ++dy)
          for (int64_t dx = 0; dx < 3; ++dx, w += G) {
            const float v0 = r[dy * Wp + dx];
            for (int64_t v = 0; v < V; ++v) a0[v] += v0 * load8(w + 8 * v);
          }
      }
      float* o = buf + (y * s.Wo + x) * G;
      for (int64_t v = 0; v < V; ++v) store8(o + 8 * v, a0[v] + bias[v]);
    }
  }
}

// Per channel of the group: sum over the pixels of buf[p * G + kk], or with a centre, of
// (buf[p * G + kk] - centre[kk])^2; a row at a time in float, the rows added in double.
inline void group_sums(const float* buf, int64_t rows, int64_t cols, const float* centre,
                       double* total) {
  for (int64_t kk = 0; kk < G; ++kk) total[kk] = 0.0;
  f8 m[V] = {};
  if (centre)
    for (int64_t v = 0; v < V; ++v) m[v] = load8(centre + 8 * v);
  for (int64_t y = 0; y < rows; ++y) {
    f8 r[V] = {};
    const float* b = buf + y * cols * G;
    if (centre) {
      for (int64_t x = 0; x < cols; ++x)
        for (int64_t v = 0; v < V; ++v) {
          const f8 d = load8(b + x * G + 8 * v) - m[v];
          r[v] += d * d;
        }
    } else {
      for (int64_t x = 0; x < cols; ++x)
        for (int64_t v = 0; v < V; ++v) r[v] += load8(b + x * G + 8 * v);
    }
    for (int64_t v = 0; v < V; ++v)
      for (int l = 0; l < 8; ++l) total[8 * v + l] += r[v][l];
  }
}

// The pooled G channels of output pixel (i, j): the 2x2 window's mean of
// relu(buf * scale + shift).
inline void pool_group(const float* buf, int64_t Wo, int64_t i, int64_t j, const f8* scale,
                       const f8* shift, float* dst) {
  const float* a = buf + ((2 * i) * Wo + 2 * j) * G;
  const float* c = a + Wo * G;
  const f8 zero = {};
  for (int64_t v = 0; v < V; ++v) {
    auto act = [&](const float* p) {
      const f8 z = load8(p + 8 * v) * scale[v] + shift[v];
      return z > zero ? z : zero;
    };
    store8(dst + 8 * v, 0.25f * ((act(a) + act(a + G)) + (act(c) + act(c + G))));
  }
}

// Adds to sums[p], at every pixel, the group's sum over its first g channels of
// relu(buf * scale + shift)^power (the channel sums of DataDAM's attention map).
inline void add_channel_sums(const float* buf, int64_t HW, int64_t g, const f8* scale,
                             const f8* shift, bool linear, float power, float* sums) {
  const f8 zero = {};
  for (int64_t p = 0; p < HW; ++p) {
    const float* b = buf + p * G;
    if (linear) {  // the padding lanes of a short group are relu(0 * 0 + 0) = 0
      f8 acc = {};
      for (int64_t v = 0; v < V; ++v) {
        const f8 z = load8(b + 8 * v) * scale[v] + shift[v];
        acc += z > zero ? z : zero;
      }
      sums[p] += ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    } else {
      float acc = 0.f;
      for (int64_t kk = 0; kk < g; ++kk) {
        const float z = b[kk] * scale[kk / 8][kk % 8] + shift[kk / 8][kk % 8];
        acc += z > 0.f ? std::pow(z, power) : 0.f;
      }
      sums[p] += acc;
    }
  }
}

}  // namespace

// out = avg_pool2d(relu(group_norm(conv2d(x, weight, bias, pad), K groups, gamma, beta, eps)), 2)
// as [N, Ho/2, Wo/2, K] (nhwc) or [N, K, Ho/2, Wo/2]. Per image, G output channels at a time:
// their convolution at every pixel (vectorised along the channels), their statistics (two
// passes: mean, then the centred sum of squares, as GroupNorm's own), then normalise, ReLU and
// pool into the output. chansum (optional) [N, Ho, Wo]: sum over the K channels of
// relu(y)^power at every pre-pool pixel (DataDAM's attention map, before its normalisation).
void first_block(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& gamma,
                            const at::Tensor& beta, double eps, const at::Tensor& out, int64_t pad,
                            bool nhwc, const std::optional<at::Tensor>& chansum, double power) {
  const Shape s = block_shape(x, weight, pad, gamma, beta);
  check_f32(out, "out", 4);
  const int64_t Hq = s.Ho / 2, Wq = s.Wo / 2;
  TORCH_CHECK(out.size(0) == s.N && out.size(nhwc ? 3 : 1) == s.K &&
              out.size(nhwc ? 1 : 2) == Hq && out.size(nhwc ? 2 : 3) == Wq, "out has the wrong shape");
  const float* bp = optional_ptr(bias, s.K, "bias");
  const float* xd = x.data_ptr<float>();
  const float* wd = weight.data_ptr<float>();
  const float* gm = gamma.data_ptr<float>();
  const float* bt = beta.data_ptr<float>();
  float* od = out.data_ptr<float>();
  float* sd = chansum_ptr(chansum, s.N, s.Ho, s.Wo, power);
  const int64_t HW = s.Ho * s.Wo, groups = (s.K + G - 1) / G, taps = 9 * s.C;
  // the weights and biases per group, channel-minor and zero-padded to G
  std::vector<float> wg(groups * taps * G, 0.f), bg(groups * G, 0.f);
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t q = k / G, kk = k % G;
    for (int64_t t = 0; t < taps; ++t) wg[(q * taps + t) * G + kk] = wd[k * taps + t];
    bg[q * G + kk] = bp ? bp[k] : 0.f;
  }
  at::parallel_for(0, s.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> xp(s.C * s.Hp * s.Wp), buf(HW * G), pooled(Hq * Wq * G);
    double sum[G];
    // a short last group's padding lanes are zero (relu(0) adds nothing to the channel sums)
    float mean[G] = {0.f}, scale[G] = {0.f}, shift[G] = {0.f};
    for (int64_t n = n0; n < n1; ++n) {
      pad_image(xd + n * s.C * s.H * s.W, s, xp.data());
      if (sd) std::fill(sd + n * HW, sd + (n + 1) * HW, 0.f);
      for (int64_t q = 0; q < groups; ++q) {
        const int64_t k0 = q * G, g = std::min(G, s.K - k0);
        conv_group(xp.data(), wg.data() + q * taps * G, bg.data() + q * G, s, buf.data());
        group_sums(buf.data(), s.Ho, s.Wo, nullptr, sum);
        for (int64_t kk = 0; kk < G; ++kk) mean[kk] = static_cast<float>(sum[kk] / HW);
        group_sums(buf.data(), s.Ho, s.Wo, mean, sum);
        for (int64_t kk = 0; kk < g; ++kk) {
          const double inv = 1.0 / std::sqrt(sum[kk] / HW + eps);
          const double gk = gm[k0 + kk];
          scale[kk] = static_cast<float>(gk * inv);
          shift[kk] = static_cast<float>(bt[k0 + kk] - static_cast<double>(mean[kk]) * gk * inv);
        }
        for (int64_t kk = g; kk < G; ++kk) scale[kk] = shift[kk] = 0.f;  // (the channel sums')
        f8 sc[V], sh[V];
        for (int64_t v = 0; v < V; ++v) sc[v] = load8(scale + 8 * v), sh[v] = load8(shift + 8 * v);
        if (sd) add_channel_sums(buf.data(), HW, g, sc, sh, power == 1.0, static_cast<float>(power),
                                 sd + n * HW);
        // NHWC: straight into the output; NCHW: into pooled, then transposed out
        for (int64_t i = 0; i < Hq; ++i) {
          for (int64_t j = 0; j < Wq; ++j) {
            if (nhwc && g == G) {
              pool_group(buf.data(), s.Wo, i, j, sc, sh, od + ((n * Hq + i) * Wq + j) * s.K + k0);
            } else {
              float* p = pooled.data() + (i * Wq + j) * G;
              pool_group(buf.data(), s.Wo, i, j, sc, sh, p);
              if (nhwc) std::memcpy(od + ((n * Hq + i) * Wq + j) * s.K + k0, p, sizeof(float) * g);
            }
          }
        }
        if (!nhwc)
          for (int64_t kk = 0; kk < g; ++kk) {
            float* o = od + (n * s.K + k0 + kk) * Hq * Wq;
            for (int64_t p = 0; p < Hq * Wq; ++p) o[p] = pooled[p * G + kk];
          }
      }
    }
  });
}

// The gradients of first_block (NCHW out) for the weight, bias, gamma and beta,
// given gout = d loss / d out [N, K, Ho/2, Wo/2]; they are written (not added) to gw [K, 1, 3, 3],
// gb [K] (if defined), ggamma [K], gbeta [K]. Each (image, channel) plane recomputes its
// convolution and statistics (9 multiply-adds a pixel: cheaper than keeping the full-size
// activations the modules' backward reads), then runs the pool, ReLU, instance-norm and
// convolution backward in L1. Parallel over channels, so each thread owns its channels' sums.
void first_block_backward(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                     int64_t pad, const at::Tensor& gout, const at::Tensor& gw,
                                     const std::optional<at::Tensor>& gb, const at::Tensor& ggamma,
                                     const at::Tensor& gbeta) {
  const Shape s = block_shape(x, weight, pad, gamma, beta);
  const int64_t Hq = s.Ho / 2, Wq = s.Wo / 2;
  check_f32(gout, "gout", 4);
  TORCH_CHECK(gout.size(0) == s.N && gout.size(1) == s.K && gout.size(2) == Hq && gout.size(3) == Wq,
              "gout has the wrong shape");
  check_f32(gw, "gw", 4);
  TORCH_CHECK(gw.numel() == 9 * s.C * s.K, "gw has the wrong size");
  const float* bp = optional_ptr(bias, s.K, "bias");
  float* gbp = nullptr;
  if (gb.has_value() && gb->defined()) {
    check_f32(*gb, "gb", 1);
    TORCH_CHECK(gb->size(0) == s.K, "gb has the wrong size");
    gbp = gb->data_ptr<float>();
  }
  check_f32(ggamma, "ggamma", 1);
  check_f32(gbeta, "gbeta", 1);
  TORCH_CHECK(ggamma.size(0) == s.K && gbeta.size(0) == s.K, "ggamma and gbeta need K entries");
  const float* xd = x.data_ptr<float>();
  const float* wd = weight.data_ptr<float>();
  const float* gm = gamma.data_ptr<float>();
  const float* bt = beta.data_ptr<float>();
  const float* god = gout.data_ptr<float>();
  float* gwd = gw.data_ptr<float>();
  float* ggd = ggamma.data_ptr<float>();
  float* gbd = gbeta.data_ptr<float>();
  const int64_t HW = s.Ho * s.Wo, P = s.C * s.Hp * s.Wp;
  // every image padded once, shared by the channels' threads
  std::vector<float> padded(s.N * P);
  at::parallel_for(0, s.N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) pad_image(xd + n * s.C * s.H * s.W, s, padded.data() + n * P);
  });
  at::parallel_for(0, s.K, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> z(HW), g(HW), gy(HW);
    for (int64_t k = k0; k < k1; ++k) {
      double sw[36] = {0.0}, sb = 0.0, sgamma = 0.0, sbeta = 0.0;  // 9 taps x at most 4 channels
      const float gk = gm[k];
      for (int64_t n = 0; n < s.N; ++n) {
        const float* xp = padded.data() + n * P;
        conv_plane(xp, wd + 9 * s.C * k, bp ? bp[k] : 0.f, s, z.data());
        const double mean = lane_sum(z.data(), HW, 0.f, false) / HW;
        const double sq = lane_sum(z.data(), HW, static_cast<float>(mean), true);
        const double inv = 1.0 / std::sqrt(sq / HW + eps);
        const float fm = static_cast<float>(mean), fi = static_cast<float>(inv);
        const float shift = bt[k];
#pragma GCC ivdep
        for (int64_t i = 0; i < HW; ++i) z[i] = (z[i] - fm) * fi;  // the normalised plane
        // pool and ReLU backward: a quarter of the pooled gradient where the ReLU passed;
        // rows and columns the floor pool dropped get none
        const float* go = god + (n * s.K + k) * Hq * Wq;
        std::fill(g.begin(), g.end(), 0.f);
        for (int64_t i = 0; i < 2 * Hq; ++i) {
          const float* grow = go + (i / 2) * Wq;
          const float* zr = z.data() + i * s.Wo;
          float* gr = g.data() + i * s.Wo;
          for (int64_t j = 0; j < Wq; ++j) {
            const float v = 0.25f * grow[j];
            gr[2 * j] = gk * zr[2 * j] + shift > 0.f ? v : 0.f;
            gr[2 * j + 1] = gk * zr[2 * j + 1] + shift > 0.f ? v : 0.f;
          }
        }
        // instance-norm backward: d/dgamma = sum g z, d/dbeta = sum g, and for the input
        // gy = inv * (gamma g - mean(gamma g) - z mean(gamma g z))
        const double s1 = lane_sum(g.data(), HW, 0.f, false);
        const double s2 = lane_dot(g.data(), z.data(), HW);
        sbeta += s1;
        sgamma += s2;
        const float c1 = static_cast<float>(gk * s1 / HW), c2 = static_cast<float>(gk * s2 / HW);
        const float gki = gk * fi;
#pragma GCC ivdep
        for (int64_t i = 0; i < HW; ++i) gy[i] = gki * g[i] - fi * (c1 + z[i] * c2);
        // convolution backward to the weight and bias: tap (dy, dx) meets xp[y + dy, x + dx]
        sb += lane_sum(gy.data(), HW, 0.f, false);
        for (int64_t c = 0; c < s.C; ++c) weight_taps(gy.data(), xp + c * s.Hp * s.Wp, s, sw + 9 * c);
      }
      for (int64_t t = 0; t < 9 * s.C; ++t) gwd[9 * s.C * k + t] = static_cast<float>(sw[t]);
      if (gbp) gbp[k] = static_cast<float>(sb);
      ggd[k] = static_cast<float>(sgamma);
      gbd[k] = static_cast<float>(sbeta);
    }
  });
}

}  // namespace FASTDM_ISA
}  // namespace fastdm
