// One vector vocabulary for every instruction set, so each kernel is written once.
//
// A kernel body lives in a `*_impl.h` file that uses `Vec` (and the math in vmath.h) without naming
// an instruction set. isa_instances.h includes that body three times, in the namespaces bs::avx512,
// bs::avx2 and bs::scalar, each under `#pragma GCC target(...)`: every function of the body gets the
// matching per-function target attribute, and active_isa() picks one at run time (BS_ISA_DISPATCH).
// The build never uses -march=native.
//
//   Vec::W            lanes of fp32 (16, 8, 1)
//   Vec::F / Vec::M   a vector of fp32 / a lane mask
//   load/store        fp32 or bf16 memory <-> fp32 lanes; loadn/storen touch only the first n lanes
//   bf16 stores round to nearest-even and keep NaN a quiet NaN (same as bs::f32_to_bf16)
#pragma once

// GCC 12 reports false "maybe-uninitialized" warnings inside its own AVX-512 headers (_mm512_undefined).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace bs {

// A bfloat16 value in memory (the top half of an fp32 bit pattern); distinct from fp16's uint16_t.
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");
inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return bf16_to_f32(x.bits); }

// ------------------------------------------------------------------------------------------------
// AVX-512 (F, BW, VL, DQ): 16 lanes, native lane masks.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c")
struct VecAvx512 {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
#define BS_VI static inline __attribute__((always_inline))
  BS_VI M first(int n) { return n >= 16 ? M(0xffff) : M((1u << n) - 1); }
  BS_VI F zero() { return _mm512_setzero_ps(); }
  BS_VI F keep_first(F v, int n) { return _mm512_maskz_mov_ps(first(n), v); }  // lanes >= n -> 0
  BS_VI F set1(float a) { return _mm512_set1_ps(a); }
  BS_VI F load(const float* p) { return _mm512_loadu_ps(p); }
  BS_VI F loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
  BS_VI void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  BS_VI void storen(float* p, F v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }
  BS_VI F widen(__m256i h) {  // bf16 word i -> high half of lane i, low half zero (one masked vpermw)
    const I word_i = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                      7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
    return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, word_i, _mm512_castsi256_si512(h)));
  }
  // fp32 -> bf16 nearest-even on the bit pattern: + 0x7fff, and + 1 more where the kept lsb (bit 16) is
  // set; NaN keeps its sign and top payload and is made quiet. The high halves of the 16 lanes are then
  // gathered with one word permute (vpermw) rather than a shift and a narrowing move.
  BS_VI __m256i narrow(F v) {
    const I u = _mm512_castps_si512(v);
    I r = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
    r = _mm512_mask_add_epi32(r, _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000)), r, _mm512_set1_epi32(1));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x400000));
    const I odd_words = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(odd_words, r));
  }
  BS_VI F load(const bf16* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  BS_VI F loadn(const bf16* p, int n) { return widen(_mm256_maskz_loadu_epi16(first(n), p)); }
  BS_VI void store(bf16* p, F v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  BS_VI void storen(bf16* p, F v, int n) { _mm256_mask_storeu_epi16(p, first(n), narrow(v)); }
  BS_VI F add(F a, F b) { return _mm512_add_ps(a, b); }
  BS_VI F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  BS_VI F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  BS_VI F div(F a, F b) { return _mm512_div_ps(a, b); }
  BS_VI F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }   // a * b + c
  BS_VI F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
  BS_VI F max(F a, F b) { return _mm512_max_ps(a, b); }  // NaN in b is returned
  BS_VI F min(F a, F b) { return _mm512_min_ps(a, b); }
  BS_VI F abs(F a) { return _mm512_abs_ps(a); }
  BS_VI F copysign(F mag, F sgn) {
    const I s = _mm512_set1_epi32(int(0x80000000u));
    // bitwise (s ? sgn : mag): truth table 0xd8 over (mag, sgn, s)
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(mag), _mm512_castps_si512(sgn), s, 0xd8));
  }
  BS_VI F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for integer-valued n in [-126, 127]
  BS_VI F pow2(F n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  BS_VI F ldexp(F p, F n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, n integer-valued
  BS_VI M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  BS_VI M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  BS_VI M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  BS_VI M isnan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  BS_VI bool any(M m) { return m != 0; }
  BS_VI F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  BS_VI float reduce_add(F a) { return _mm512_reduce_add_ps(a); }
  BS_VI float reduce_max(F a) { return _mm512_reduce_max_ps(a); }
#undef BS_VI
};
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// AVX2 + FMA: 8 lanes; masks are all-ones/all-zero fp32 lanes.
// ------------------------------------------------------------------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
struct VecAvx2 {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256;
#define BS_VI static inline __attribute__((always_inline))
  BS_VI __m256i first(int n) {
    alignas(32) static const int32_t tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tbl + 8 - (n > 8 ? 8 : n)));
  }
  BS_VI F zero() { return _mm256_setzero_ps(); }
  BS_VI F keep_first(F v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(first(n))); }
  BS_VI F set1(float a) { return _mm256_set1_ps(a); }
  BS_VI F load(const float* p) { return _mm256_loadu_ps(p); }
  BS_VI F loadn(const float* p, int n) { return _mm256_maskload_ps(p, first(n)); }
  BS_VI void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  BS_VI void storen(float* p, F v, int n) { _mm256_maskstore_ps(p, first(n), v); }
  BS_VI F widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  BS_VI __m128i narrow(F v) {
    const I u = _mm256_castps_si256(v);
    const I lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    I r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const I nanbits = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, nanbits, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // every lane holds a value < 2^16: pack without saturation, then put the two halves in order
    const I packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    return _mm256_castsi256_si128(packed);
  }
  BS_VI F load(const bf16* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  BS_VI F loadn(const bf16* p, int n) {
    alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tmp, p, size_t(n) * 2);
    return widen(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
  BS_VI void store(bf16* p, F v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v)); }
  BS_VI void storen(bf16* p, F v, int n) {
    alignas(16) uint16_t tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), narrow(v));
    std::memcpy(p, tmp, size_t(n) * 2);
  }
  BS_VI F add(F a, F b) { return _mm256_add_ps(a, b); }
  BS_VI F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  BS_VI F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  BS_VI F div(F a, F b) { return _mm256_div_ps(a, b); }
  BS_VI F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  BS_VI F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  BS_VI F max(F a, F b) { return _mm256_max_ps(a, b); }
  BS_VI F min(F a, F b) { return _mm256_min_ps(a, b); }
  BS_VI F abs(F a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  BS_VI F copysign(F mag, F sgn) {
    const F s = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(s, mag), _mm256_and_ps(s, sgn));
  }
  BS_VI F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  BS_VI F pow2(F n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  BS_VI F ldexp(F p, F n) { return _mm256_mul_ps(p, pow2(n)); }
  BS_VI M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  BS_VI M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  BS_VI M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  BS_VI M isnan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  BS_VI bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  BS_VI F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  BS_VI float reduce_add(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  BS_VI float reduce_max(F a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
#undef BS_VI
};
#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// Portable scalar path: one lane, the same algorithms, no intrinsics (no auto-vectorisation either).
// ------------------------------------------------------------------------------------------------
struct VecScalar {
  static constexpr int W = 1;
  using F = float;
  using M = bool;
#define BS_VI static inline __attribute__((always_inline))
  BS_VI F zero() { return 0.f; }
  BS_VI F keep_first(F v, int n) { return n > 0 ? v : 0.f; }
  BS_VI F set1(float a) { return a; }
  BS_VI F load(const float* p) { return *p; }
  BS_VI F loadn(const float* p, int n) { return n > 0 ? *p : 0.f; }
  BS_VI void store(float* p, F v) { *p = v; }
  BS_VI void storen(float* p, F v, int n) { if (n > 0) *p = v; }
  BS_VI F load(const bf16* p) { return bf16_to_f32(p->bits); }
  BS_VI F loadn(const bf16* p, int n) { return n > 0 ? load(p) : 0.f; }
  BS_VI void store(bf16* p, F v) { p->bits = f32_to_bf16(v); }
  BS_VI void storen(bf16* p, F v, int n) { if (n > 0) store(p, v); }
  BS_VI F add(F a, F b) { return a + b; }
  BS_VI F sub(F a, F b) { return a - b; }
  BS_VI F mul(F a, F b) { return a * b; }
  BS_VI F div(F a, F b) { return a / b; }
  BS_VI F fmadd(F a, F b, F c) { return std::fma(a, b, c); }
  BS_VI F fnmadd(F a, F b, F c) { return std::fma(-a, b, c); }
  BS_VI F max(F a, F b) { return a > b ? a : b; }  // like maxps: NaN in b is returned
  BS_VI F min(F a, F b) { return a < b ? a : b; }
  BS_VI F abs(F a) { return std::fabs(a); }
  BS_VI F copysign(F mag, F sgn) { return std::copysign(mag, sgn); }
  BS_VI F round(F a) { return std::nearbyint(a); }
  BS_VI F pow2(F n) {
    if (!(n == n)) return n;  // NaN: int conversion would be undefined
    uint32_t u = uint32_t(int32_t(n) + 127) << 23;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  BS_VI F ldexp(F p, F n) { return p * pow2(n); }
  BS_VI M lt(F a, F b) { return a < b; }
  BS_VI M gt(F a, F b) { return a > b; }
  BS_VI M eq(F a, F b) { return a == b; }
  BS_VI M isnan(F a) { return a != a; }
  BS_VI bool any(M m) { return m; }
  BS_VI F select(M m, F a, F b) { return m ? a : b; }
  BS_VI float reduce_add(F a) { return a; }
  BS_VI float reduce_max(F a) { return a; }
#undef BS_VI
};

}  // namespace bs

// Call FN (defined in bs::avx512 / bs::avx2 / bs::scalar by isa_instances.h) on the active path.
#define BS_ISA_DISPATCH(FN, ...)                                     \
  do {                                                               \
    switch (::bs::active_isa()) {                                    \
      case ::bs::Isa::Avx512: ::bs::avx512::FN(__VA_ARGS__); break;  \
      case ::bs::Isa::Avx2: ::bs::avx2::FN(__VA_ARGS__); break;      \
      default: ::bs::scalar::FN(__VA_ARGS__); break;                 \
    }                                                                \
  } while (0)
