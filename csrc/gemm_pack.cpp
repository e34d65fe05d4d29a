// Weight packing of the GEMM family (gemm.cpp runs the packed panels): which layout each instruction-set
// path uses (gemm_pack_kind, gemm_kind_runs_here), its size and the packing itself. Layouts: gemm_common.h,
// PackKind. The u8 x s8 layouts append comp[n] = 128 sum_k w[n, k] (int32, wrapping like the accumulator);
// u8s7x16 takes weights in [-63, 63] only (gemm.cpp's header comment has the arithmetic).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "gemm.h"

namespace bs {
// -------------------------------------------------------------------------------------------- //
// Packing                                                                                       //
// -------------------------------------------------------------------------------------------- //
int64_t gemm_packed_bytes(PackKind kind, int64_t N, int64_t K) {
  const PackInfo p = pack_info(kind);
  if (kind == PackKind::Raw) return 0;
  const int64_t np = ceil_div(N, p.nr) * p.nr, kp = ceil_div(K, p.group) * p.group;
  return np * kp * p.elem_bytes + (p.comp ? np * 4 : 0);
}

template <class Src, class Dst, class Conv>
static void pack_panels(const Src* w, int64_t N, int64_t K, Dst* dst, int nr, int group, int threads,
                        Conv conv) {
  const int64_t steps = ceil_div(K, group), panels = ceil_div(N, nr);
  parallel_for(panels, threads, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      Dst* panel = dst + p * steps * nr * group;
      // 16 k-steps at a time: the 16 x nr x group destination block (4 KB at nr 64) stays in L1
      // while each of the nr source rows contributes 16 x group consecutive values.
      for (int64_t s0 = 0; s0 < steps; s0 += 16) {
        const int64_t s1 = std::min<int64_t>(steps, s0 + 16);
        const int64_t full = std::min<int64_t>(s1, K / group);  // steps with no k >= K
        for (int c = 0; c < nr; ++c) {
          const int64_t n = p * nr + c;
          Dst* d = panel + c * group;
          if (n >= N) {
            for (int64_t s = s0; s < s1; ++s)
              for (int g = 0; g < group; ++g) d[s * nr * group + g] = Dst(0);
            continue;
          }
          const Src* row = w + n * K;
          for (int64_t s = s0; s < full; ++s)
            for (int g = 0; g < group; ++g) d[s * nr * group + g] = conv(row[s * group + g]);
          for (int64_t s = std::max(s0, full); s < s1; ++s)
            for (int g = 0; g < group; ++g) {
              const int64_t k = s * group + g;
              d[s * nr * group + g] = k < K ? conv(row[k]) : Dst(0);
            }
        }
      }
    }
  });
}

bool fits_7bit(const int8_t* __restrict w, int64_t n) {  // restrict: vectorises
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (w[i] > kU8S7MaxWeight) | (w[i] < -kU8S7MaxWeight);
  return !bad;
}

static int32_t row_sum(const int8_t* __restrict row, int64_t K) {  // restrict: vectorises
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) s += row[k];
  return s;
}

void gemm_pack(PackKind kind, const void* w, ElemType wt, int64_t N, int64_t K, void* dst, int threads) {
  const PackInfo p = pack_info(kind);
  switch (kind) {
    case PackKind::F32x64:
    case PackKind::F32x16:
      if (wt == ElemType::F32)
        pack_panels(static_cast<const float*>(w), N, K, static_cast<float*>(dst), p.nr, p.group, threads,
                    [](float v) { return v; });
      else
        pack_panels(static_cast<const uint16_t*>(w), N, K, static_cast<float*>(dst), p.nr, p.group, threads,
                    [](uint16_t v) { return bf16_to_f32(v); });
      break;
    case PackKind::Bf16x64:
      if (K % p.group == 0)  // whole 32-bit groups: move them as such (rows stay 4-byte aligned)
        pack_panels(static_cast<const uint32_t*>(w), N, K / p.group, static_cast<uint32_t*>(dst), p.nr, 1, threads,
                    [](uint32_t v) { return v; });
      else
        pack_panels(static_cast<const uint16_t*>(w), N, K, static_cast<uint16_t*>(dst), p.nr, p.group, threads,
                    [](uint16_t v) { return v; });
      break;
    case PackKind::U8S8x64:
    case PackKind::U8S7x16: {
      const int8_t* wq = static_cast<const int8_t*>(w);
      if (kind == PackKind::U8S7x16 && !fits_7bit(wq, N * K))
        throw std::invalid_argument("int8 weight has values outside [-" + std::to_string(kU8S7MaxWeight) + ", " +
                                    std::to_string(kU8S7MaxWeight) + "]: the u8s7x16 layout takes 7-bit weights only");
      if (K % p.group == 0)
        pack_panels(static_cast<const uint32_t*>(w), N, K / p.group, static_cast<uint32_t*>(dst), p.nr, 1, threads,
                    [](uint32_t v) { return v; });
      else
        pack_panels(wq, N, K, static_cast<int8_t*>(dst), p.nr, p.group, threads, [](int8_t v) { return v; });
      const int64_t np = ceil_div(N, p.nr) * p.nr;
      int32_t* comp = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(dst) + gemm_packed_bytes(kind, N, K) - np * 4);
      parallel_for(np, threads, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)  // wraps like the accumulator (see header comment)
          comp[n] = n < N ? int32_t(uint32_t(row_sum(wq + n * K, K)) * 128u) : 0;
      });
      break;
    }
    case PackKind::S16x16:
    case PackKind::S16x64:
      pack_panels(static_cast<const int8_t*>(w), N, K, static_cast<int16_t*>(dst), p.nr, p.group, threads,
                  [](int8_t v) { return int16_t(v); });
      break;
    default:
      break;
  }
}

PackKind gemm_pack_kind(ElemType t, bool weight_7bit) {
  const CpuFeatures& f = cpu_features();
  const Isa isa = active_isa();
  if (isa == Isa::Scalar) return PackKind::Raw;
  switch (t) {
    case ElemType::F32: return isa == Isa::Avx512 ? PackKind::F32x64 : PackKind::F32x16;
    case ElemType::BF16:
      if (isa == Isa::Avx512) return f.avx512_bf16 ? PackKind::Bf16x64 : PackKind::F32x64;
      return PackKind::F32x16;
    default:  // int8: VNNI where present; AVX2: u8 x s7 for 7-bit weights; else the int16 pair kernels
      if (isa == Isa::Avx512) return f.avx512_vnni ? PackKind::U8S8x64 : PackKind::S16x64;
      return weight_7bit ? PackKind::U8S7x16 : PackKind::S16x16;
  }
}

bool gemm_kind_runs_here(PackKind kind) {
  const CpuFeatures& f = cpu_features();
  const bool avx512 = best_isa() == Isa::Avx512, avx2 = best_isa() >= Isa::Avx2;
  switch (kind) {
    case PackKind::F32x64:
    case PackKind::S16x64: return avx512;
    case PackKind::Bf16x64: return avx512 && f.avx512_bf16;
    case PackKind::U8S8x64: return avx512 && f.avx512_vnni;
    case PackKind::F32x16:
    case PackKind::S16x16:
    case PackKind::U8S7x16: return avx2;
    default: return true;
  }
}

}  // namespace bs
