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
//
// Divide-free rounding. A vector divide is the slowest instruction here (Zen 4: one zmm vdivps per
// ~5 cycles, vs two multiplies per cycle), so the vector paths compute x * inv, inv = RN(1 / scale),
// and divide only where that could round differently. |q| <= 127 (|x| <= amax), and
//   |RN(x * inv) - x / scale| <= 2 u |q|  and  |RN(x / scale) - x / scale| <= u |q|,  u = 2^-24,
// so the two are within 3 * 127 * 2^-24 < 2.3e-5 of each other; round-half-even of both agrees unless
// a half-integer lies between them. A vector with any lane whose product is within kNearHalf = 2^-14
// (> 2.3e-5) of a half-integer is redone with the divide (random data: ~1 lane in 8000). Scales below
// 2^-125 (1 / scale would overflow) take the divide for the whole group.
// With a finite scale no element is NaN or infinite (|x| <= amax) and |RN(x / scale)| <= 127 (scale is
// amax / 127 rounded, so x / scale exceeds 127 by at most a few ulp), so that path needs neither the
// NaN mask nor the clamp; groups with a NaN or infinite scale take the general path (divide, NaN -> 0,
// clamp), as do the scalar tails.
//
// `flip` is XORed into every stored byte: 0 stores q as int8; 0x80 stores q + 128 as uint8, the
// VNNI GEMM's shifted activations (gemm.cpp), so int8_linear_dynamic quantizes straight into the
// GEMM's A buffer.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gemm.h"

namespace bs {

static inline float load_scalar(const void* x, ElemType xt, int64_t i) {
  return xt == ElemType::F32 ? static_cast<const float*>(x)[i] : bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
}

static inline float scale_from_amax(float amax) { return amax == 0.0f ? 1.0f : amax / 127.0f; }

constexpr float kNearHalf = 0.5f - 0x1p-14f;   // |q - rint(q)| at or above this: divide instead
constexpr float kMinMulScale = 0x1p-125f;      // below: 1 / scale overflows, divide instead

static inline bool fast_scale(float scale) { return std::isfinite(scale) && scale >= kMinMulScale; }

static inline int8_t quantize_scalar(float v, float scale) {
  float r = std::nearbyint(v / scale);  // default rounding mode: to nearest even
  if (std::isnan(r)) return 0;
  return int8_t(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

static inline void apply_scalar(const void* x, ElemType xt, int64_t i0, int64_t n, float scale, uint8_t flip,
                                int8_t* q) {
  for (int64_t i = i0; i < n; ++i) q[i] = int8_t(uint8_t(quantize_scalar(load_scalar(x, xt, i), scale)) ^ flip);
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

// max |x[0:n]|, NaN if any element is NaN. Done on the bit patterns: for x with the sign bit cleared,
// integer order is float order, and every NaN pattern (> 0x7f800000) sorts above +inf, so one integer
// max per vector finds both the maximum and any NaN.
constexpr int32_t kAbsMask = 0x7fffffff, kInfBits = 0x7f800000;

static inline float amax_from_bits(int32_t bits) {
  if (bits > kInfBits) return std::numeric_limits<float>::quiet_NaN();
  float r;
  std::memcpy(&r, &bits, 4);
  return r;
}

BS_TARGET_AVX512 static float amax_avx512(const void* x, ElemType xt, int64_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(kAbsMask);
  __m512i m = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16)
    m = _mm512_max_epi32(m, _mm512_and_si512(_mm512_castps_si512(load16(x, xt, i, tail_mask16(n - i))), abs_mask));
  return amax_from_bits(_mm512_reduce_max_epi32(m));
}

BS_TARGET_AVX512 static void apply_avx512(const void* x, ElemType xt, int64_t n, float scale, uint8_t flip, int8_t* q) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 s = _mm512_set1_ps(scale);
  const __m128i flip16 = _mm_set1_epi8(char(flip));
  if (fast_scale(scale)) {
    const __m512 inv = _mm512_set1_ps(1.0f / scale), near_half = _mm512_set1_ps(kNearHalf);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = tail_mask16(n - i);
      const __m512 v = load16(x, xt, i, mask), p = _mm512_mul_ps(v, inv);
      __m512i r = _mm512_cvt_roundps_epi32(p, kRne);
      const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(p, _mm512_cvtepi32_ps(r)));
      if (_mm512_mask_cmp_ps_mask(mask, frac, near_half, _CMP_GE_OQ))  // near a half-integer: divide
        r = _mm512_cvt_roundps_epi32(_mm512_div_ps(v, s), kRne);
      _mm_mask_storeu_epi8(q + i, mask, _mm_xor_si128(_mm512_cvtepi32_epi8(r), flip16));
    }
    return;
  }
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask16(n - i);
    __m512 r = _mm512_roundscale_ps(_mm512_div_ps(load16(x, xt, i, mask), s), kRne);
    r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);  // NaN -> 0
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
    _mm_mask_storeu_epi8(q + i, mask, _mm_xor_si128(_mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)), flip16));
  }
}

