// quantize: symmetric int8, one scale per row of x viewed as [rows, cols] (per token: rows = tokens;
// per channel: rows = output channels of a weight [N, K]) or one scale for everything (per tensor).
//
//   amax  = max |x|   over the group (NaN anywhere in the group -> NaN)
//   scale = amax / 127, or 1 where amax == 0                     (fp32 division, as the reference)
//   q     = clamp(round_half_even(x / scale), -127, 127), 0 where x / scale is NaN
//
// Every step is one correctly rounded IEEE operation in fp32, so the result is bit-identical to
// bertsilicon.reference.quantize on fp32 input (bf16 input is widened exactly first).
// Bytes: read x twice (amax pass, quantize pass; a row is <= 16 KB for cols <= 4096 fp32, so the
// second read hits L1/L2), write q (1 byte per element) and one fp32 scale per group.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gemm.h"

namespace bs {

static inline float load_scalar(const void* x, ElemType xt, int64_t i) {
  return xt == ElemType::F32 ? static_cast<const float*>(x)[i] : bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
}

static inline float scale_from_amax(float amax) { return amax == 0.0f ? 1.0f : amax / 127.0f; }

static inline int8_t quantize_scalar(float v, float scale) {
  float r = std::nearbyint(v / scale);  // default rounding mode: to nearest even
  if (std::isnan(r)) return 0;
  return int8_t(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

// ---------------------------------------------------------------------------------------------- //
BS_TARGET_AVX512 static inline __m512 load16(const void* x, ElemType xt, int64_t i, __mmask16 mask) {
  if (xt == ElemType::F32) return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(x) + i);
  __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(x) + i);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __mmask16 tail_mask16(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
}

// max |x[0:n]|, NaN if any element is NaN.
BS_TARGET_AVX512 static float amax_avx512(const void* x, ElemType xt, int64_t n) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    __m512 a = _mm512_abs_ps(load16(x, xt, i, tail_mask16(n - i)));
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, a);
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(m);
}

BS_TARGET_AVX512 static void apply_avx512(const void* x, ElemType xt, int64_t n, float scale, int8_t* q) {
  const __m512 s = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask16(n - i);
    __m512 r = _mm512_roundscale_ps(_mm512_div_ps(load16(x, xt, i, mask), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);  // NaN -> 0
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
    _mm_mask_storeu_epi8(q + i, mask, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)));
  }
}

// ---------------------------------------------------------------------------------------------- //
BS_TARGET_AVX2 static inline __m256 load8(const void* x, ElemType xt, int64_t i) {
  if (xt == ElemType::F32) return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

BS_TARGET_AVX2 static float amax_avx2(const void* x, ElemType xt, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  const int64_t nv = n - n % 8;
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 a = _mm256_and_ps(load8(x, xt, i), abs_mask);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    m = _mm256_max_ps(m, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  float r = 0.0f;
  for (float v : lanes) r = v > r ? v : r;
  for (int64_t i = nv; i < n; ++i) {
    float a = std::fabs(load_scalar(x, xt, i));
    has_nan |= std::isnan(a);
    r = a > r ? a : r;
  }
  return has_nan ? std::numeric_limits<float>::quiet_NaN() : r;
}

BS_TARGET_AVX2 static void apply_avx2(const void* x, ElemType xt, int64_t n, float scale, int8_t* q) {
  const __m256 s = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const int64_t nv = n - n % 8;
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 r = _mm256_round_ps(_mm256_div_ps(load8(x, xt, i), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));  // NaN -> 0
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    __m256i v = _mm256_cvtps_epi32(r);
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(w, w));
  }
  for (int64_t i = nv; i < n; ++i) q[i] = quantize_scalar(load_scalar(x, xt, i), scale);
}

// ---------------------------------------------------------------------------------------------- //
static float amax_scalar(const void* x, ElemType xt, int64_t n) {
  float r = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    float a = std::fabs(load_scalar(x, xt, i));
    if (std::isnan(a)) return a;
    r = a > r ? a : r;
  }
  return r;
}

static float amax_any(const void* x, ElemType xt, int64_t n) {
  switch (active_isa()) {
    case Isa::Avx512: return amax_avx512(x, xt, n);
    case Isa::Avx2: return amax_avx2(x, xt, n);
    default: return amax_scalar(x, xt, n);
  }
}

static void apply_any(const void* x, ElemType xt, int64_t n, float scale, int8_t* q) {
  switch (active_isa()) {
    case Isa::Avx512: return apply_avx512(x, xt, n, scale, q);
    case Isa::Avx2: return apply_avx2(x, xt, n, scale, q);
    default:
      for (int64_t i = 0; i < n; ++i) q[i] = quantize_scalar(load_scalar(x, xt, i), scale);
  }
}

static const void* offset(const void* x, ElemType xt, int64_t i) {
  return static_cast<const uint8_t*>(x) + i * (xt == ElemType::F32 ? 4 : 2);
}

void quantize(const void* x, ElemType xt, int64_t rows, int64_t cols, bool per_tensor, int8_t* q, float* scale,
              int threads) {
  if (per_tensor) {  // amax over fixed chunks in parallel, then one scale; chunks are also the apply unit
    const int64_t n = rows * cols, chunk = 1 << 16, chunks = ceil_div(n, chunk);
    std::vector<float> part(size_t(chunks > 0 ? chunks : 1), 0.0f);
    parallel_for(chunks, threads, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        part[c] = amax_any(offset(x, xt, c * chunk), xt, std::min(chunk, n - c * chunk));
    });
    float amax = 0.0f;
    for (float a : part) amax = (std::isnan(a) || std::isnan(amax)) ? std::numeric_limits<float>::quiet_NaN() : std::max(amax, a);
    const float s = scale_from_amax(amax);
    scale[0] = s;
    parallel_for(chunks, threads, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        apply_any(offset(x, xt, c * chunk), xt, std::min(chunk, n - c * chunk), s, q + c * chunk);
    });
    return;
  }
  parallel_for(rows, threads, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const void* row = offset(x, xt, r * cols);
      const float s = scale_from_amax(amax_any(row, xt, cols));
      scale[r] = s;
      apply_any(row, xt, cols, s, q + r * cols);
    }
  });
}

}  // namespace bs
