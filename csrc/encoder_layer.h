// One whole post-LayerNorm encoder layer (BERT, DistilBERT, TinyBERT, MiniLM, ...) in one call, composed
// from the existing kernels (linear / int8_linear_dynamic in gemm.cpp, attention, add_layernorm); bound
// in layer_bindings.cpp. Python (bertsilicon/models/_cpu_layer.py) builds the plan once per layer and
// validates every tensor; these functions trust the plan and the pointers.
//
// Tokens x [M, H] (M = T packed tokens, or B * L padded rows), activations of the plan's dtype:
//   qkv = x W_qkv^T + b_qkv                     [M, 3H]   (GEMM 0; q, k, v = column blocks of H)
//   ctx = attention(q, k, v)                     [M, H]    (q/k/v read in place through strides)
//   h   = LayerNorm(ctx W_o^T + b_o + x)         [M, H]    (GEMM 1, then add_layernorm with ln1)
//   u   = act(h W_up^T + b_up)                   [M, F]    (GEMM 2, activation fused in its epilogue)
//   out = LayerNorm(u W_down^T + b_down + h)     [M, H]    (GEMM 3, then add_layernorm with ln2)
// Each GEMM has its own kind: fp32 or bf16 weights through linear() (fp32 activations on a bf16 weight are
// rounded to bf16 first where the kernel has no vdpbf16ps, as linear_packed does), or int8 weights through
// int8_linear_dynamic() (per-token quantization of its input, optional SmoothQuant inv_smooth). An fp16 GEMM
// on a CPU without fp16 arithmetic is an fp32 GEMM whose weight holds fp16 values and whose fp32 input is
// first rounded to fp16 values by round_to() (rounding.cpp, nearest even; LayerGemm::round_input), as the
// per-op path's ops.round_to(x, "fp16") then linear_packed does: exact products, fp32 sums and output.
// attention_bf16 (fp32 activations, int8 qkv and o GEMMs only): the qkv GEMM rounds its output to bf16 in its
// epilogue, attention runs on those bf16 q, k, v (vdpbf16ps where the CPU has AVX512_BF16), and the o GEMM
// quantizes the bf16 ctx: as the per-op path's qkv(x).to(bf16), bf16 attention, o(ctx.float()) (exact).
// Every intermediate lives in one scratch block of the calling thread, M (5H + F) elements (+ M floats of
// int8 scales, + M max(H, F) bf16 or fp32 where a GEMM rounds its input); only `out` is the caller's.
// Results are bit-identical to calling the same kernels one by one on contiguous copies of q, k, v.
#pragma once

#include <cstdint>

#include "gemm.h"
#include "kernels.h"

