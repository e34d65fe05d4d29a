// Shared pieces of the GEMM family (linear, int8_linear) and quantize: the epilogue description,
// its scalar form, and the packed-weight layouts. The vector epilogue uses the shared vector math
// (simd.h / vmath_impl.h: vgelu_erf, vgelu_tanh, bf16 narrowing), instantiated in gemm.cpp.
//
// The epilogue runs on the accumulator tile while it is still in registers:
//   y = acc (+ bias[n]);  y = act(y);  store y as fp32 / bf16 (RNE) / fp16 (RNE)
// act: identity | gelu (erf form) | gelu_tanh | relu. NaN propagates; gelu(-inf) = 0, gelu(+inf) = +inf.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

#define BS_INLINE inline __attribute__((always_inline))

namespace bs {

enum class Activation : int { None = 0, Gelu = 1, GeluTanh = 2, Relu = 3 };
enum class OutType : int { F32 = 0, BF16 = 1, F16 = 2, S32 = 3 };  // S32: raw int8 GEMM sums
enum class ElemType : int { F32 = 0, BF16 = 1, I8 = 2 };

// What happens to a finished accumulator tile: out[m * ldo + n] = act(acc + bias[n]) in out_type.
struct Epilogue {
  const float* bias;  // [N] fp32 or null
  Activation act;
  OutType out_type;
  void* out;
  int64_t ldo;
};

// -------------------------------------------------------------------------------------------- //
// Scalar epilogue (the portable path), in double.                                               //
// -------------------------------------------------------------------------------------------- //
inline double activate_scalar(double y, Activation act) {
  switch (act) {
    case Activation::Gelu:
      if (std::isinf(y) && y < 0.0) return 0.0;  // the limit, not -inf * 0
      return 0.5 * y * (1.0 + std::erf(y * 0.70710678118654752));
    case Activation::GeluTanh:
      if (y < -10.0) return 0.0;
      return 0.5 * y * (1.0 + std::tanh(0.79788456080286536 * (y + 0.044715 * y * y * y)));
    case Activation::Relu: return y < 0.0 ? 0.0 : y;
    default: return y;
  }
}

inline void store_scalar(void* out, int64_t i, double y, OutType ot) {
  const float f = float(y);
  switch (ot) {
    case OutType::BF16: static_cast<uint16_t*>(out)[i] = f32_to_bf16(f); break;
    case OutType::F16: static_cast<uint16_t*>(out)[i] = f32_to_f16(f); break;
    default: static_cast<float*>(out)[i] = f;
  }
}

// -------------------------------------------------------------------------------------------- //
// Packed weight layouts. B = weight [N, K] (nn.Linear layout) is cut into panels of NR output    //
// columns; inside a panel, k runs in groups of G consecutive values (one 32-bit lane group):      //
//   packed[panel][k / G][column in panel][k % G]                                                  //
// so one vector load at step s gives NR/lanes registers of "G k-values for each of 16 columns",    //
// which is exactly the operand of FMA (G=1), vdpbf16ps / vpmaddwd (G=2) and vpdpbusd (G=4).       //
// Columns >= N and k >= K are zero. The u8 x s8 layouts append int32 comp[N_padded] = 128 sum_k w. //
// -------------------------------------------------------------------------------------------- //
enum class PackKind : int {
  Raw = 0,          // scalar path: the weight as given (row-major [N, K]); nothing packed
  F32x64 = 1,       // AVX-512 fp32 (and bf16 weights without AVX512_BF16, widened): NR 64, G 1, fp32
  Bf16x64 = 2,      // AVX-512 BF16: NR 64, G 2, bf16 pairs for vdpbf16ps
  F32x16 = 3,       // AVX2 fp32 (and bf16 widened): NR 16, G 1, fp32
  U8S8x64 = 4,      // AVX-512 VNNI: NR 64, G 4, int8 + comp, for vpdpbusd (activations shifted to u8)
  S16x16 = 5,       // AVX2 int8 without VNNI: NR 16, G 2, int16 pairs for vpmaddwd (never saturates)
  S16x64 = 6,       // AVX-512 int8 without VNNI (Skylake-SP): NR 64, G 2, int16 pairs for vpmaddwd zmm
  U8S7x16 = 7,      // AVX2 int8, weights in [-63, 63] (7-bit): NR 16, G 4, int8 + comp, vpmaddubsw + vpmaddwd
  LastKind = U8S7x16,
};

struct PackInfo {
  int nr, group, elem_bytes;  // panel width, k-group, bytes per packed element
  bool comp;                  // int32 compensation appended
};

inline PackInfo pack_info(PackKind k) {
  switch (k) {
    case PackKind::F32x64: return {64, 1, 4, false};
    case PackKind::Bf16x64: return {64, 2, 2, false};
    case PackKind::F32x16: return {16, 1, 4, false};
    case PackKind::U8S8x64: return {64, 4, 1, true};
    case PackKind::S16x16: return {16, 2, 2, false};
    case PackKind::S16x64: return {64, 2, 2, false};
    case PackKind::U8S7x16: return {16, 4, 1, true};
    default: return {1, 1, 0, false};
  }
}

// Largest |w| the AVX2 u8 x s7 kernel (U8S7x16) accepts: its vpmaddubsw pair sums stay below int16's
// saturation only for 7-bit weights (proof in gemm.cpp). Wider int8 weights take S16x16 instead.
constexpr int kU8S7MaxWeight = 63;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace bs
