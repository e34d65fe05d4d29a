// The whole encoder layer in one call (see encoder_layer.h): four GEMMs, attention on the qkv buffer in
// place, two residual + LayerNorms. Nothing here is a kernel of its own; it only sequences the existing
// ones over a per-thread scratch block, so the Python layer makes one call instead of ~10.
#include "encoder_layer.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace bs {
namespace {

constexpr size_t kAlign = 64;
// A thread keeps its scratch block between calls (every layer of a forward reuses it) up to this size;
// a larger one (big batches of long sequences) is freed after the call, as torch would free it, unless the
// caller holds it for the rest of the forward (hold_layer_scratch): a fresh block of that size comes from
// mmap and is page-faulted in again by every layer (~0.3 ms per MB here, ~35 ms for the ~110 MB of a
// DistilBERT layer in fp32 on 8 x 512 tokens).
constexpr size_t kKeepBytes = size_t(64) << 20;

size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

class Scratch {
 public:
  unsigned char* get(size_t bytes) {
    if (bytes > bytes_) {
      mem_.reset();  // free first: never hold the old and the new block at once
      mem_.reset(new unsigned char[bytes + kAlign]);
      bytes_ = bytes;
    }
    return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(mem_.get()) + kAlign - 1) & ~uintptr_t(kAlign - 1));
  }
  size_t bytes() const { return bytes_; }
  void trim() {
    if (bytes_ > kKeepBytes) mem_.reset(), bytes_ = 0;
  }

 private:
  std::unique_ptr<unsigned char[]> mem_;
  size_t bytes_ = 0;
};

thread_local Scratch tls_scratch;
thread_local int tls_holds = 0;  // hold_layer_scratch(true) calls not yet ended on this thread

struct TrimOnExit {
  ~TrimOnExit() {
    if (tls_holds == 0) tls_scratch.trim();
  }
};

// Carves 64-byte aligned pieces off one block.
struct Carve {
  unsigned char* base;
  size_t off = 0;
  template <class T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(base + off);
    off += round_up(count * sizeof(T));
    return p;
  }
};

// fp32 activations meet a bf16 weight on a kernel without vdpbf16ps: the kernel takes bf16 activations
// (then widens them exactly), so x is rounded to bf16 first (nearest even), as linear_packed does.
bool rounds_input(const LayerGemm& g, DType dt) {
  return !g.int8 && g.w_type == ElemType::BF16 && dt == DType::F32 && g.kind != PackKind::Bf16x64;
}

// Bytes per input element of the GEMM's rounded copy of its input (0: it reads its input as it is).
size_t rounded_input_bytes(const LayerGemm& g, DType dt) {
  return g.round_input ? sizeof(float) : rounds_input(g, dt) ? sizeof(uint16_t) : 0;
}

// out [M, g.N] = act(x [M, g.K] @ W^T + bias), input of dtype dt, output of dtype out_dt (dt, or another
// for an int8 GEMM: the epilogue rounds to it). x_scale: M floats (int8 GEMMs write the per-token scales
// there); round_buf: M * g.K elements of rounded_input_bytes(g, dt) when that is nonzero.
void run_gemm(const LayerGemm& g, DType dt, DType out_dt, const void* x, int64_t M, void* out, Activation act,
              float* x_scale, void* round_buf, int threads) {
  const ElemType xt = dt == DType::BF16 ? ElemType::BF16 : ElemType::F32;
  const Epilogue ep{g.bias, act, out_dt == DType::BF16 ? OutType::BF16 : OutType::F32, out, g.N};
  if (g.int8) {
    int8_linear_dynamic(g.kind, x, xt, M, g.K, g.inv_smooth, g.w, g.N, g.w_scale, x_scale, ep, threads);
  } else if (g.round_input) {  // fp16 operands on the fp32 kernel: the round_to kernel, then an fp32 GEMM
    RoundArgs r = g.rounding;
    r.x = x, r.out = round_buf, r.n = M * g.K, r.threads = threads;
    round_to(r);
    linear(g.kind, round_buf, ElemType::F32, M, g.K, g.w, g.N, ep, threads);
  } else if (rounds_input(g, dt)) {
    const float* xf = static_cast<const float*>(x);
    uint16_t* xb = static_cast<uint16_t*>(round_buf);
    const int64_t K = g.K;
    parallel_for(M, threads, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(K, 1)), [&](int64_t m0, int64_t m1) {
      for (int64_t i = m0 * K; i < m1 * K; ++i) xb[i] = f32_to_bf16(xf[i]);
    });
    linear(g.kind, round_buf, ElemType::BF16, M, K, g.w, g.N, ep, threads);
  } else {
    linear(g.kind, x, xt, M, g.K, g.w, g.N, ep, threads);
  }
}

