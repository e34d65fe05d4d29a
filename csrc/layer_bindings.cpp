// Bindings of the one-call encoder layers (encoder_layer.cpp): EncoderLayerPlan (the BERT block) and
// MobileBertLayerPlan. Called from bindings.cpp.
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

// MobileBERT GEMM indices: 0 x_proj, 1 attn_proj, 2 o, 3 up, 4 down, 5 out_bottleneck, 6 + 2j / 7 + 2j the
// j-th stacked FFN's up / down.
bs::LayerGemm& mobilebert_gemm_at(bs::MobileBertLayerPlan& p, int index) {
  bs::LayerGemm* fixed[] = {&p.x_proj, &p.attn_proj, &p.o, &p.up, &p.down, &p.out_bottleneck};
  if (index >= 0 && index < 6) return *fixed[index];
  const int j = (index - 6) / 2;
  if (index < 0 || j >= bs::kMaxStackedFfns) throw std::invalid_argument("MobileBERT GEMM index out of range");
  if (j >= p.stacked) p.stacked = j + 1;
  return index % 2 == 0 ? p.ffn_up[j] : p.ffn_down[j];
}

// NoNorm indices: 0 input, 1 shared, 2 o, 3 out (after down), 4 ob (after out_bottleneck), 5 + j stacked FFN j.
bs::NoNormParams& mobilebert_norm_at(bs::MobileBertLayerPlan& p, int index) {
  bs::NoNormParams* fixed[] = {&p.norm_input, &p.norm_shared, &p.norm_o, &p.norm_out, &p.norm_ob};
  if (index >= 0 && index < 5) return *fixed[index];
  if (index < 0 || index - 5 >= bs::kMaxStackedFfns) throw std::invalid_argument("MobileBERT NoNorm index out of range");
  return p.ffn_norm[index - 5];
}

void set_layer_gemm(bs::LayerGemm& g, int kind, uintptr_t w, int w_elem, int64_t N, int64_t K, uintptr_t bias,
                    uintptr_t w_scale, uintptr_t inv_smooth) {
  if (kind < 0 || kind > int(bs::PackKind::LastKind)) throw std::invalid_argument("unknown packed layout");
  if (w_elem < 0 || w_elem > int(bs::ElemType::I8)) throw std::invalid_argument("unknown weight type");
  g.int8 = w_elem == int(bs::ElemType::I8), g.kind = bs::PackKind(kind), g.w = ptr<const void>(w);
  g.w_type = bs::ElemType(w_elem), g.N = N, g.K = K, g.bias = ptr<const float>(bias);
  g.w_scale = ptr<const float>(w_scale), g.inv_smooth = ptr<const float>(inv_smooth);
}

