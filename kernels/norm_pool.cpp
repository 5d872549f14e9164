// Instance norm (GroupNorm with one channel per group) -> ReLU -> 2x2 average pool of an NHWC
// tensor, forward only: the ConvNet blocks after a Winograd convolution in the real branch and
// the test pass. Per image, three passes over its [H*W, C] rows while they sit in L2 (the
// channel sums, the centred squares, then normalise + ReLU + pool), each vectorised along C;
// only the pooled quarter is written. Optionally a fourth pass writes each pixel's sum over the
// channels of relu(y)^power (DataDAM's attention map of the block, before its normalisation), so
// that a tapped block stays one native call. The same steps in torch allocate and fill two full-size
// temporaries per block (benchmarks/RESULTS.md, issue 23).
//
// Compiled once per instruction set, as the other kernels (CMakeLists.txt, kernels/dispatch.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernel_common.h"  // the build's instruction set (from here on), check_f32

namespace fastdm {
namespace FASTDM_ISA {

// out[n, i, j, c] = mean over the 2x2 window of relu((x - mean) * scale + beta) with
// scale = gamma / sqrt(var + eps), statistics per (n, c) over H x W (sums in double, the
// variance from the centred values: GroupNorm's two passes). x [N, H, W, C] and out
// [N, H/2, W/2, C] contiguous (floor pooling: an odd last row or column is dropped).
// chansum (optional) [N, H, W]: sum over c of relu(y)^power at every pixel, the dropped ones too.
void norm_relu_pool_nhwc(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                         double eps, const at::Tensor& out, const std::optional<at::Tensor>& chansum,
                         double power) {
  check_f32(x, "x", 4);
  check_f32(gamma, "gamma", 1);
  check_f32(beta, "beta", 1);
  check_f32(out, "out", 4);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t Hq = H / 2, Wq = W / 2, HW = H * W;
  TORCH_CHECK(Hq >= 1 && Wq >= 1, "x is smaller than the 2x2 pool");
  TORCH_CHECK(gamma.size(0) == C && beta.size(0) == C, "gamma and beta need C entries");
  TORCH_CHECK(out.size(0) == N && out.size(1) == Hq && out.size(2) == Wq && out.size(3) == C,
              "out has the wrong shape");
  const float* xd = x.data_ptr<float>();
  const float* gm = gamma.data_ptr<float>();
  const float* bt = beta.data_ptr<float>();
  float* od = out.data_ptr<float>();
  float* sd = chansum_ptr(chansum, N, H, W, power);
  const bool linear = power == 1.0;
  const float pw = static_cast<float>(power);
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<double> acc(C);
    std::vector<float> mean(C), scale(C);
    for (int64_t n = n0; n < n1; ++n) {
      const float* xn = xd + n * HW * C;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = 0; p < HW; ++p) {
        const float* v = xn + p * C;
#pragma GCC ivdep
        for (int64_t c = 0; c < C; ++c) acc[c] += v[c];
      }
      for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<float>(acc[c] / HW);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = 0; p < HW; ++p) {
        const float* v = xn + p * C;
#pragma GCC ivdep
        for (int64_t c = 0; c < C; ++c) {
          const float d = v[c] - mean[c];
          acc[c] += d * d;
        }
      }
      for (int64_t c = 0; c < C; ++c)
        scale[c] = static_cast<float>(gm[c] / std::sqrt(acc[c] / HW + eps));
      float* on = od + n * Hq * Wq * C;
      for (int64_t i = 0; i < Hq; ++i) {
        for (int64_t j = 0; j < Wq; ++j) {
          const float* a = xn + ((2 * i) * W + 2 * j) * C;
          const float* b = a + C;
          const float* d = a + W * C;
          const float* e = d + C;
          float* o = on + (i * Wq + j) * C;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) {
            const float m = mean[c], s = scale[c], t = bt[c];
            o[c] = 0.25f * ((std::max((a[c] - m) * s + t, 0.f) + std::max((b[c] - m) * s + t, 0.f)) +
                            (std::max((d[c] - m) * s + t, 0.f) + std::max((e[c] - m) * s + t, 0.f)));
          }
        }
      }
      if (sd) {
        float* sn = sd + n * HW;
        for (int64_t p = 0; p < HW; ++p) {
          const float* v = xn + p * C;
          // eight partial sums (vectorisable without reassociating one float sum)
          float part[8] = {0.f};
          int64_t c = 0;
          if (linear) {
            for (; c + 8 <= C; c += 8)
#pragma GCC unroll 8
              for (int l = 0; l < 8; ++l)
                part[l] += std::max((v[c + l] - mean[c + l]) * scale[c + l] + bt[c + l], 0.f);
          }
          for (; c < C; ++c) {
            const float r = std::max((v[c] - mean[c]) * scale[c] + bt[c], 0.f);
            part[c & 7] += linear ? r : std::pow(r, pw);
          }
          sn[p] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        }
      }
    }
  });
}

}  // namespace FASTDM_ISA
}  // namespace fastdm