// The layer on M rows of x. `attn` comes with its shape (B, H, Lq, Lk, D), keep / cu_seqlens, scale and
// threads set; this fills in the buffers and strides: q, k, v are the three H-column blocks of the qkv
// rows (row stride 3H, head stride d), ctx rows have stride H. batch_rows: rows per sequence of the
// padded form (its batch stride), 0 for packed tokens.
void run_layer(const EncoderLayerPlan& p, const void* x, int64_t M, int64_t batch_rows, AttnArgs attn, void* out,
               int threads) {
  check_encoder_layer_plan(p);
  if (M <= 0) return;
  const int64_t H = p.hidden, F = p.ffn, d = p.head_dim;
  const size_t e = p.dtype == DType::BF16 ? 2 : 4;
  const DType att = p.attention_bf16 ? DType::BF16 : p.dtype;  // q, k, v and ctx
  const size_t ea = att == DType::BF16 ? 2 : 4;
  const size_t round_bytes = std::max({rounded_input_bytes(p.qkv, p.dtype), rounded_input_bytes(p.o, p.dtype),
                                        rounded_input_bytes(p.up, p.dtype), rounded_input_bytes(p.down, p.dtype)});
  const size_t um = size_t(M);
  // qkv rows, later the o and down outputs (M H e bytes: 3 H ea >= H e, as e <= 2 ea)
  const size_t need = round_up(um * 3 * H * ea) + round_up(um * H * ea) + round_up(um * H * e) + round_up(um * F * e) +
                      round_up(um * 4) + round_up(um * std::max(H, F) * round_bytes);
  TrimOnExit trim_on_exit;
  Carve c{tls_scratch.get(need)};
  unsigned char* qkv = c.take<unsigned char>(um * 3 * H * ea);  // later: the o and down GEMM outputs
  unsigned char* ctx = c.take<unsigned char>(um * H * ea);
  unsigned char* h = c.take<unsigned char>(um * H * e);
  unsigned char* u = c.take<unsigned char>(um * F * e);
  float* x_scale = c.take<float>(um);
  void* round_buf = round_bytes ? c.take<unsigned char>(um * std::max(H, F) * round_bytes) : nullptr;

  run_gemm(p.qkv, p.dtype, att, x, M, qkv, Activation::None, x_scale, round_buf, threads);

  attn.dtype = att;
  attn.q = qkv, attn.k = qkv + H * ea, attn.v = qkv + 2 * H * ea, attn.out = ctx;
  attn.q_sl = attn.k_sl = attn.v_sl = 3 * H;
  attn.q_sh = attn.k_sh = attn.v_sh = d;
  attn.q_sb = attn.k_sb = attn.v_sb = batch_rows * 3 * H;
  attn.o_sl = H, attn.o_sh = d, attn.o_sb = batch_rows * H;
  attn.threads = threads;
  attention(attn);

  void* proj = qkv;  // the qkv rows are dead after attention: the o and down GEMMs write there
  run_gemm(p.o, att, p.dtype, ctx, M, proj, Activation::None, x_scale, round_buf, threads);
  add_layernorm(p.dtype, proj, x, p.ln1.weight, p.ln1.bias, h, M, H, p.ln1.eps, threads);
  run_gemm(p.up, p.dtype, p.dtype, h, M, u, p.act, x_scale, round_buf, threads);
  run_gemm(p.down, p.dtype, p.dtype, u, M, proj, Activation::None, x_scale, round_buf, threads);
  add_layernorm(p.dtype, proj, h, p.ln2.weight, p.ln2.bias, out, M, H, p.ln2.eps, threads);
}

void nonorm(DType dt, const void* z, int64_t z_ld, const void* residual, const NoNormParams& nn, void* dst,
            int64_t M, int64_t n, int threads) {
  add_nonorm(dt, z, z_ld, residual, nn.gamma, nn.beta, dst, M, n, threads);
}

