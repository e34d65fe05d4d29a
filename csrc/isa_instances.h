// Compile one kernel body once per instruction set. Before including this file define BS_ISA_BODY
// as the quoted name of the body (e.g. "gelu_impl.h"); the body is then included three times:
//
//   namespace bs::avx512 { using Vec = VecAvx512; <body> }   under #pragma GCC target("avx512f,...")
//   namespace bs::avx2   { using Vec = VecAvx2;   <body> }   under #pragma GCC target("avx2,fma,f16c")
//   namespace bs::scalar { using Vec = VecScalar; <body> }   baseline x86-64
//
// so every function of the body carries its path's target attribute; BS_ISA_DISPATCH picks one at
// run time. vmath_impl.h (exp, erf, gelu) is included first in each namespace. Bodies must not include
// headers (include them before this file) and have no #pragma once.
//
// A body that has an AVX512_BF16 variant defines BS_ISA_AVX512_BF16 too: the avx512 instance is then
// compiled with avx512bf16 added to its target, and BS_ISA_BF16_DOT is 1 there (0 in the other two),
// so `#if BS_ISA_BF16_DOT` code may use the bf16 intrinsics; it must check cpu_features().avx512_bf16
// at run time before taking that code (the avx512 instance also runs on AVX-512 CPUs without BF16).
#ifndef BS_ISA_BODY
#error "define BS_ISA_BODY before including isa_instances.h"
#endif

#include "simd.h"

#pragma GCC push_options
#ifdef BS_ISA_AVX512_BF16
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c,avx512bf16")
#define BS_ISA_BF16_DOT 1
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c")
#define BS_ISA_BF16_DOT 0
#endif
namespace bs {
namespace avx512 {
using Vec = VecAvx512;
#include "vmath_impl.h"
#include BS_ISA_BODY
}  // namespace avx512
}  // namespace bs
#undef BS_ISA_BF16_DOT
#pragma GCC pop_options
#define BS_ISA_BF16_DOT 0

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace bs {
namespace avx2 {
using Vec = VecAvx2;
#include "vmath_impl.h"
#include BS_ISA_BODY
}  // namespace avx2
}  // namespace bs
#pragma GCC pop_options

namespace bs {
namespace scalar {
using Vec = VecScalar;
#include "vmath_impl.h"
#include BS_ISA_BODY
}  // namespace scalar
}  // namespace bs

#undef BS_ISA_BF16_DOT
#undef BS_ISA_AVX512_BF16
#undef BS_ISA_BODY
