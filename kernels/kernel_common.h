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

}  // namespace
}  // namespace FASTDM_ISA
}  // namespace fastdm