// The MobileBERT layer on M rows of x (encoder_layer.h); attn as for run_layer.
void run_mobilebert(const MobileBertLayerPlan& p, const void* x, int64_t M, int64_t batch_rows, AttnArgs attn,
                    void* out, int threads) {
  check_mobilebert_layer_plan(p);
  if (M <= 0) return;
  const int64_t H = p.hidden, h = p.width, F = p.ffn, Nx = p.x_proj.N, Na = p.has_attn_proj ? p.attn_proj.N : 0;
  const size_t e = p.dtype == DType::BF16 ? 2 : 4, um = size_t(M);
  const LayerGemm* gemms[4 + 2 * kMaxStackedFfns] = {&p.x_proj, &p.o, &p.up, &p.down};
  int n_gemms = 4;
  if (p.has_attn_proj) gemms[n_gemms++] = &p.attn_proj;
  if (p.has_out_bottleneck) gemms[n_gemms++] = &p.out_bottleneck;
  for (int j = 0; j < p.stacked; ++j) gemms[n_gemms++] = &p.ffn_up[j], gemms[n_gemms++] = &p.ffn_down[j];
  size_t round_bytes = 0;
  int64_t max_k = 0;
  for (int i = 0; i < n_gemms; ++i)
    round_bytes = std::max(round_bytes, rounded_input_bytes(*gemms[i], p.dtype)), max_k = std::max(max_k, gemms[i]->K);
  const size_t need = round_up(um * Nx * e) + 2 * round_up(um * h * e) + round_up(um * Na * e) + round_up(um * h * e) +
                      round_up(um * std::max(H, h) * e) + 2 * round_up(um * h * e) + round_up(um * F * e) +
                      round_up(um * 4) + round_up(um * max_k * round_bytes);
  TrimOnExit trim_on_exit;
  Carve c{tls_scratch.get(need)};
  unsigned char* xp = c.take<unsigned char>(um * Nx * e);
  unsigned char* r = c.take<unsigned char>(um * h * e);     // the input bottleneck, normalised
  unsigned char* s = c.take<unsigned char>(um * h * e);     // the shared bottleneck, normalised
  unsigned char* ap = c.take<unsigned char>(um * Na * e);
  unsigned char* ctx = c.take<unsigned char>(um * h * e);
  unsigned char* t = c.take<unsigned char>(um * std::max(H, h) * e);  // the residual GEMMs' outputs
  unsigned char* a[2] = {c.take<unsigned char>(um * h * e), c.take<unsigned char>(um * h * e)};
  unsigned char* u = c.take<unsigned char>(um * F * e);
  float* x_scale = c.take<float>(um);
  void* round_buf = round_bytes ? c.take<unsigned char>(um * max_k * round_bytes) : nullptr;
  const DType dt = p.dtype;

  run_gemm(p.x_proj, dt, dt, x, M, xp, Activation::None, x_scale, round_buf, threads);
  const void* residual = x;
  if (p.xp_input >= 0) nonorm(dt, xp + p.xp_input * e, Nx, nullptr, p.norm_input, r, M, h, threads), residual = r;
  if (p.xp_shared >= 0) nonorm(dt, xp + p.xp_shared * e, Nx, nullptr, p.norm_shared, s, M, h, threads);
  if (p.has_attn_proj)
    run_gemm(p.attn_proj, dt, dt, p.attn_source == 0 ? r : s, M, ap, Activation::None, x_scale, round_buf, threads);
  auto role = [&](int64_t xp_off, int64_t ap_off, const void** ptr, int64_t* ld) {
    if (xp_off >= 0) *ptr = xp + xp_off * e, *ld = Nx;
    else *ptr = ap + ap_off * e, *ld = Na;
  };
  int64_t q_ld, k_ld, v_ld;
  role(p.xp_q, p.ap_q, &attn.q, &q_ld), role(p.xp_k, p.ap_k, &attn.k, &k_ld), role(p.xp_v, p.ap_v, &attn.v, &v_ld);
  attn.dtype = dt, attn.out = ctx;
  attn.q_sl = q_ld, attn.k_sl = k_ld, attn.v_sl = v_ld;
  attn.q_sh = attn.k_sh = attn.v_sh = p.head_dim;
  attn.q_sb = batch_rows * q_ld, attn.k_sb = batch_rows * k_ld, attn.v_sb = batch_rows * v_ld;
  attn.o_sl = h, attn.o_sh = p.head_dim, attn.o_sb = batch_rows * h;
  attn.threads = threads;
  attention(attn);

  const bool last_is_out = !p.has_out_bottleneck;  // the down NoNorm then writes the caller's out
  run_gemm(p.o, dt, dt, ctx, M, t, Activation::None, x_scale, round_buf, threads);
  nonorm(dt, t, h, residual, p.norm_o, a[0], M, h, threads);
  int cur = 0;
  for (int j = 0; j < p.stacked; ++j, cur ^= 1) {
    run_gemm(p.ffn_up[j], dt, dt, a[cur], M, u, p.act, x_scale, round_buf, threads);
    run_gemm(p.ffn_down[j], dt, dt, u, M, t, Activation::None, x_scale, round_buf, threads);
    nonorm(dt, t, h, a[cur], p.ffn_norm[j], a[cur ^ 1], M, h, threads);
  }
  run_gemm(p.up, dt, dt, a[cur], M, u, p.act, x_scale, round_buf, threads);
  run_gemm(p.down, dt, dt, u, M, t, Activation::None, x_scale, round_buf, threads);
  nonorm(dt, t, h, a[cur], p.norm_out, last_is_out ? out : a[cur ^ 1], M, h, threads);
  if (last_is_out) return;
  run_gemm(p.out_bottleneck, dt, dt, a[cur ^ 1], M, t, Activation::None, x_scale, round_buf, threads);
  nonorm(dt, t, H, x, p.norm_ob, out, M, H, threads);
}

