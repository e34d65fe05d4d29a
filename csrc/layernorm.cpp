// add_layernorm: out[r, :] = LayerNorm(x[r, :] + residual[r, :]) * weight + bias, fp32.
//
//   h = x + residual;  mean = sum(h) / n;  var = sum((h - mean)^2) / n   (two passes: no cancellation)
//   out = (h - mean) * rsqrt(var + eps) * weight + bias
//
// Shapes: x, residual, out [rows, n] contiguous; weight, bias [n]. Threads split rows.
// Bytes per row: read x, residual (8n), write out (4n); weight and bias stay in L1. The row (<= 16 KB
// for n <= 4096) stays in L1 between passes, so the kernel is bound by the 12n bytes of DRAM traffic.
// NaN/inf anywhere in a row makes the row's statistics NaN, so the whole output row is NaN.
#include <immintrin.h>

#include <cmath>

#include "common.h"

namespace bs {

// The portable path accumulates in double: one long fp32 chain would lose ~log2(n) bits against the
// vector paths' 8/16 interleaved partial sums (and against torch).
static void add_layernorm_row_scalar(const float* x, const float* r, const float* w, const float* b,
                                     float* out, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    float h = x[i] + r[i];
    out[i] = h;
    sum += h;
  }
  const float mean = float(sum / double(n));
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    float c = out[i] - mean;
    sq += double(c) * c;
  }
  const float rstd = float(1.0 / std::sqrt(sq / double(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = (out[i] - mean) * rstd * w[i] + b[i];
}

BS_TARGET_AVX2 static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

BS_TARGET_AVX2 static void add_layernorm_row_avx2(const float* x, const float* r, const float* w,
                                                  const float* b, float* out, int64_t n, float eps) {
  const int64_t nv = n - n % 8;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 h = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(r + i));
    _mm256_storeu_ps(out + i, h);
    acc = _mm256_add_ps(acc, h);
  }
  float sum = hsum256(acc);
  for (int64_t i = nv; i < n; ++i) {
    out[i] = x[i] + r[i];
    sum += out[i];
  }
  const float mean = sum / float(n);
  const __m256 vmean = _mm256_set1_ps(mean);
  acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 c = _mm256_sub_ps(_mm256_loadu_ps(out + i), vmean);
    acc = _mm256_fmadd_ps(c, c, acc);
  }
  float sq = hsum256(acc);
  for (int64_t i = nv; i < n; ++i) sq += (out[i] - mean) * (out[i] - mean);
  const float rstd = 1.f / std::sqrt(sq / float(n) + eps);
  const __m256 vrstd = _mm256_set1_ps(rstd);
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(out + i), vmean), vrstd);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(c, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
  }
  for (int64_t i = nv; i < n; ++i) out[i] = (out[i] - mean) * rstd * w[i] + b[i];
}

BS_TARGET_AVX512 static void add_layernorm_row_avx512(const float* x, const float* r, const float* w,
                                                      const float* b, float* out, int64_t n, float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 h = _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, r + i));
    _mm512_mask_storeu_ps(out + i, m, h);
    acc = _mm512_add_ps(acc, h);
  }
  const float mean = _mm512_reduce_add_ps(acc) / float(n);
  const __m512 vmean = _mm512_set1_ps(mean);
  acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 c = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, out + i), vmean);
    acc = _mm512_fmadd_ps(c, c, acc);
  }
  const float rstd = 1.f / std::sqrt(_mm512_reduce_add_ps(acc) / float(n) + eps);
  const __m512 vrstd = _mm512_set1_ps(rstd);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 c = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, out + i), vmean), vrstd);
    _mm512_mask_storeu_ps(out + i, m,
                          _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, b + i)));
  }
}

void add_layernorm_f32(const float* x, const float* residual, const float* weight, const float* bias,
                       float* out, int64_t rows, int64_t n, float eps, int threads) {
  auto row_fn = active_isa() == Isa::Avx512 ? add_layernorm_row_avx512
                : active_isa() == Isa::Avx2 ? add_layernorm_row_avx2
                                            : add_layernorm_row_scalar;
  // ~12n bytes per row: give each thread at least ~64 KB of work before splitting.
  const int64_t grain = n > 0 ? (int64_t(64) * 1024) / (12 * n) + 1 : rows;
  parallel_for(rows, threads, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row)
      row_fn(x + row * n, residual + row * n, weight, bias, out + row * n, n, eps);
  });
}

}  // namespace bs