namespace bs {

// One GEMM of the layer: out[M, N] = act(x[M, K] @ W^T + bias) in the plan's activation dtype.
struct LayerGemm {
  bool int8 = false;                  // int8_linear_dynamic (int8 weight), else linear (fp32 / bf16 weight)
  PackKind kind = PackKind::Raw;      // layout of w (what gemm_pack_kind gave for the active path)
  const void* w = nullptr;            // packed weight, or the row-major [N, K] weight for PackKind::Raw
  ElemType w_type = ElemType::F32;    // F32 | BF16 | I8
  int64_t N = 0, K = 0;
  const float* bias = nullptr;        // fp32 [N] or null
  const float* w_scale = nullptr;     // int8: fp32 [N] per output channel
  const float* inv_smooth = nullptr;  // int8: fp32 [K] (x * inv_smooth is quantized) or null
  // round_input: the fp32 input is rounded to the format of `rounding` (its mbits, emin, max_finite, ieee,
  // saturate, stochastic = false; set from bertsilicon.formats by Python) into scratch before the GEMM,
  // fp32 activations and an fp32 weight only (fp16 GEMMs on fp32 kernels). x / out / n / threads are per call.
  bool round_input = false;
  RoundArgs rounding{};
};

struct LayerNormParams {
  const float* weight = nullptr;  // fp32 [H]
  const float* bias = nullptr;    // fp32 [H]
  float eps = 1e-12f;
};

struct EncoderLayerPlan {
  DType dtype = DType::F32;  // activations: F32 | BF16
  int64_t hidden = 0, heads = 0, head_dim = 0, ffn = 0;
  Activation act = Activation::Gelu;  // the up GEMM's epilogue
  float scale = 1.f;                  // softmax scale (head_dim^-0.5)
  LayerGemm qkv, o, up, down;
  LayerNormParams ln1, ln2;
  bool attention_bf16 = false;  // q, k, v and ctx in bf16 between the int8 qkv and o GEMMs (see above)
};

// Throws std::invalid_argument when the plan is inconsistent (shapes that do not chain, null pointers,
// a packed layout this CPU cannot run); the entry points below call it first.
void check_encoder_layer_plan(const EncoderLayerPlan& p);

// Packed (padding-free) tokens: x, out [T, H]; sequence b is rows cu_seqlens[b] .. cu_seqlens[b + 1]
// (int32 [B + 1], 0 .. T, non-decreasing, no sequence longer than max_seqlen).
void encoder_layer_packed(const EncoderLayerPlan& p, const void* x, int64_t T, const int32_t* cu_seqlens, int64_t B,
                          int64_t max_seqlen, void* out, int threads);

// Padded rows: x, out [B, L, H]; keep uint8 [B, L] (1 = real key) or null (every key real). Padded query
// positions are computed like real ones (they attend to the real keys), as Hugging Face does.
void encoder_layer_padded(const EncoderLayerPlan& p, const void* x, int64_t B, int64_t L, const uint8_t* keep,
                          void* out, int threads);

// One MobileBERT layer (Hugging Face MobileBertLayer with normalization_type "no_norm"; the data flow and
// the names as bertsilicon/models/fused_mobilebert.py) in one call, on x [M, H] (packed or padded rows):
//   xp  = x W_x^T + b_x                           [M, Nx]  (GEMM x_proj: the projections that read x)
//   r   = NoNorm_in(xp[:, input])                 [M, h]   (the attention residual; x when there is none)
//   s   = NoNorm_shared(xp[:, shared])            [M, h]   (if present)
//   ap  = (r or s) W_a^T + b_a                    [M, Na]  (GEMM attn_proj, if present)
//   q, k, v: h-column blocks of xp or ap (read in place through strides)
//   a   = NoNorm_o(attention(q, k, v) W_o^T + b_o + r)
//   a   = NoNorm_j(act(a W_j1^T + b_j1) W_j2^T + b_j2 + a)     j = 1 .. stacked FFNs
//   a   = NoNorm_out(act(a W_up^T + b_up) W_down^T + b_down + a)
//   out = NoNorm_ob(a W_ob^T + b_ob + x)          [M, H]   (without an output bottleneck: out = a, h = H)
// NoNorm(z + r) = (z + r) * gamma + beta, each step rounded to the activations' dtype (gamma, beta given as
// fp32 holding that dtype's values), as torch's in-place add_, mul_, add_ on that dtype: bit-identical to
// the per-op path. GEMMs as in EncoderLayerPlan (LayerGemm).
struct NoNormParams {
  const float* gamma = nullptr;  // fp32 [n]
  const float* beta = nullptr;   // fp32 [n]
};

constexpr int kMaxStackedFfns = 16;

struct MobileBertLayerPlan {
  DType dtype = DType::F32;
  int64_t hidden = 0, width = 0, heads = 0, head_dim = 0, ffn = 0;  // H, h = heads * head_dim, F
  Activation act = Activation::Relu;
  float scale = 1.f;
  LayerGemm x_proj, attn_proj, o, up, down, out_bottleneck;
  bool has_attn_proj = false, has_out_bottleneck = false;
  int attn_source = 0;  // attn_proj reads 0: r (the input bottleneck), 1: s (the shared bottleneck)
  // column offsets of each role in x_proj's / attn_proj's output (-1: not there)
  int64_t xp_input = -1, xp_shared = -1, xp_q = -1, xp_k = -1, xp_v = -1, ap_q = -1, ap_k = -1, ap_v = -1;
  NoNormParams norm_input, norm_shared, norm_o, norm_out, norm_ob;
  int stacked = 0;  // FFNs before the last one
  LayerGemm ffn_up[kMaxStackedFfns], ffn_down[kMaxStackedFfns];
  NoNormParams ffn_norm[kMaxStackedFfns];
};

void check_mobilebert_layer_plan(const MobileBertLayerPlan& p);
void mobilebert_layer_packed(const MobileBertLayerPlan& p, const void* x, int64_t T, const int32_t* cu_seqlens,
                             int64_t B, int64_t max_seqlen, void* out, int threads);
void mobilebert_layer_padded(const MobileBertLayerPlan& p, const void* x, int64_t B, int64_t L, const uint8_t* keep,
                             void* out, int threads);

// While held (hold_layer_scratch(true) ... hold_layer_scratch(false), nestable), the calling thread keeps
// its layer scratch block whatever its size, so the layers of one forward share it; the last release frees
// a block over the keep size (64 MB). FusedEncoder holds it around its layer loop.
void hold_layer_scratch(bool hold);
size_t layer_scratch_bytes();  // the calling thread's block (0: none); for tests and diagnostics

}  // namespace bs
