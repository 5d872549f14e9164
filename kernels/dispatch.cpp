// fastdm's native library: registers the kernels' operators with PyTorch (torch.ops.fastdm_native)
// and picks, at run time, the build of each kernel for the instruction sets this CPU has, so
// one binary runs on any x86-64 CPU (never an illegal instruction on an older one).
// FASTDM_NATIVE_ISA=generic|avx2|avx512 forces a build (tests compare them).
//
// Loaded as the Python extension module fastdm._kernels (importing it runs the registrations
// below); it has no Python functions of its own.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "fastdm_build_info.h"  // FASTDM_BUILD_INFO: what CMake built this for (a JSON string)

namespace fastdm {

#define FASTDM_DECLARE(ns)                                                                     \
  namespace ns {                                                                               \
  void input_transform(const at::Tensor& x, const at::Tensor& V, int64_t pad_top,              \
                       int64_t pad_left, int64_t th, int64_t tw);                              \
  void output_transform(const at::Tensor& Mm, const std::optional<at::Tensor>& bias,           \
                        const at::Tensor& out, int64_t th, int64_t tw);                        \
  void first_block(const at::Tensor& x, const at::Tensor& weight,                   \
                              const std::optional<at::Tensor>& bias, const at::Tensor& gamma,  \
                              const at::Tensor& beta, double eps, const at::Tensor& out,       \
                              int64_t pad, bool nhwc, const std::optional<at::Tensor>& chansum, \
                              double power);                                                   \
  void first_block_backward(                                                        \
      const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,    \
      const at::Tensor& gamma, const at::Tensor& beta, double eps, int64_t pad,                \
      const at::Tensor& gout, const at::Tensor& gw, const std::optional<at::Tensor>& gb,       \
      const at::Tensor& ggamma, const at::Tensor& gbeta);                                      \
  void norm_relu_pool_nhwc(const at::Tensor& x, const at::Tensor& gamma,                       \
                           const at::Tensor& beta, double eps, const at::Tensor& out,          \
                           const std::optional<at::Tensor>& chansum, double power);            \
  void phase_sums(const at::Tensor& q, const at::Tensor& out, bool accumulate);                \
  }
FASTDM_DECLARE(generic)
#ifdef FASTDM_HAVE_AVX2
FASTDM_DECLARE(avx2)
#endif
#ifdef FASTDM_HAVE_AVX512
FASTDM_DECLARE(avx512)
#endif

namespace {

enum class Isa { generic, avx2, avx512 };

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && cpu_has_avx2();
#else
  return false;
#endif
}

bool built(Isa isa) {
  switch (isa) {
    case Isa::generic: return true;
#ifdef FASTDM_HAVE_AVX2
    case Isa::avx2: return true;
#endif
#ifdef FASTDM_HAVE_AVX512
    case Isa::avx512: return true;
#endif
    default: return false;
  }
}

Isa choose() {
  const char* forced = std::getenv("FASTDM_NATIVE_ISA");
  if (forced != nullptr && *forced != '\0') {
    Isa want;
    bool has;
    if (std::strcmp(forced, "generic") == 0) {
      want = Isa::generic, has = true;
    } else if (std::strcmp(forced, "avx2") == 0) {
      want = Isa::avx2, has = cpu_has_avx2();
    } else if (std::strcmp(forced, "avx512") == 0) {
      want = Isa::avx512, has = cpu_has_avx512();
    } else {
      TORCH_CHECK(false, "FASTDM_NATIVE_ISA=", forced, ": choose generic, avx2 or avx512");
    }
    TORCH_CHECK(has, "FASTDM_NATIVE_ISA=", forced, ": this CPU lacks those instructions");
    TORCH_CHECK(built(want), "FASTDM_NATIVE_ISA=", forced, ": not in this build");
    return want;
  }
  if (built(Isa::avx512) && cpu_has_avx512()) return Isa::avx512;
  if (built(Isa::avx2) && cpu_has_avx2()) return Isa::avx2;
  return Isa::generic;
}

Isa chosen() {
  static const Isa isa = choose();  // once per process
  return isa;
}

// Calls the build of FN for the chosen instruction set.
#ifdef FASTDM_HAVE_AVX512
#define FASTDM_CASE_AVX512(FN, ...) case Isa::avx512: return avx512::FN(__VA_ARGS__);
#else
#define FASTDM_CASE_AVX512(FN, ...)
#endif
#ifdef FASTDM_HAVE_AVX2
#define FASTDM_CASE_AVX2(FN, ...) case Isa::avx2: return avx2::FN(__VA_ARGS__);
#else
#define FASTDM_CASE_AVX2(FN, ...)
#endif
#define FASTDM_DISPATCH(FN, ...)                                                               \
  switch (chosen()) {                                                                          \
    FASTDM_CASE_AVX512(FN, __VA_ARGS__)                                                        \
    FASTDM_CASE_AVX2(FN, __VA_ARGS__)                                                          \
    default: return generic::FN(__VA_ARGS__);                                                  \
  }

void input_transform(const at::Tensor& x, const at::Tensor& V, int64_t pad_top, int64_t pad_left,
                     int64_t th, int64_t tw) {
  FASTDM_DISPATCH(input_transform, x, V, pad_top, pad_left, th, tw)
}

void output_transform(const at::Tensor& Mm, const std::optional<at::Tensor>& bias,
                      const at::Tensor& out, int64_t th, int64_t tw) {
  FASTDM_DISPATCH(output_transform, Mm, bias, out, th, tw)
}

void first_block(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& gamma,
                            const at::Tensor& beta, double eps, const at::Tensor& out, int64_t pad,
                            bool nhwc, const std::optional<at::Tensor>& chansum, double power) {
  FASTDM_DISPATCH(first_block, x, weight, bias, gamma, beta, eps, out, pad, nhwc, chansum, power)
}

void first_block_backward(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     const at::Tensor& gamma, const at::Tensor& beta, double eps,
                                     int64_t pad, const at::Tensor& gout, const at::Tensor& gw,
                                     const std::optional<at::Tensor>& gb, const at::Tensor& ggamma,
                                     const at::Tensor& gbeta) {
  FASTDM_DISPATCH(first_block_backward, x, weight, bias, gamma, beta, eps, pad, gout, gw,
                  gb, ggamma, gbeta)
}

void norm_relu_pool_nhwc(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                         double eps, const at::Tensor& out, const std::optional<at::Tensor>& chansum,
                         double power) {
  FASTDM_DISPATCH(norm_relu_pool_nhwc, x, gamma, beta, eps, out, chansum, power)
}

void phase_sums(const at::Tensor& q, const at::Tensor& out, bool accumulate) {
  FASTDM_DISPATCH(phase_sums, q, out, accumulate)
}

std::string isa_name() {
  switch (chosen()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

std::string build_info() { return FASTDM_BUILD_INFO; }

}  // namespace
}  // namespace fastdm

TORCH_LIBRARY(fastdm_native, m) {
  m.def("winograd_input_transform(Tensor x, Tensor(a!) v, int pad_top, int pad_left, int th, int tw) -> ()",
        &fastdm::input_transform);
  m.def("winograd_output_transform(Tensor m, Tensor? bias, Tensor(a!) out, int th, int tw) -> ()",
        &fastdm::output_transform);
  m.def("first_block(Tensor x, Tensor weight, Tensor? bias, Tensor gamma, Tensor beta, float eps, Tensor(a!) out, int pad, bool nhwc, Tensor(b!)? chansum, float power) -> ()",
        &fastdm::first_block);
  m.def("first_block_backward(Tensor x, Tensor weight, Tensor? bias, Tensor gamma, Tensor beta, float eps, int pad, Tensor gout, Tensor(a!) gw, Tensor(b!)? gb, Tensor(c!) ggamma, Tensor(d!) gbeta) -> ()",
        &fastdm::first_block_backward);
  m.def("norm_relu_pool_nhwc(Tensor x, Tensor gamma, Tensor beta, float eps, Tensor(a!) out, Tensor(b!)? chansum, float power) -> ()",
        &fastdm::norm_relu_pool_nhwc);
  m.def("phase_sums(Tensor q, Tensor(a!) out, bool accumulate) -> ()", &fastdm::phase_sums);
  m.def("isa() -> str", &fastdm::isa_name);
  m.def("build_info() -> str", &fastdm::build_info);
}

static struct PyModuleDef fastdm_kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "fastdm's native CPU kernels: importing this registers torch.ops.fastdm_native", -1, nullptr};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&fastdm_kernels_module); }
