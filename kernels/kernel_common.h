// Shared by every kernel file, included after its torch and standard headers: the build's
// instruction set (CMakeLists.txt compiles each kernel file once per FASTDM_ISA) and the
// argument check the kernels share.
//
// The instruction set applies to the including file's own functions only, from the include
// on: torch's inline header functions included before stay baseline x86-64, so the linker's one
// copy of each (shared by every build in the library) can never be an AVX one that the generic
// path would run.
#pragma once

#include <ATen/ATen.h>

#ifndef FASTDM_ISA
#define FASTDM_ISA generic
#endif

#if defined(FASTDM_ISA_AVX512)
#pragma GCC target("avx2,fma,avx512f,avx512dq,avx512bw,avx512vl")
#elif defined(FASTDM_ISA_AVX2)
#pragma GCC target("avx2,fma")
#endif

namespace fastdm {
namespace FASTDM_ISA {
namespace {

// A contiguous float32 CPU tensor of ``dim`` dimensions, or a one-line error naming it.
inline void check_f32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions");
}

// The optional per-pixel channel sums a block may write beside its output (DataDAM's attention
// maps before their normalisation: sum over channels of relu(y)^power): float32 [N, H, W]
// contiguous, or nullptr when not asked for.
inline float* chansum_ptr(const std::optional<at::Tensor>& t, int64_t N, int64_t H, int64_t W,
                          double power) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_f32(*t, "chansum", 3);
  TORCH_CHECK(t->size(0) == N && t->size(1) == H && t->size(2) == W,
              "chansum must be [N, H, W] of the block's pre-pool output");
  TORCH_CHECK(power > 0, "the channel sums' power must be positive");
  return t->data_ptr<float>();
}

}  // namespace
}  // namespace FASTDM_ISA
}  // namespace fastdm
