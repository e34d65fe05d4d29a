// Shared pieces of the C++ CPU backend: instruction-set selection, threading, bf16 conversion.
//
// Every kernel is compiled once per instruction set with a per-function target attribute
// (BS_TARGET_AVX512 / BS_TARGET_AVX2) and chosen at run time from active_isa(); the build never
// uses -march=native, so one wheel runs on any x86-64 CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bs {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vnni = false, avx512_bf16 = false, avx_vnni = false, amx_tile = false, amx_int8 = false,
       amx_bf16 = false;
};

const CpuFeatures& cpu_features();
Isa best_isa();               // the widest path this CPU supports
Isa active_isa();             // the path kernels take now (best_isa() unless lowered by set_isa)
void set_isa(Isa isa);        // caller checks isa <= best_isa()
const char* isa_name(Isa isa);

#define BS_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")))
#define BS_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// Run body(begin, end) over [0, n) split into contiguous chunks over `threads` OpenMP threads.
template <class F>
inline void parallel_for(int64_t n, int threads, int64_t grain, F&& body) {
  if (n <= 0) return;
  if (threads <= 1 || n <= grain) {
    body(int64_t(0), n);
    return;
  }
#ifdef _OPENMP
  int64_t chunks = (n + grain - 1) / grain;
  int nt = int(chunks < threads ? chunks : threads);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int64_t per = (n + nt - 1) / nt;
    int64_t b = t * per, e = b + per < n ? b + per : n;
    if (b < e) body(b, e);
  }
#else
  body(int64_t(0), n);
#endif
}

// bfloat16 <-> float: bf16 is the top half of the fp32 bit pattern. Conversion to bf16 rounds to
// nearest-even and keeps NaN a (quiet) NaN.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace bs