void set_input_rounding(bs::LayerGemm& g, int mbits, int emin, double max_finite, bool ieee, bool saturate) {
  if (mbits < 1 || mbits > 23) throw std::invalid_argument("mbits must be in [1, 23]");
  g.round_input = true;
  g.rounding = bs::RoundArgs{bs::DType::F32, nullptr, nullptr, 0, mbits, emin, max_finite, ieee,
                             /*stochastic=*/false, saturate, /*seed=*/0, /*threads=*/1};
}

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
             set_layer_gemm(gemm_at(p, index), kind, w, w_elem, N, K, bias, w_scale, inv_smooth);
           },
           py::arg("index"), py::arg("kind"), py::arg("w"), py::arg("w_elem"), py::arg("N"), py::arg("K"),
           py::arg("bias"), py::arg("w_scale"), py::arg("inv_smooth"))
      .def("set_input_rounding",
           [](Plan& p, int index, int mbits, int emin, double max_finite, bool ieee, bool saturate) {
             set_input_rounding(gemm_at(p, index), mbits, emin, max_finite, ieee, saturate);
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

  m.attr("MOBILEBERT_MAX_STACKED_FFNS") = bs::kMaxStackedFfns;  // more: the layer runs per op
  using MPlan = bs::MobileBertLayerPlan;
  py::class_<MPlan>(m, "MobileBertLayerPlan",
                    "One MobileBERT layer's GEMM packs, NoNorm parameters, roles and shapes, for encoder_layer_*.")
      .def(py::init([](int dtype, int64_t hidden, int64_t heads, int64_t head_dim, int64_t ffn, int act, float scale) {
             if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype must be 0 (fp32) or 1 (bf16)");
             if (act < 0 || act > int(bs::Activation::Relu)) throw std::invalid_argument("unknown activation code");
             if (hidden <= 0 || heads <= 0 || head_dim <= 0 || ffn <= 0)
               throw std::invalid_argument("hidden, heads, head_dim and ffn must be positive");
             MPlan p;
             p.dtype = bs::DType(dtype), p.hidden = hidden, p.heads = heads, p.head_dim = head_dim;
             p.width = heads * head_dim, p.ffn = ffn, p.act = bs::Activation(act), p.scale = scale;
             return p;
           }),
           py::arg("dtype"), py::arg("hidden"), py::arg("heads"), py::arg("head_dim"), py::arg("ffn"), py::arg("act"),
           py::arg("scale"))
      .def("set_gemm",
           [](MPlan& p, int index, int kind, uintptr_t w, int w_elem, int64_t N, int64_t K, uintptr_t bias,
              uintptr_t w_scale, uintptr_t inv_smooth) {
             set_layer_gemm(mobilebert_gemm_at(p, index), kind, w, w_elem, N, K, bias, w_scale, inv_smooth);
             if (index == 1) p.has_attn_proj = true;
             if (index == 5) p.has_out_bottleneck = true;
           },
           py::arg("index"), py::arg("kind"), py::arg("w"), py::arg("w_elem"), py::arg("N"), py::arg("K"),
           py::arg("bias"), py::arg("w_scale"), py::arg("inv_smooth"),
           "GEMM index: 0 x_proj, 1 attn_proj, 2 o, 3 up, 4 down, 5 out_bottleneck, 6 + 2j / 7 + 2j stacked FFN j's "
           "up / down.")
      .def("set_input_rounding",
           [](MPlan& p, int index, int mbits, int emin, double max_finite, bool ieee, bool saturate) {
             set_input_rounding(mobilebert_gemm_at(p, index), mbits, emin, max_finite, ieee, saturate);
           },
           py::arg("index"), py::arg("mbits"), py::arg("emin"), py::arg("max_finite"), py::arg("ieee"),
           py::arg("saturate"))
      .def("set_nonorm",
           [](MPlan& p, int index, uintptr_t gamma, uintptr_t beta) {
             bs::NoNormParams& nn = mobilebert_norm_at(p, index);
             nn.gamma = ptr<const float>(gamma), nn.beta = ptr<const float>(beta);
           },
           py::arg("index"), py::arg("gamma"), py::arg("beta"),
           "NoNorm index: 0 input, 1 shared, 2 o, 3 out, 4 ob, 5 + j stacked FFN j; fp32 [n] holding the "
           "activations' dtype's values.")
      .def("set_roles",
           [](MPlan& p, int64_t xp_input, int64_t xp_shared, int64_t xp_q, int64_t xp_k, int64_t xp_v, int attn_source,
              int64_t ap_q, int64_t ap_k, int64_t ap_v) {
             if (attn_source != 0 && attn_source != 1) throw std::invalid_argument("attn_source must be 0 or 1");
             p.xp_input = xp_input, p.xp_shared = xp_shared, p.xp_q = xp_q, p.xp_k = xp_k, p.xp_v = xp_v;
             p.attn_source = attn_source, p.ap_q = ap_q, p.ap_k = ap_k, p.ap_v = ap_v;
           },
           py::arg("xp_input"), py::arg("xp_shared"), py::arg("xp_q"), py::arg("xp_k"), py::arg("xp_v"),
           py::arg("attn_source"), py::arg("ap_q"), py::arg("ap_k"), py::arg("ap_v"),
           "Column offset of each role in x_proj's / attn_proj's output (-1: not there); attn_proj reads 0: the "
           "input bottleneck, 1: the shared one.")
      .def("check", [](const MPlan& p) { bs::check_mobilebert_layer_plan(p); },
           "Raise ValueError if the plan is inconsistent (what every call checks first).");
  // The same entry points take a MobileBertLayerPlan (pybind11 overloads on the plan's type).
  m.def("encoder_layer_packed",
        [](const MPlan& plan, uintptr_t x, int64_t T, uintptr_t cu_seqlens, int64_t B, int64_t max_seqlen, uintptr_t out,
           int threads) {
          const MPlan p = plan;
          py::gil_scoped_release release;
          bs::mobilebert_layer_packed(p, ptr<const void>(x), T, ptr<const int32_t>(cu_seqlens), B, max_seqlen,
                                      ptr<void>(out), threads);
        },
        py::arg("plan"), py::arg("x"), py::arg("T"), py::arg("cu_seqlens"), py::arg("B"), py::arg("max_seqlen"),
        py::arg("out"), py::arg("threads"));
  m.def("encoder_layer_padded",
        [](const MPlan& plan, uintptr_t x, int64_t B, int64_t L, uintptr_t keep, uintptr_t out, int threads) {
          const MPlan p = plan;
          py::gil_scoped_release release;
          bs::mobilebert_layer_padded(p, ptr<const void>(x), B, L, ptr<const uint8_t>(keep), ptr<void>(out), threads);
        },
        py::arg("plan"), py::arg("x"), py::arg("B"), py::arg("L"), py::arg("keep"), py::arg("out"), py::arg("threads"));

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