// The attention problem of a layer call (the runners fill in buffers and strides): B sequences of at most
// L tokens, packed (cu_seqlens) or padded (keep: the key mask, or null).
AttnArgs layer_attention(int64_t heads, int64_t head_dim, float scale, int64_t B, int64_t L, const int32_t* cu_seqlens,
                         const uint8_t* keep) {
  AttnArgs a{};
  a.B = B, a.H = heads, a.Lq = a.Lk = L, a.D = head_dim;
  a.cu_seqlens = cu_seqlens, a.keep = keep, a.scale = scale;
  return a;
}

void check_gemm(const char* name, const LayerGemm& g, DType dt, int64_t N, int64_t K) {
  auto fail = [name](const std::string& why) {
    throw std::invalid_argument(std::string("encoder layer plan: GEMM ") + name + ": " + why);
  };
  if (g.N != N || g.K != K)
    fail("weight is [" + std::to_string(g.N) + ", " + std::to_string(g.K) + "], expected [" + std::to_string(N) + ", " +
         std::to_string(K) + "]");
  if (!g.w) fail("no weight set");
  if (g.int8 != (g.w_type == ElemType::I8)) fail("int8 flag and weight type disagree");
  if (g.int8 && !g.w_scale) fail("int8 weight without w_scale");
  if (!gemm_kind_runs_here(g.kind)) fail("packed layout " + std::to_string(int(g.kind)) + " needs instructions this CPU lacks");
  if (g.round_input && (g.int8 || g.w_type != ElemType::F32 || dt != DType::F32))
    fail("input rounding needs fp32 activations and an fp32 weight");
  if (g.round_input && g.rounding.stochastic) fail("input rounding is nearest-even only");
}

}  // namespace

void check_mobilebert_layer_plan(const MobileBertLayerPlan& p) {
  auto fail = [](const std::string& why) { throw std::invalid_argument("MobileBERT layer plan: " + why); };
  if (p.dtype != DType::F32 && p.dtype != DType::BF16) fail("activations must be fp32 or bf16");
  const int64_t H = p.hidden, h = p.width, F = p.ffn;
  if (H <= 0 || h <= 0 || F <= 0 || p.heads <= 0 || p.heads * p.head_dim != h)
    fail("width must be heads * head_dim, all sizes positive");
  if (p.stacked < 0 || p.stacked > kMaxStackedFfns) fail("at most " + std::to_string(kMaxStackedFfns) + " stacked FFNs");
  const int64_t Nx = p.x_proj.N, Na = p.has_attn_proj ? p.attn_proj.N : 0;
  auto block = [&](const char* what, int64_t off, int64_t n) {  // -1 (absent) or an h-column block inside [0, n)
    if (off < -1 || (off >= 0 && off + h > n)) fail(std::string(what) + " block outside its GEMM output");
  };
  for (auto [what, off] : {std::pair<const char*, int64_t>{"input", p.xp_input}, {"shared", p.xp_shared},
                           {"q", p.xp_q}, {"k", p.xp_k}, {"v", p.xp_v}})
    block(what, off, Nx);
  for (auto [what, off] : {std::pair<const char*, int64_t>{"q", p.ap_q}, {"k", p.ap_k}, {"v", p.ap_v}}) block(what, off, Na);
  for (auto [what, x_off, a_off] : {std::tuple<const char*, int64_t, int64_t>{"q", p.xp_q, p.ap_q}, {"k", p.xp_k, p.ap_k},
                                    {"v", p.xp_v, p.ap_v}})
    if ((x_off >= 0) == (a_off >= 0)) fail(std::string(what) + " must come from exactly one of x_proj, attn_proj");
  if (p.xp_input < 0 && h != H) fail("without an input bottleneck the attention residual is x: width must be hidden");
  if (p.xp_shared >= 0 && !(p.has_attn_proj && p.attn_source == 1)) fail("the shared bottleneck feeds attn_proj");
  if (p.has_attn_proj && (p.attn_source == 0 ? p.xp_input : p.xp_shared) < 0) fail("attn_proj's input is not computed");
  check_gemm("x_proj", p.x_proj, p.dtype, Nx, H);
  if (p.has_attn_proj) check_gemm("attn_proj", p.attn_proj, p.dtype, Na, h);
  check_gemm("o", p.o, p.dtype, h, h);
  for (int j = 0; j < p.stacked; ++j) {
    check_gemm("ffn up", p.ffn_up[j], p.dtype, F, h);
    check_gemm("ffn down", p.ffn_down[j], p.dtype, h, F);
  }
  check_gemm("up", p.up, p.dtype, F, h);
  check_gemm("down", p.down, p.dtype, h, F);
  if (p.has_out_bottleneck) check_gemm("out_bottleneck", p.out_bottleneck, p.dtype, H, h);
  else if (h != H) fail("without an output bottleneck the layer output is the FFN's: width must be hidden");
  std::vector<const NoNormParams*> norms = {&p.norm_o, &p.norm_out};
  if (p.xp_input >= 0) norms.push_back(&p.norm_input);
  if (p.xp_shared >= 0) norms.push_back(&p.norm_shared);
  if (p.has_out_bottleneck) norms.push_back(&p.norm_ob);
  for (int j = 0; j < p.stacked; ++j) norms.push_back(&p.ffn_norm[j]);
  for (const NoNormParams* nn : norms)
    if (!nn->gamma || !nn->beta) fail("a NoNorm's gamma / beta is not set");
}

