// Bindings of the one-call encoder layer (encoder_layer.cpp). Called from bindings.cpp.
// Python (bertsilicon/models/_cpu_layer.py) builds one EncoderLayerPlan per layer state (never changed
// after it is handed to a call), validates the activations and passes raw pointers as integers; the
// plan is copied before the GIL is released. Enums travel as ints: DType 0 f32 / 1 bf16; Activation
// 0 none / 1 gelu / 2 gelu_tanh / 3 relu; PackKind and ElemType as in gemm_common.h.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "encoder_layer.h"

namespace py = pybind11;

namespace {
template <class T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

bs::LayerGemm& gemm_at(bs::EncoderLayerPlan& p, int index) {
  bs::LayerGemm* gemms[] = {&p.qkv, &p.o, &p.up, &p.down};
  if (index < 0 || index > 3) throw std::invalid_argument("GEMM index must be 0 qkv, 1 o, 2 up, 3 down");
  return *gemms[index];
}
}  // namespace

void bind_encoder_layer(py::module_& m) {
  using Plan = bs::EncoderLayerPlan;
  py::class_<Plan>(m, "EncoderLayerPlan",
                   "One encoder layer's GEMM packs, biases, LayerNorm parameters and shapes, for encoder_layer_*.")
      .def(py::init([](int dtype, int64_t hidden, int64_t heads, int64_t ffn, int act, float scale) {
             if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype must be 0 (fp32) or 1 (bf16)");
             if (act < 0 || act > int(bs::Activation::Relu)) throw std::invalid_argument("unknown activation code");
             if (hidden <= 0 || heads <= 0 || ffn <= 0 || hidden % heads)
               throw std::invalid_argument("hidden must be a positive multiple of heads; ffn positive");
             Plan p;
             p.dtype = bs::DType(dtype), p.hidden = hidden, p.heads = heads, p.head_dim = hidden / heads;
             p.ffn = ffn, p.act = bs::Activation(act), p.scale = scale;
             return p;
           }),
           py::arg("dtype"), py::arg("hidden"), py::arg("heads"), py::arg("ffn"), py::arg("act"), py::arg("scale"))
      .def_readwrite("attention_bf16", &Plan::attention_bf16,
                     "q, k, v and ctx in bf16 between the int8 qkv and o GEMMs (fp32 activations; encoder_layer.h)")
      .def("set_gemm",
           [](Plan& p, int index, int kind, uintptr_t w, int w_elem, int64_t N, int64_t K, uintptr_t bias,
              uintptr_t w_scale, uintptr_t inv_smooth) {
             bs::LayerGemm& g = gemm_at(p, index);
             if (kind < 0 || kind > int(bs::PackKind::LastKind)) throw std::invalid_argument("unknown packed layout");
             if (w_elem < 0 || w_elem > int(bs::ElemType::I8)) throw std::invalid_argument("unknown weight type");
             g.int8 = w_elem == int(bs::ElemType::I8), g.kind = bs::PackKind(kind), g.w = ptr<const void>(w);
             g.w_type = bs::ElemType(w_elem), g.N = N, g.K = K, g.bias = ptr<const float>(bias);
             g.w_scale = ptr<const float>(w_scale), g.inv_smooth = ptr<const float>(inv_smooth);
           },
           py::arg("index"), py::arg("kind"), py::arg("w"), py::arg("w_elem"), py::arg("N"), py::arg("K"),
           py::arg("bias"), py::arg("w_scale"), py::arg("inv_smooth"))
      .def("set_input_rounding",
           [](Plan& p, int index, int mbits, int emin, double max_finite, bool ieee, bool saturate) {
             bs::LayerGemm& g = gemm_at(p, index);
             if (mbits < 1 || mbits > 23) throw std::invalid_argument("mbits must be in [1, 23]");
             g.round_input = true;
             g.rounding = bs::RoundArgs{bs::DType::F32, nullptr, nullptr, 0, mbits, emin, max_finite, ieee,
                                        /*stochastic=*/false, saturate, /*seed=*/0, /*threads=*/1};
           },
           py::arg("index"), py::arg("mbits"), py::arg("emin"), py::arg("max_finite"), py::arg("ieee"),
           py::arg("saturate"),
           "Round GEMM index's fp32 input to a float format (nearest even, the round_to kernel) before it; the "
           "format's parameters as _C.round_to takes them (fp16 GEMMs on the fp32 kernel).")
      .def("set_layernorm",
           [](Plan& p, int index, uintptr_t weight, uintptr_t bias, float eps) {
             if (index != 0 && index != 1) throw std::invalid_argument("LayerNorm index must be 0 (ln1) or 1 (ln2)");
             bs::LayerNormParams& ln = index == 0 ? p.ln1 : p.ln2;
             ln.weight = ptr<const float>(weight), ln.bias = ptr<const float>(bias), ln.eps = eps;
           },
           py::arg("index"), py::arg("weight"), py::arg("bias"), py::arg("eps"))
      .def("check", [](const Plan& p) { bs::check_encoder_layer_plan(p); },
           "Raise ValueError if the plan is inconsistent (what every call checks first).");

  m.def("encoder_layer_packed",
        [](const Plan& plan, uintptr_t x, int64_t T, uintptr_t cu_seqlens, int64_t B, int64_t max_seqlen, uintptr_t out,
           int threads) {
          const Plan p = plan;  // copied under the GIL
          py::gil_scoped_release release;
          bs::encoder_layer_packed(p, ptr<const void>(x), T, ptr<const int32_t>(cu_seqlens), B, max_seqlen,
                                   ptr<void>(out), threads);
        },
        py::arg("plan"), py::arg("x"), py::arg("T"), py::arg("cu_seqlens"), py::arg("B"), py::arg("max_seqlen"),
        py::arg("out"), py::arg("threads"),
        "One encoder layer on packed tokens x [T, H] -> out [T, H] (see csrc/encoder_layer.h).");
  m.def("hold_layer_scratch", &bs::hold_layer_scratch, py::arg("hold"),
        "hold=True: this thread keeps its encoder-layer scratch block between calls whatever its size (nestable); "
        "hold=False ends one hold, and the last frees a block over 64 MB (see csrc/encoder_layer.h).");
  m.def("layer_scratch_bytes", &bs::layer_scratch_bytes,
        "Bytes of this thread's encoder-layer scratch block (0: none); for tests and diagnostics.");
  m.def("encoder_layer_padded",
        [](const Plan& plan, uintptr_t x, int64_t B, int64_t L, uintptr_t keep, uintptr_t out, int threads) {
          const Plan p = plan;
          py::gil_scoped_release release;
          bs::encoder_layer_padded(p, ptr<const void>(x), B, L, ptr<const uint8_t>(keep), ptr<void>(out), threads);
        },
        py::arg("plan"), py::arg("x"), py::arg("B"), py::arg("L"), py::arg("keep"), py::arg("out"), py::arg("threads"),
        "One encoder layer on padded rows x [B, L, H] with key mask keep uint8 [B, L] (or 0) -> out [B, L, H].");
}
