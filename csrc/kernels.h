// Entry points of the C++ CPU kernels (bound in bindings.cpp). Each one dispatches to the
// avx512 / avx2 / scalar instance of its body on active_isa(). The caller (Python) has validated
// dtypes, shapes, strides and pointers; sizes are element counts, strides are in elements.
#pragma once

#include <cstdint>

namespace bs {

// Element types the kernels read and write (fp16 only as a round_to input/output).
enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

// out[r, :] = LayerNorm(x[r, :] + residual[r, :]) * weight + bias; x, residual, out [rows, n] of
// dtype, contiguous; weight, bias fp32 [n]. fp32 statistics.
void add_layernorm(DType dtype, const void* x, const void* residual, const float* weight, const float* bias,
                   void* out, int64_t rows, int64_t n, float eps, int threads);

// out[r, :] = (z[r, :] + residual[r, :]) * gamma + beta (MobileBERT's NoNorm), each step rounded to dtype as
// torch's in-place add_, mul_, add_ (residual may be null); z rows of stride z_ld, residual and out [rows, n]
// contiguous, of dtype; gamma, beta fp32 [n] holding dtype's values.
void add_nonorm(DType dtype, const void* z, int64_t z_ld, const void* residual, const float* gamma,
                const float* beta, void* out, int64_t rows, int64_t n, int threads);

// out[r, c] = gelu(x[r, c] + bias[c]); x, out [rows, n] of dtype, contiguous; bias fp32 [n].
void bias_gelu(DType dtype, bool tanh_form, const void* x, const float* bias, void* out, int64_t rows,
               int64_t n, int threads);

// The vector math of vmath_impl.h on fp32 arrays, for accuracy tests:
// which = 0 erf, 1 exp, 2 exp2, 3 gelu (erf form), 4 gelu (tanh form).
void eval_math(int which, const float* x, float* out, int64_t n);

// Attention problem: B sequences x H heads. Padded form: q [B, H, Lq, D], k/v [B, H, Lk, D] given by
// element strides (batch, head, row), last dim contiguous; `keep` uint8 [B, Lk] (1 = real key) or null.
// Varlen form (cu_seqlens != null): sequence b is rows cu_seqlens[b] .. cu_seqlens[b+1] of q/k/v/out
// (batch strides unused, Lq = Lk = max_seqlen bounds the tiles).
struct AttnArgs {
  DType dtype;
  const void *q, *k, *v;
  void* out;
  int64_t B, H, Lq, Lk, D;
  int64_t q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, o_sb, o_sh, o_sl;
  const uint8_t* keep;
  const int32_t* cu_seqlens;
  float scale;
  int threads;
};
void attention(const AttnArgs& a);

// Round every element of x (dtype, contiguous, n elements) to a binary format with `mbits` mantissa
// bits, smallest normal exponent `emin` and largest finite value `max_finite` (from
// bertsilicon.formats.FloatFormat): nearest-even, or stochastic with the first Philox4x32-10 word of
// (seed, element index). Overflow: saturate to max_finite, else inf (ieee) / NaN (e4m3).
// Bit-identical to bertsilicon.formats.round_to; out has x's dtype.
struct RoundArgs {
  DType dtype;
  const void* x;
  void* out;
  int64_t n;
  int mbits, emin;
  double max_finite;
  bool ieee, stochastic, saturate;
  uint64_t seed;
  int threads;
};
void round_to(const RoundArgs& a);

// First 32-bit word of Philox4x32-10 for counters (start .. start + n - 1, 0, 0, 0) and key seed.
void philox_bits(uint64_t seed, uint64_t start, uint32_t* out, int64_t n);

}  // namespace bs
