// pybind11 bindings of bertsilicon._C. Python (bertsilicon/ops/_cpu.py) validates dtype, device,
// shape and contiguity and passes raw data pointers (as integers) and sizes; C++ trusts its caller
// and releases the GIL while it runs. Enums travel as ints; their codes are exported below as
// _C.DType, _C.Activation, _C.OutType, _C.ElemType and _C.PackKind (int(_C.DType.F32) == 0).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "common.h"
#include "gemm_common.h"
#include "kernels.h"

namespace py = pybind11;

// GEMM-family kernels (linear, quantize, int8_linear) bind themselves in gemm_bindings.cpp.
void bind_gemm(py::module_& m);
// The one-call encoder layer binds itself in layer_bindings.cpp.
void bind_encoder_layer(py::module_& m);

template <class T>
static T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

PYBIND11_MODULE(_C, m) {
  m.doc() = "bertsilicon C++ CPU kernels (no torch headers; raw pointers validated in Python)";

  // The enum codes the kernels take as ints, so Python reads them here instead of copying them.
  // Activation::None is exported as None_ (None is a Python keyword: _C.Activation.None would not parse);
  // PackKind::LastKind (an alias of the last layout, for range checks in C++) is not exported.
  py::enum_<bs::DType>(m, "DType").value("F32", bs::DType::F32).value("BF16", bs::DType::BF16)
      .value("F16", bs::DType::F16);
  py::enum_<bs::Activation>(m, "Activation").value("None_", bs::Activation::None)
      .value("Gelu", bs::Activation::Gelu).value("GeluTanh", bs::Activation::GeluTanh)
      .value("Relu", bs::Activation::Relu);
  py::enum_<bs::OutType>(m, "OutType").value("F32", bs::OutType::F32).value("BF16", bs::OutType::BF16)
      .value("F16", bs::OutType::F16).value("S32", bs::OutType::S32);
  py::enum_<bs::ElemType>(m, "ElemType").value("F32", bs::ElemType::F32).value("BF16", bs::ElemType::BF16)
      .value("I8", bs::ElemType::I8);
  py::enum_<bs::PackKind>(m, "PackKind").value("Raw", bs::PackKind::Raw).value("F32x64", bs::PackKind::F32x64)
      .value("Bf16x64", bs::PackKind::Bf16x64).value("F32x16", bs::PackKind::F32x16)
      .value("U8S8x64", bs::PackKind::U8S8x64).value("S16x16", bs::PackKind::S16x16)
      .value("S16x64", bs::PackKind::S16x64).value("U8S7x16", bs::PackKind::U8S7x16);

  m.def("cpu_features", [] {
    const bs::CpuFeatures &f = bs::cpu_features(), &cpu = bs::detected_cpu_features();
    py::dict d;
    py::list hidden;
    for (int i = 0; i < bs::kNumCpuFeatureNames; ++i) {
      const bs::CpuFeatureName& n = bs::kCpuFeatureNames[i];
      d[n.name] = f.*(n.flag);
      if (cpu.*(n.flag) && !(f.*(n.flag))) hidden.append(n.name);
    }
    d["hidden"] = hidden;
    d["best_isa"] = bs::isa_name(bs::best_isa());
    d["active_isa"] = bs::isa_name(bs::active_isa());
    return d;
  }, "What the kernels may use (this CPU's features less the hidden ones), the hidden ones, the widest "
     "kernel path that allows, and the path in use.");

  m.def("hide_cpu_features", [](const std::vector<std::string>& names) {
    const std::string unknown = bs::hide_cpu_features(names);
    if (!unknown.empty()) {
      std::string known;
      for (int i = 0; i < bs::kNumCpuFeatureNames; ++i)
        known += std::string(i ? ", " : "") + bs::kCpuFeatureNames[i].name;
      throw std::invalid_argument("unknown CPU feature '" + unknown + "'; expected some of: " + known);
    }
  }, py::arg("names"), "Hide CPU features from the kernels (replaces the hidden set; [] shows all again).");

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

  // dtype codes: 0 float32, 1 bfloat16, 2 float16 (bs::DType)
  m.def("add_layernorm",
        [](int dtype, uintptr_t x, uintptr_t res, uintptr_t w, uintptr_t b, uintptr_t out, int64_t rows, int64_t n,
           float eps, int threads) {
          bs::add_layernorm(bs::DType(dtype), ptr<const void>(x), ptr<const void>(res), ptr<const float>(w),
                            ptr<const float>(b), ptr<void>(out), rows, n, eps, threads);
        },
        py::arg("dtype"), py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("out"),
        py::arg("rows"), py::arg("n"), py::arg("eps"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def("bias_gelu",
        [](int dtype, bool tanh_form, uintptr_t x, uintptr_t bias, uintptr_t out, int64_t rows, int64_t n, int threads) {
          bs::bias_gelu(bs::DType(dtype), tanh_form, ptr<const void>(x), ptr<const float>(bias), ptr<void>(out), rows, n,
                        threads);
        },
        py::arg("dtype"), py::arg("tanh_form"), py::arg("x"), py::arg("bias"), py::arg("out"), py::arg("rows"),
        py::arg("n"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def("eval_math",
        [](int which, uintptr_t x, uintptr_t out, int64_t n) { bs::eval_math(which, ptr<const float>(x), ptr<float>(out), n); },
        py::arg("which"), py::arg("x"), py::arg("out"), py::arg("n"), py::call_guard<py::gil_scoped_release>(),
        "The kernels' vector math on fp32 arrays (0 erf, 1 exp, 2 exp2, 3 gelu, 4 gelu tanh), for accuracy tests.");

  // strides: (q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, o_sb, o_sh, o_sl), in elements
  m.def("attention",
        [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
           int64_t D, const std::vector<int64_t>& strides, uintptr_t keep, uintptr_t cu_seqlens, float scale, int threads) {
          if (strides.size() != 12) throw std::invalid_argument("attention: expected 12 strides");
          bs::AttnArgs a{bs::DType(dtype), ptr<const void>(q), ptr<const void>(k), ptr<const void>(v), ptr<void>(out),
                         B, H, Lq, Lk, D,
                         strides[0], strides[1], strides[2], strides[3], strides[4], strides[5],
                         strides[6], strides[7], strides[8], strides[9], strides[10], strides[11],
                         ptr<const uint8_t>(keep), ptr<const int32_t>(cu_seqlens), scale, threads};
          py::gil_scoped_release release;
          bs::attention(a);
        },
        py::arg("dtype"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("B"), py::arg("H"),
        py::arg("Lq"), py::arg("Lk"), py::arg("D"), py::arg("strides"), py::arg("keep"), py::arg("cu_seqlens"),
        py::arg("scale"), py::arg("threads"));

  m.def("round_to",
        [](int dtype, uintptr_t x, uintptr_t out, int64_t n, int mbits, int emin, double max_finite, bool ieee,
           bool stochastic, uint64_t seed, bool saturate, int threads) {
          bs::RoundArgs a{bs::DType(dtype), ptr<const void>(x), ptr<void>(out), n, mbits, emin, max_finite,
                          ieee, stochastic, saturate, seed, threads};
          bs::round_to(a);
        },
        py::arg("dtype"), py::arg("x"), py::arg("out"), py::arg("n"), py::arg("mbits"), py::arg("emin"),
        py::arg("max_finite"), py::arg("ieee"), py::arg("stochastic"), py::arg("seed"), py::arg("saturate"),
        py::arg("threads"), py::call_guard<py::gil_scoped_release>());

  m.def("philox_bits",
        [](uint64_t seed, uint64_t start, uintptr_t out, int64_t n) { bs::philox_bits(seed, start, ptr<uint32_t>(out), n); },
        py::arg("seed"), py::arg("start"), py::arg("out"), py::arg("n"), py::call_guard<py::gil_scoped_release>(),
        "First word of Philox4x32-10 for counters start..start+n-1 (uint32 into out), for tests.");

  bind_gemm(m);
  bind_encoder_layer(m);
}
