// Run-time CPU feature detection and the instruction-set switch (BERTSILICON_ISA / set_isa).
#include <cpuid.h>

#include "common.h"

namespace bs {

static CpuFeatures detect() {
  CpuFeatures f;
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512_vnni = __builtin_cpu_supports("avx512vnni");
  // Leaves gcc's builtin does not cover everywhere: read CPUID directly. __builtin_cpu_supports
  // already checked that the OS saves the AVX/AVX-512 state (XCR0) for the flags above.
  unsigned a, b, c, d;
  if (__get_cpuid_count(1, 0, &a, &b, &c, &d)) f.f16c = (c >> 29) & 1;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    f.avx512_bf16 = f.avx512f && ((a >> 5) & 1);
    f.avx_vnni = f.avx2 && ((a >> 4) & 1);
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
    f.amx_int8 = (d >> 25) & 1;
  }
  return f;
}

const CpuFeatureName kCpuFeatureNames[] = {
    {"avx2", &CpuFeatures::avx2},           {"fma", &CpuFeatures::fma},
    {"f16c", &CpuFeatures::f16c},           {"avx512f", &CpuFeatures::avx512f},
    {"avx512bw", &CpuFeatures::avx512bw},   {"avx512vl", &CpuFeatures::avx512vl},
    {"avx512dq", &CpuFeatures::avx512dq},   {"avx512_vnni", &CpuFeatures::avx512_vnni},
    {"avx512_bf16", &CpuFeatures::avx512_bf16}, {"avx_vnni", &CpuFeatures::avx_vnni},
    {"amx_tile", &CpuFeatures::amx_tile},   {"amx_int8", &CpuFeatures::amx_int8},
    {"amx_bf16", &CpuFeatures::amx_bf16},
};
const int kNumCpuFeatureNames = int(sizeof(kCpuFeatureNames) / sizeof(kCpuFeatureNames[0]));

const CpuFeatures& detected_cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

static CpuFeatures& usable_features() {
  static CpuFeatures f = detected_cpu_features();
  return f;
}

const CpuFeatures& cpu_features() { return usable_features(); }

// The widest path whose target attributes (isa_instances.h) f allows: both vector paths are compiled
// with avx2, fma and f16c.
static Isa isa_of(const CpuFeatures& f) {
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  if (avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) return Isa::Avx512;
  return avx2 ? Isa::Avx2 : Isa::Scalar;
}

Isa best_isa() { return isa_of(cpu_features()); }

static Isa g_isa = isa_of(detected_cpu_features());
Isa active_isa() { return g_isa; }
void set_isa(Isa isa) { g_isa = isa; }

std::string hide_cpu_features(const std::vector<std::string>& names) {
  CpuFeatures f = detected_cpu_features();
  for (const std::string& name : names) {
    const CpuFeatureName* hit = nullptr;
    for (int i = 0; i < kNumCpuFeatureNames; ++i)
      if (name == kCpuFeatureNames[i].name) hit = &kCpuFeatureNames[i];
    if (!hit) return name;
    f.*(hit->flag) = false;
  }
  // What a CPU without the hidden features would also lack: every AVX-512 extension needs avx512f,
  // AVX-512 and FMA/VNNI code here needs avx2 (and AVX2 code needs fma).
  if (!f.avx2) f.fma = f.avx_vnni = f.avx512f = false;
  if (!f.avx512f) f.avx512bw = f.avx512vl = f.avx512dq = f.avx512_vnni = f.avx512_bf16 = false;
  usable_features() = f;
  if (int(g_isa) > int(isa_of(f))) g_isa = isa_of(f);
  return "";
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace bs