void mobilebert_layer_packed(const MobileBertLayerPlan& p, const void* x, int64_t T, const int32_t* cu_seqlens,
                             int64_t B, int64_t max_seqlen, void* out, int threads) {
  run_mobilebert(p, x, T, 0, layer_attention(p.heads, p.head_dim, p.scale, B, max_seqlen, cu_seqlens, nullptr), out,
                 threads);
}

void mobilebert_layer_padded(const MobileBertLayerPlan& p, const void* x, int64_t B, int64_t L, const uint8_t* keep,
                             void* out, int threads) {
  run_mobilebert(p, x, B * L, L, layer_attention(p.heads, p.head_dim, p.scale, B, L, nullptr, keep), out, threads);
}

void check_encoder_layer_plan(const EncoderLayerPlan& p) {
  if (p.dtype != DType::F32 && p.dtype != DType::BF16)
    throw std::invalid_argument("encoder layer plan: activations must be fp32 or bf16");
  if (p.hidden <= 0 || p.heads <= 0 || p.ffn <= 0 || p.heads * p.head_dim != p.hidden)
    throw std::invalid_argument("encoder layer plan: hidden must be heads * head_dim (all positive)");
  check_gemm("qkv", p.qkv, p.dtype, 3 * p.hidden, p.hidden);
  check_gemm("o", p.o, p.dtype, p.hidden, p.hidden);
  check_gemm("up", p.up, p.dtype, p.ffn, p.hidden);
  check_gemm("down", p.down, p.dtype, p.hidden, p.ffn);
  if (!p.ln1.weight || !p.ln1.bias || !p.ln2.weight || !p.ln2.bias)
    throw std::invalid_argument("encoder layer plan: LayerNorm weight/bias not set");
  if (p.attention_bf16 && (p.dtype != DType::F32 || !p.qkv.int8 || !p.o.int8))
    throw std::invalid_argument("encoder layer plan: bf16 attention needs fp32 activations and int8 qkv and o GEMMs");
}

void encoder_layer_packed(const EncoderLayerPlan& p, const void* x, int64_t T, const int32_t* cu_seqlens, int64_t B,
                          int64_t max_seqlen, void* out, int threads) {
  run_layer(p, x, T, 0, layer_attention(p.heads, p.head_dim, p.scale, B, max_seqlen, cu_seqlens, nullptr), out, threads);
}

void encoder_layer_padded(const EncoderLayerPlan& p, const void* x, int64_t B, int64_t L, const uint8_t* keep,
                          void* out, int threads) {
  run_layer(p, x, B * L, L, layer_attention(p.heads, p.head_dim, p.scale, B, L, nullptr, keep), out, threads);
}

size_t layer_scratch_bytes() { return tls_scratch.bytes(); }

void hold_layer_scratch(bool hold) {
  if (hold) {
    ++tls_holds;
  } else if (tls_holds > 0 && --tls_holds == 0) {
    tls_scratch.trim();
  }
}

}  // namespace bs
