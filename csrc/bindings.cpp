// pybind11 bindings of bertsilicon._C. Python (bertsilicon/ops/_cpu.py) validates dtype, device,
// shape and contiguity and passes raw data pointers (as integers) and sizes; C++ trusts its caller
// and releases the GIL while it runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "common.h"

namespace py = pybind11;

namespace bs {
void add_layernorm_f32(const float* x, const float* residual, const float* weight, const float* bias,
                       float* out, int64_t rows, int64_t n, float eps, int threads);
}

// GEMM-family kernels (linear, quantize, int8_linear) bind themselves in gemm_bindings.cpp.
void bind_gemm(py::module_& m);

template <class T>
static T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

PYBIND11_MODULE(_C, m) {
  m.doc() = "bertsilicon C++ CPU kernels (no torch headers; raw pointers validated in Python)";

  m.def("cpu_features", [] {
    const bs::CpuFeatures& f = bs::cpu_features();
    py::dict d;
    d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq; d["avx512_vnni"] = f.avx512_vnni; d["avx512_bf16"] = f.avx512_bf16;
    d["avx_vnni"] = f.avx_vnni; d["amx_tile"] = f.amx_tile; d["amx_int8"] = f.amx_int8;
    d["amx_bf16"] = f.amx_bf16;
    d["best_isa"] = bs::isa_name(bs::best_isa());
    d["active_isa"] = bs::isa_name(bs::active_isa());
    return d;
  }, "What this CPU supports, the widest kernel path it allows, and the path in use.");

  m.def("best_isa", [] { return std::string(bs::isa_name(bs::best_isa())); });
  m.def("active_isa", [] { return std::string(bs::isa_name(bs::active_isa())); });
  m.def("set_isa", [](const std::string& name) {
    bs::Isa isa;
    if (name == "avx512") isa = bs::Isa::Avx512;
    else if (name == "avx2") isa = bs::Isa::Avx2;
    else if (name == "scalar") isa = bs::Isa::Scalar;
    else throw std::invalid_argument("isa must be 'avx512', 'avx2' or 'scalar', got '" + name + "'");
    if (int(isa) > int(bs::best_isa()))
      throw std::invalid_argument("this CPU cannot run the '" + name + "' path (best: '" +
                                  bs::isa_name(bs::best_isa()) + "')");
    bs::set_isa(isa);
  }, py::arg("isa"), "Force a kernel path no wider than the CPU supports (tests run every path).");

  m.def("add_layernorm_f32",
        [](uintptr_t x, uintptr_t res, uintptr_t w, uintptr_t b, uintptr_t out, int64_t rows, int64_t n,
           float eps, int threads) {
          bs::add_layernorm_f32(ptr<const float>(x), ptr<const float>(res), ptr<const float>(w),
                                ptr<const float>(b), ptr<float>(out), rows, n, eps, threads);
        },
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("out"),
        py::arg("rows"), py::arg("n"), py::arg("eps"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());

  bind_gemm(m);
}
