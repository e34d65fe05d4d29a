// Bindings of the GEMM-family kernels (linear, quantize, int8_linear). Called from bindings.cpp.
// Python (bertsilicon/ops/_cpu_gemm.py) validates every tensor and passes raw pointers as integers;
// enums travel as ints (ElemType 0 f32 / 1 bf16 / 2 int8; Activation 0 none / 1 gelu / 2 gelu_tanh /
// 3 relu; OutType 0 f32 / 1 bf16 / 2 f16 / 3 int32; PackKind: see gemm_common.h).
#include <pybind11/pybind11.h>

#include "gemm.h"

namespace py = pybind11;

namespace {
template <class T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }
bs::PackKind kind_of(int k) {
  if (k < 0 || k > int(bs::PackKind::LastKind)) throw std::invalid_argument("unknown packed layout " + std::to_string(k));
  return bs::PackKind(k);
}
}  // namespace

void bind_gemm(py::module_& m) {
  m.def("gemm_pack_kind", [](int elem, bool weight_7bit) { return int(bs::gemm_pack_kind(bs::ElemType(elem), weight_7bit)); },
        py::arg("elem"), py::arg("weight_7bit") = false,
        "Packed weight layout the active ISA path uses for weights of this element type (int8: weight_7bit "
        "when every |w| <= 63).");
  m.def("int8_fits_7bit", [](uintptr_t w, int64_t n) { return bs::fits_7bit(reinterpret_cast<const int8_t*>(w), n); },
        py::arg("w"), py::arg("n"), py::call_guard<py::gil_scoped_release>());
  m.attr("INT8_7BIT_MAX") = bs::kU8S7MaxWeight;
  m.def("gemm_pack_name", [](int kind) {
    static const char* names[] = {"raw", "f32x64", "bf16x64", "f32x16", "u8s8x64", "s16x16", "s16x64", "u8s7x16"};
    return std::string(names[int(kind_of(kind))]);
  }, py::arg("kind"));
  m.def("gemm_packed_bytes", [](int kind, int64_t n, int64_t k) { return bs::gemm_packed_bytes(kind_of(kind), n, k); },
        py::arg("kind"), py::arg("n"), py::arg("k"));
  m.def("gemm_pack",
        [](int kind, uintptr_t w, int elem, int64_t n, int64_t k, uintptr_t dst, int threads) {
          bs::gemm_pack(kind_of(kind), ptr<const void>(w), bs::ElemType(elem), n, k, ptr<void>(dst), threads);
        },
        py::arg("kind"), py::arg("w"), py::arg("elem"), py::arg("n"), py::arg("k"), py::arg("dst"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("linear",
        [](int kind, uintptr_t x, int elem, int64_t M, int64_t K, uintptr_t w, int64_t N, uintptr_t bias, int act,
           uintptr_t out, int out_type, int threads) {
          bs::Epilogue ep{ptr<const float>(bias), bs::Activation(act), bs::OutType(out_type), ptr<void>(out), N};
          bs::linear(kind_of(kind), ptr<const void>(x), bs::ElemType(elem), M, K, ptr<const void>(w), N, ep, threads);
        },
        py::arg("kind"), py::arg("x"), py::arg("elem"), py::arg("M"), py::arg("K"), py::arg("w"), py::arg("N"),
        py::arg("bias"), py::arg("act"), py::arg("out"), py::arg("out_type"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("int8_linear",
        [](int kind, uintptr_t x, int64_t M, int64_t K, uintptr_t w, int64_t N, uintptr_t xs, uintptr_t ws,
           uintptr_t bias, int act, uintptr_t out, int out_type, int threads) {
          bs::Epilogue ep{ptr<const float>(bias), bs::Activation(act), bs::OutType(out_type), ptr<void>(out), N};
          bs::int8_linear(kind_of(kind), ptr<const int8_t>(x), M, K, ptr<const void>(w), N, ptr<const float>(xs),
                          ptr<const float>(ws), ep, threads);
        },
        py::arg("kind"), py::arg("x"), py::arg("M"), py::arg("K"), py::arg("w"), py::arg("N"), py::arg("x_scale"),
        py::arg("w_scale"), py::arg("bias"), py::arg("act"), py::arg("out"), py::arg("out_type"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("int8_linear_dynamic",
        [](int kind, uintptr_t x, int elem, int64_t M, int64_t K, uintptr_t inv_smooth, uintptr_t w, int64_t N,
           uintptr_t ws, uintptr_t xs_out, uintptr_t bias, int act, uintptr_t out, int out_type, int threads) {
          bs::Epilogue ep{ptr<const float>(bias), bs::Activation(act), bs::OutType(out_type), ptr<void>(out), N};
          bs::int8_linear_dynamic(kind_of(kind), ptr<const void>(x), bs::ElemType(elem), M, K,
                                  ptr<const float>(inv_smooth), ptr<const void>(w), N, ptr<const float>(ws),
                                  ptr<float>(xs_out), ep, threads);
        },
        py::arg("kind"), py::arg("x"), py::arg("elem"), py::arg("M"), py::arg("K"), py::arg("inv_smooth"), py::arg("w"),
        py::arg("N"), py::arg("w_scale"), py::arg("x_scale_out"), py::arg("bias"), py::arg("act"), py::arg("out"),
        py::arg("out_type"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def("gemm_epilogue_inplace",
        [](uintptr_t y, int elem, int64_t M, int64_t N, uintptr_t bias, int act, int threads) {
          bs::epilogue_inplace(ptr<void>(y), bs::ElemType(elem), M, N, ptr<const float>(bias), bs::Activation(act), threads);
        },
        py::arg("y"), py::arg("elem"), py::arg("M"), py::arg("N"), py::arg("bias"), py::arg("act"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("quantize",
        [](uintptr_t x, int elem, int64_t rows, int64_t cols, bool per_tensor, uintptr_t q, uintptr_t scale, int threads) {
          bs::quantize(ptr<const void>(x), bs::ElemType(elem), rows, cols, per_tensor, ptr<int8_t>(q), ptr<float>(scale),
                       threads);
        },
        py::arg("x"), py::arg("elem"), py::arg("rows"), py::arg("cols"), py::arg("per_tensor"), py::arg("q"),
        py::arg("scale"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
}