// ---------------------------------------------------------------------------------------------- //
BS_TARGET_AVX2 static inline __m256 load8(const void* x, ElemType xt, int64_t i) {
  if (xt == ElemType::F32) return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

BS_TARGET_AVX2 static float amax_avx2(const void* x, ElemType xt, int64_t n) {
  const __m256i abs_mask = _mm256_set1_epi32(kAbsMask);
  __m256i m = _mm256_setzero_si256();
  const int64_t nv = n - n % 8;
  for (int64_t i = 0; i < nv; i += 8)
    m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_castps_si256(load8(x, xt, i)), abs_mask));
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), m);
  int32_t bits = 0;
  for (int32_t v : lanes) bits = std::max(bits, v);
  for (int64_t i = nv; i < n; ++i) {
    const float a = load_scalar(x, xt, i);
    int32_t b;
    std::memcpy(&b, &a, 4);
    bits = std::max(bits, b & kAbsMask);
  }
  return amax_from_bits(bits);
}

// 8 int32 lanes (each in [-127, 127]) -> 8 bytes XOR flip at q.
BS_TARGET_AVX2 static inline void store8(int8_t* q, __m256i v, __m128i flip16) {
  __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_xor_si128(_mm_packs_epi16(w, w), flip16));
}

BS_TARGET_AVX2 static void apply_avx2(const void* x, ElemType xt, int64_t n, float scale, uint8_t flip, int8_t* q) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256 s = _mm256_set1_ps(scale);
  const __m128i flip16 = _mm_set1_epi8(char(flip));
  const int64_t nv = n - n % 8;
  if (fast_scale(scale)) {
    const __m256 inv = _mm256_set1_ps(1.0f / scale), near_half = _mm256_set1_ps(kNearHalf);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < nv; i += 8) {
      const __m256 v = load8(x, xt, i), p = _mm256_mul_ps(v, inv);
      __m256 r = _mm256_round_ps(p, kRne);
      if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(p, r), abs_mask), near_half, _CMP_GE_OQ)))
        r = _mm256_round_ps(_mm256_div_ps(v, s), kRne);  // near a half-integer: divide
      store8(q + i, _mm256_cvtps_epi32(r), flip16);       // r is integral: the conversion is exact
    }
  } else {
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int64_t i = 0; i < nv; i += 8) {
      __m256 r = _mm256_round_ps(_mm256_div_ps(load8(x, xt, i), s), kRne);
      r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));  // NaN -> 0
      store8(q + i, _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi)), flip16);
    }
  }
  apply_scalar(x, xt, nv, n, scale, flip, q);
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

static void apply_any(const void* x, ElemType xt, int64_t n, float scale, uint8_t flip, int8_t* q) {
  switch (active_isa()) {
    case Isa::Avx512: return apply_avx512(x, xt, n, scale, flip, q);
    case Isa::Avx2: return apply_avx2(x, xt, n, scale, flip, q);
    default: return apply_scalar(x, xt, 0, n, scale, flip, q);
  }
}

static const void* offset(const void* x, ElemType xt, int64_t i) {
  return static_cast<const uint8_t*>(x) + i * (xt == ElemType::F32 ? 4 : 2);
}

float quantize_row(const void* x, ElemType xt, int64_t n, int8_t* q, uint8_t flip) {
  const float s = scale_from_amax(amax_any(x, xt, n));
  apply_any(x, xt, n, s, flip, q);
  return s;
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
        apply_any(offset(x, xt, c * chunk), xt, std::min(chunk, n - c * chunk), s, 0, q + c * chunk);
    });
    return;
  }
  parallel_for(rows, threads, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) scale[r] = quantize_row(offset(x, xt, r * cols), xt, cols, q + r * cols, 0);
  });
}

}  // namespace bs
