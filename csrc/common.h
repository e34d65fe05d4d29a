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
#include <vector>

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

// The features kernels may use: what CPUID reports, less any hidden by hide_cpu_features.
const CpuFeatures& cpu_features();
const CpuFeatures& detected_cpu_features();  // what CPUID reports

// Every flag of CpuFeatures by its Python name ("avx512_bf16"), for the bindings and hide_cpu_features.
struct CpuFeatureName {
  const char* name;
  bool CpuFeatures::*flag;
};
extern const CpuFeatureName kCpuFeatureNames[];
extern const int kNumCpuFeatureNames;

// Hide features from every kernel, so this CPU runs the code an older one would (an AVX-512 CPU
// without BF16 or VNNI, an AVX2-only CPU): the hidden set replaces the previous one; hiding a feature
// hides the ones that imply it (avx512f hides every avx512*; avx2 hides fma and AVX-512 too), and
// the active path is lowered to what is left. Returns "" or the first unknown name (nothing changed).
// Not while kernels run; weight packs made for other features are re-packed by their Python owners.
std::string hide_cpu_features(const std::vector<std::string>& names);

Isa best_isa();               // the widest path cpu_features() allows
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

// Run body(begin, end, state) over [0, n) in chunks of `chunk`, handed out dynamically to `threads`
// OpenMP threads (for tasks of unequal cost); each thread owns one default-constructed State
// (scratch buffers, caches) for all the chunks it runs.
template <class State, class F>
inline void parallel_for_dynamic(int64_t n, int threads, int64_t chunk, F&& body) {
  if (n <= 0) return;
  if (chunk < 1) chunk = 1;
  const int64_t chunks = (n + chunk - 1) / chunk;
  const int nt = int(chunks < threads ? chunks : threads);
  if (nt <= 1) {
    State state;
    body(int64_t(0), n, state);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
  {
    State state;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) body(c * chunk, (c + 1) * chunk < n ? (c + 1) * chunk : n, state);
  }
#else
  State state;
  body(int64_t(0), n, state);
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

// IEEE half <-> float, in software (the scalar path may not assume F16C). Conversion to half rounds
// to nearest-even like torch's cast: >= 65520 in magnitude becomes inf, NaN stays a quiet NaN.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t u;
  if (e == 0x1f) u = sign | 0x7f800000u | (m << 13);
  else if (e != 0) u = sign | ((e + 112) << 23) | (m << 13);
  else {
    float v = float(m) * 5.9604644775390625e-08f;  // m * 2^-24, exact
    std::memcpy(&u, &v, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));  // NaN
  if (mag >= 0x477ff000u) return uint16_t(sign | 0x7c00u);                           // >= 65520: inf
  if (mag >= 0x38800000u) {                                                           // normal half
    const uint32_t r = mag - (uint32_t(127 - 15) << 23);
    return uint16_t(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  // subnormal half: adding 0.5 puts the value's 2^-24 quanta in the low mantissa bits, rounded RNE
  float a;
  std::memcpy(&a, &mag, 4);
  a += 0.5f;
  uint32_t ab;
  std::memcpy(&ab, &a, 4);
  return uint16_t(sign | (ab - 0x3f000000u));
}

}  // namespace bs
