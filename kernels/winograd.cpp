// Winograd F(4x4, 3x3) transforms for the CPU embedder's 3x3 convolutions (stride 1).
//
// A 3x3 convolution computed as Y = A^T [ (G g G^T) . (B^T d B) ] A over 6x6 input tiles
// needs 36 multiplies per 4x4 outputs and input channel instead of 144: the 36 element-wise
// products become 36 GEMMs (tiles x C_in) @ (C_in x C_out), done by torch.bmm. These kernels
// are the memory-bound parts around that GEMM, which torch and inductor did slowly
// (fastdm/ops/winograd.py): the input transform (NHWC image -> [36, tiles, C]) and the
// output transform ([36, tiles, K] -> NHWC image, plus bias). Matrices: Lavin & Gray,
// "Fast Algorithms for Convolutional Neural Networks" (2016), F(4x4, 3x3).
//
// Compiled once per instruction set (CMakeLists.txt: FASTDM_ISA = generic, avx2, avx512, each
// with its own target pragma below); kernels/dispatch.cpp picks one at run time from what the
// CPU has.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "kernel_common.h"  // the build's instruction set (from here on), check_f32

namespace fastdm {
namespace FASTDM_ISA {
namespace {

constexpr int T = 6;   // tile side
constexpr int M = 4;   // outputs per tile side
constexpr int CB = 64; // channels per inner block (fits the tile buffers in L1)

// o_a = sum_i B^T[a][i] z_i on n floats
inline void input_1d(const float* const z[T], float* const o[T], int n) {
#pragma GCC ivdep  // the rows never overlap: let GCC vectorise over channels
  for (int c = 0; c < n; ++c) {
    const float z0 = z[0][c], z1 = z[1][c], z2 = z[2][c], z3 = z[3][c], z4 = z[4][c], z5 = z[5][c];
    o[0][c] = 4.f * z0 - 5.f * z2 + z4;
    o[1][c] = -4.f * (z1 + z2) + z3 + z4;
    o[2][c] = 4.f * (z1 - z2) - z3 + z4;
    o[3][c] = 2.f * (z3 - z1) - z2 + z4;
    o[4][c] = 2.f * (z1 - z3) - z2 + z4;
    o[5][c] = 4.f * z1 - 5.f * z3 + z5;
  }
}

// o_p = sum_a A^T[p][a] z_a on n floats
inline void output_1d(const float* const z[T], float* const o[M], int n) {
#pragma GCC ivdep
  for (int c = 0; c < n; ++c) {
    const float a12 = z[1][c] + z[2][c], s12 = z[1][c] - z[2][c];
    const float a34 = z[3][c] + z[4][c], s34 = z[3][c] - z[4][c];
    o[0][c] = z[0][c] + a12 + a34;
    o[1][c] = s12 + 2.f * s34;
    o[2][c] = a12 + 4.f * a34;
    o[3][c] = s12 + 8.f * s34 + z[5][c];
  }
}

}  // namespace

// x: [N, H, W, C] (NHWC); tiles start at (-pad_top, -pad_left) with stride 4; pixels outside
// the image are zero. Writes V: [36, N * th * tw, C], V[a*6+b] = (B^T d B)[a][b] (a buffer the
// caller reuses: fresh multi-MB buffers per block cost more in page faults than the transform).
void input_transform(const at::Tensor& x, const at::Tensor& V, int64_t pad_top, int64_t pad_left,
                     int64_t th, int64_t tw) {
  check_f32(x, "x", 4);
  check_f32(V, "V", 3);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t P = N * th * tw;
  TORCH_CHECK(V.size(0) == T * T && V.size(1) == P && V.size(2) == C, "V has the wrong shape");
  TORCH_CHECK(pad_top >= 0 && pad_left >= 0 && th > 0 && tw > 0, "bad padding or tile grid");
  const float* xp = x.data_ptr<float>();
  float* vp = V.data_ptr<float>();
  at::parallel_for(0, P, 16, [&](int64_t p0, int64_t p1) {
    alignas(64) float d[T][T][CB];
    alignas(64) float r[T][T][CB];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / (th * tw), ty = (p / tw) % th, tx = p % tw;
      const int64_t y0 = ty * M - pad_top, x0 = tx * M - pad_left;
      for (int64_t c0 = 0; c0 < C; c0 += CB) {
        const int cb = static_cast<int>(std::min<int64_t>(CB, C - c0));
        for (int i = 0; i < T; ++i) {
          const int64_t yy = y0 + i;
          for (int j = 0; j < T; ++j) {
            const int64_t xx = x0 + j;
            if (yy < 0 || yy >= H || xx < 0 || xx >= W) {
              std::memset(d[i][j], 0, sizeof(float) * cb);
            } else {
              std::memcpy(d[i][j], xp + ((n * H + yy) * W + xx) * C + c0, sizeof(float) * cb);
            }
          }
        }
        for (int j = 0; j < T; ++j) {  // along the rows: r[a][j] = sum_i B^T[a][i] d[i][j]
          const float* z[T] = {d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]};
          float* o[T] = {r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]};
          input_1d(z, o, cb);
        }
        for (int a = 0; a < T; ++a) {  // along the columns, straight into V
          const float* z[T] = {r[a][0], r[a][1], r[a][2], r[a][3], r[a][4], r[a][5]};
          float* o[T];
          for (int b = 0; b < T; ++b) o[b] = vp + ((a * T + b) * P + p) * C + c0;
          input_1d(z, o, cb);
        }
      }
    }
  });
}

