// Row sums of cos and sin of a float32 matrix of phases: NCFM's empirical characteristic
// function of a class's real features under the span draw (fastdm/objectives/span_draw.py),
// where the phases are a GEMM's output [M, n]. torch takes cos and sin in two passes that each
// write a full matrix, then sums them (2.7 ms for 4096 x 256 on two cores); here one pass
// computes both from one range reduction and adds them up in registers.
//
// cos and sin: x = j pi/2 + r with j the nearest integer to x 2/pi and r from a three-part
// Cody-Waite split of pi/2, then Cephes' single-precision minimax polynomials on |r| <= pi/4
// (coefficients from Cephes sinf.c/cosf.c), the quadrant picking and signing the pair. Rows
// holding a |phase| above LIMIT (where the split loses digits) are summed in double by the
// C library instead: the same results, slower, never wrong.
//
// Compiled once per instruction set, as the other kernels (CMakeLists.txt, kernels/dispatch.cpp):
// the inner loop is branch-free so the compiler vectorises it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "kernel_common.h"  // the build's instruction set (from here on), check_f32

namespace fastdm {
namespace FASTDM_ISA {

namespace {

constexpr float LIMIT = 8192.0f;
constexpr float TWO_OVER_PI = 0.636619772367581343f;
constexpr float ROUNDER = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
constexpr float PIO2_1 = 1.5703125f;    // pi/2 = PIO2_1 + PIO2_2 + PIO2_3, the first two exact
constexpr float PIO2_2 = 4.837512969970703125e-4f;
constexpr float PIO2_3 = 7.54978995489188216e-8f;

// Sums of cos and sin over n phases in ``row``; the largest |phase| seen goes to ``amax``.
inline void row_sums(const float* row, int64_t n, float& cs, float& sn, float& amax) {
  float c_acc = 0.0f, s_acc = 0.0f, m_acc = 0.0f;
#pragma omp simd reduction(+ : c_acc, s_acc) reduction(max : m_acc)
  for (int64_t k = 0; k < n; ++k) {
    const float x = row[k];
    const float jf = (x * TWO_OVER_PI + ROUNDER) - ROUNDER;
    const int j = static_cast<int>(jf);
    const float r = ((x - jf * PIO2_1) - jf * PIO2_2) - jf * PIO2_3;
    const float r2 = r * r;
    const float sp = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
    const float cp = 1.0f - 0.5f * r2 +
                     r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
    const bool swap = (j & 1) != 0;
    const float s0 = swap ? cp : sp, c0 = swap ? sp : cp;
    s_acc += (j & 2) ? -s0 : s0;            // sin(x): -, on quadrants 2 and 3
    c_acc += ((j + 1) & 2) ? -c0 : c0;      // cos(x): -, on quadrants 1 and 2
    const float ax = std::fabs(x);
    m_acc = ax > m_acc ? ax : m_acc;
  }
  cs = c_acc;
  sn = s_acc;
  amax = m_acc;
}

}  // namespace

// out[0, m] (+)= sum_k cos q[m, k], out[1, m] (+)= sum_k sin q[m, k] for q [M, K] float32 with
// unit column stride (any row stride), out [2, M] float32 contiguous; ``accumulate`` adds to out.
void phase_sums(const at::Tensor& q, const at::Tensor& out, bool accumulate) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == at::kFloat && q.dim() == 2,
              "q must be a 2-D float32 CPU tensor");
  TORCH_CHECK(q.size(1) <= 1 || q.stride(1) == 1, "q's rows must be contiguous");
  check_f32(out, "out", 2);
  const int64_t M = q.size(0), K = q.size(1), ld = q.stride(0);
  TORCH_CHECK(out.size(0) == 2 && out.size(1) == M, "out must be [2, M]");
  const float* qd = q.data_ptr<float>();
  float* od = out.data_ptr<float>();
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* row = qd + m * ld;
      float cs, sn, amax;
      row_sums(row, K, cs, sn, amax);
      if (!(amax <= LIMIT)) {  // large or non-finite phases: the C library, in double
        double c = 0.0, s = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          c += std::cos(static_cast<double>(row[k]));
          s += std::sin(static_cast<double>(row[k]));
        }
        cs = static_cast<float>(c);
        sn = static_cast<float>(s);
      }
      od[m] = accumulate ? od[m] + cs : cs;
      od[M + m] = accumulate ? od[M + m] + sn : sn;
    }
  });
}

}  // namespace FASTDM_ISA
}  // namespace fastdm