// Mm: [36, N * th * tw, K] (the GEMM's products); out: [N, Ho, Wo, K] (NHWC) receives
// A^T Mm A of each tile, cropped to the image, plus bias (may be undefined).
void output_transform(const at::Tensor& Mm, const std::optional<at::Tensor>& bias, const at::Tensor& out,
                      int64_t th, int64_t tw) {
  check_f32(Mm, "Mm", 3);
  check_f32(out, "out", 4);
  const int64_t N = out.size(0), Ho = out.size(1), Wo = out.size(2), K = out.size(3);
  const int64_t P = N * th * tw;
  TORCH_CHECK(Mm.size(0) == T * T && Mm.size(1) == P && Mm.size(2) == K, "Mm has the wrong shape");
  // the tiles must cover the output exactly (an uncovered pixel would stay uninitialised)
  TORCH_CHECK((th - 1) * M < Ho && Ho <= th * M && (tw - 1) * M < Wo && Wo <= tw * M,
              "the tile grid does not cover the output");
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    check_f32(*bias, "bias", 1);
    TORCH_CHECK(bias->size(0) == K, "bias has the wrong size");
    bp = bias->data_ptr<float>();
  }
  const float* mp = Mm.data_ptr<float>();
  float* yp = out.data_ptr<float>();
  at::parallel_for(0, P, 16, [&](int64_t p0, int64_t p1) {
    alignas(64) float s[M][T][CB];
    alignas(64) float y[M][M][CB];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / (th * tw), ty = (p / tw) % th, tx = p % tw;
      for (int64_t k0 = 0; k0 < K; k0 += CB) {
        const int kb = static_cast<int>(std::min<int64_t>(CB, K - k0));
        for (int b = 0; b < T; ++b) {  // along a: s[q][b] = sum_a A^T[q][a] Mm[a][b]
          const float* z[T];
          for (int a = 0; a < T; ++a) z[a] = mp + ((a * T + b) * P + p) * K + k0;
          float* o[M] = {s[0][b], s[1][b], s[2][b], s[3][b]};
          output_1d(z, o, kb);
        }
        for (int q = 0; q < M; ++q) {  // along b
          const float* z[T] = {s[q][0], s[q][1], s[q][2], s[q][3], s[q][4], s[q][5]};
          float* o[M] = {y[q][0], y[q][1], y[q][2], y[q][3]};
          output_1d(z, o, kb);
        }
        for (int q = 0; q < M; ++q) {
          const int64_t yy = ty * M + q;
          if (yy >= Ho) break;
          for (int u = 0; u < M; ++u) {
            const int64_t xx = tx * M + u;
            if (xx >= Wo) break;
            float* dst = yp + ((n * Ho + yy) * Wo + xx) * K + k0;
            if (bp) {
              for (int c = 0; c < kb; ++c) dst[c] = y[q][u][c] + bp[k0 + c];
            } else {
              std::memcpy(dst, y[q][u], sizeof(float) * kb);
            }
          }
        }
      }
    }
  });
}

}  // namespace FASTDM_ISA
}  // namespace fastdm
