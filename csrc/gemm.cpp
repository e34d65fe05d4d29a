// The GEMM family: out[M, N] = act(A[M, K] @ B[N, K]^T (+ bias)) for fp32, bf16 and int8 inputs.
//
// Structure (one driver, one register-blocked micro-kernel per instruction set, templated on the
// multiply-accumulate instruction):
//   * B (the weight, nn.Linear layout [N, K]) is packed once (gemm_pack.cpp) into panels of NR columns (see
//     gemm_common.h, PackKind): at k-step s one 64-byte load gives 16 columns x G k-values.
//   * A (activations) is read in place as 32-bit groups of G values (fp32: 1, bf16 pair: 2,
//     u8 quad: 4); bf16 with odd K, fp32 activations on bf16 weights (rounded to bf16) and int8 are
//     first copied to a padded (and, for int8, shifted or widened) buffer — M x K elements, negligible
//     next to the 2 M N K operations. int8_linear_dynamic quantizes fp32/bf16 rows straight into it.
//   * Micro-kernel: MR = 6 rows x NR columns of accumulators in registers (AVX-512: 6 x 4 zmm = 24
//     accumulators, NR 64; AVX2: 6 x 2 ymm = 12, NR 16). Per k-step it loads NR/16 B vectors and
//     broadcasts 6 A groups: 24 (resp. 12) multiply-accumulates per 10 (resp. 8) loads.
//   * K is cut into k-blocks; for one task (a group of row-blocks x a group of panels, see Blocking) the
//     rows run k-block by k-block, so a panel's k-block (16 KB) stays in L1 while the rows use it. A tile's
//     running sum waits between k-blocks in an L1 scratch tile; after the last k-block the epilogue
//     (dequant, bias, activation, rounding to the output type) runs on the registers before the
//     tile's single store: the output is written once and never re-read.
//   * Threads split (panel, 96-row group) tasks, panel-major, so each thread keeps its own B panels.
// FLOPs: 2 M N K. Bytes: A M K e + B N K e (+ packing N K e per unpacked call) + out M N o.
//
// Multiply-accumulate per k-step and lane (acc: 16 fp32 / int32 lanes):
//   fp32  (G 1): acc += a * b                                   vfmadd231ps
//   bf16  (G 2): acc += a0 b0 + a1 b1 (exact products, fp32 sum)  vdpbf16ps
//   int8  (G 4): acc += sum_j (a_j + 128) b_j  (u8 x s8)          vpdpbusd, then acc -= comp[n]
//                with comp[n] = 128 sum_k b[n, k] precomputed at packing; int32 wrap-around
//                arithmetic makes the result exact whenever the true sum fits int32.
//   int8 w/o VNNI (G 2): acc += a0 b0 + a1 b1 on sign-extended int16  vpmaddwd + vpaddd (zmm on
//                AVX-512BW, as on Skylake-SP: 2x the fp32 kernel's multiplies per instruction; ymm on AVX2): the
//                pair sum is at most 2 * 128 * 128 = 32768 in int32, so nothing saturates (the
//                vpmaddubsw path would saturate its int16 pair sums at 32767).
//   int8 AVX2, 7-bit weights (G 4): the u8 x s8 layout of VNNI, 16 columns wide, weights |w| <= 63:
//                p = vpmaddubsw(a + 128, w)   int16 lanes: p = (a0 + 128) w0 + (a1 + 128) w1
//                acc += vpmaddwd(p, 1)        int32 lanes: p_lo + p_hi (the 4 products of one group)
//                then acc -= comp[n] as above. Cannot saturate: a + 128 is in [1, 255] (quantized
//                activations are clamped to +-127) and |w| <= 63 (gemm_pack refuses anything wider), so
//                |p| <= 2 * 255 * 63 = 32130 < 32767; vpmaddwd's pair sum is exact in int32. 32 products
//                in 3 instructions (fp32 FMA: 8 in 1; the int16 pairs: 16 in 2).
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <vector>

#include "gemm.h"
#include "simd.h"

namespace bs {

// -------------------------------------------------------------------------------------------- //
// Tile arguments shared by every micro-kernel                                                   //
// -------------------------------------------------------------------------------------------- //
struct Tiles {
  const uint32_t* a;     // A as 32-bit groups, row stride lda groups
  int64_t lda;
  const int32_t* b;      // packed panels; one k-step of a panel = nr 32-bit lanes
  int64_t M, N, steps;
  const int32_t* comp;   // int8 VNNI: 128 * column sums; else null
  const float* x_scale;  // int8: per row [M]; else null
  const float* w_scale;  // int8: per column [N]; else null
  Epilogue ep;
};

// How one instruction set's tiles walk the caches: the loop nest of run_tiles. A task is (a group of
// `group_blocks` row-blocks of MR rows, a group of up to `group_panels` panels); inside it K runs in
// k-blocks of `block_steps` k-steps, and for each k-block every panel of the task meets every row-block:
//   for k-block:  [copy A's k-block of the task's rows to a contiguous buffer, if pack_a]
//     for panel:  for row-block:  tile (B's k-block of the panel stays in L1 while the rows use it)
// Each tile carries its running sum between k-blocks in a scratch tile (MR x nr fp32 / int32) and runs
// the epilogue on the registers after the last k-block. For fp32 the blocking also bounds the rounding
// error: it grows like block_steps + K / block_steps instead of K (torch's blocked GEMMs do the same).
//   * AVX-512 (nr 64): one panel per task, 64-step k-blocks (16 KB of B), 96 rows; A read in place.
//   * AVX2 (nr 16): four times the panels for the same columns, so A would be re-read from memory four
//     times as often, and rows of A whose stride is a multiple of 1-4 KB (K = 768, 1536, 3072) fall into a
//     few L1 sets and evict each other. So a task takes up to 8 panels (128 columns) per pass over A, and
//     each k-block of A (72 rows x 256 steps, 72 KB, an L2-sized block) is first copied to a buffer whose row
//     stride is 256 + 16 groups (rows spread over all L1 sets); B's k-block is 256 x 16 x 4 = 16 KB (L1).
struct Blocking {
  int64_t block_steps;  // k-steps per k-block
  int group_blocks;     // row-blocks (of MR rows) per task
  int group_panels;     // panels per task, at most (fewer when that leaves too few tasks for the threads)
  bool pack_a;          // copy each k-block of A to a contiguous buffer with a padded row stride first
};
constexpr Blocking kAvx512Blocking{64, 16, 1, false};
constexpr Blocking kAvx2Blocking{256, 12, 8, true};
constexpr int64_t kPackedRowPad = 16;  // groups added to the packed A block's row stride

// -------------------------------------------------------------------------------------------- //
// AVX-512: 6 x 64 tile. The whole AVX-512 GEMM family is compiled with one target that includes //
// VNNI and BF16, so one templated micro-kernel serves the fp32, bf16 (vdpbf16ps), int8 (vpdpbusd) //
// and int8-without-VNNI (vpmaddwd) instantiations; only the instantiation whose instructions      //
// CPUID reports is ever entered (gemm_kind_runs_here). The fp32 one is FMA intrinsics only.       //
// -------------------------------------------------------------------------------------------- //
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c,avx512vnni,avx512bf16")
namespace gemm512 {
using Vec = VecAvx512;
using VI = __m512i;
constexpr int NV = 4;
#include "vmath_impl.h"

struct MacF32 {
  static constexpr int kMaxRows = 6;
  static BS_INLINE __m512 mac(__m512 acc, VI a, VI b) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc);
  }
  static BS_INLINE __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
};
struct MacBf16 : MacF32 {
  static BS_INLINE __m512 mac(__m512 acc, VI a, VI b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
};
struct MacU8S8 {  // exact integer sums (int32 lanes carried in __m512)
  static constexpr int kMaxRows = 6;
  static BS_INLINE __m512 mac(__m512 acc, VI a, VI b) {
    return _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc), a, b));
  }
  static BS_INLINE __m512 add(__m512 a, __m512 b) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
};
struct MacS16 : MacU8S8 {  // int16 pairs (AVX512BW vpmaddwd, no VNNI): exact, like gemm256::MacS16
  static constexpr int kMaxRows = 4;  // 16 acc + 4 B + broadcasts + temps in 32 zmm
  static BS_INLINE __m512 mac(__m512 acc, VI a, VI b) { return add(acc, _mm512_castsi512_ps(_mm512_madd_epi16(a, b))); }
};

static BS_INLINE VI load_b(const int32_t* p) { return _mm512_loadu_si512(p); }
static BS_INLINE VI bcast(uint32_t g) { return _mm512_set1_epi32(int32_t(g)); }
static BS_INLINE __m512 sub_i32(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
static BS_INLINE __m512 i32_to_f32(__m512 a) { return _mm512_cvtepi32_ps(_mm512_castps_si512(a)); }

static BS_INLINE void store_out(const Epilogue& ep, int64_t i, __m512 y, int n) {
  switch (ep.out_type) {
    case OutType::BF16: Vec::storen(static_cast<bf16*>(ep.out) + i, y, n); break;
    case OutType::F16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(ep.out) + i, Vec::first(n),
                               _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: Vec::storen(static_cast<float*>(ep.out) + i, y, n);  // F32, and S32 (int bits in y)
  }
}

#include "gemm_tile_impl.h"

// y = act(y + bias) in place on rows [m0, m1) of a contiguous [M, N] fp32 or bf16 tensor.
static void epilogue_rows(void* y, ElemType yt, int64_t m0, int64_t m1, int64_t N, const Epilogue& ep) {
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t n = 0; n < N; n += 16) {
      const int vc = int(std::min<int64_t>(16, N - n));
      const int64_t i = m * N + n;
      F v = yt == ElemType::F32 ? Vec::loadn(static_cast<const float*>(y) + i, vc)
                                : Vec::loadn(static_cast<const bf16*>(y) + i, vc);
      if (ep.bias) v = Vec::add(v, Vec::loadn(ep.bias + n, vc));
      store_out(ep, i, activate(v, ep.act), vc);
    }
}

// fp32 rows -> bf16 rows (round to nearest even, as torch's cast), each padded with zeros to kp
// values: the A operand of the bf16 kernel when the activations are fp32 (rows [m0, m1)).
static void narrow_rows_bf16(const float* x, int64_t m0, int64_t m1, int64_t K, int64_t kp, bf16* dst) {
  for (int64_t m = m0; m < m1; ++m) {
    for (int64_t k = 0; k < kp; k += 16) {
      const int n = int(std::min<int64_t>(16, kp - k)), live = int(std::max<int64_t>(0, std::min<int64_t>(16, K - k)));
      Vec::storen(dst + m * kp + k, Vec::loadn(x + m * K + k, live), n);  // lanes >= live load as 0
    }
  }
}
}  // namespace gemm512
#pragma GCC pop_options

// -------------------------------------------------------------------------------------------- //
// AVX2: 6 x 16 tile                                                                             //
// -------------------------------------------------------------------------------------------- //
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace gemm256 {
using Vec = VecAvx2;
using VI = __m256i;
constexpr int NV = 2;
#include "vmath_impl.h"

struct MacF32 {
  static constexpr int kMaxRows = 6;
  static BS_INLINE __m256 mac(__m256 acc, VI a, VI b) {
    return _mm256_fmadd_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), acc);
  }
  static BS_INLINE __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
};
struct MacS16 {  // int16 pairs: vpmaddwd never saturates (|a0 b0 + a1 b1| <= 2^15 fits its int32 lanes)
  static constexpr int kMaxRows = 4;  // see gemm_tile_impl.h; 6 spilled ~195 vector ops to the stack
  static BS_INLINE __m256 add(__m256 a, __m256 b) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)));
  }
  static BS_INLINE __m256 mac(__m256 acc, VI a, VI b) { return add(acc, _mm256_castsi256_ps(_mm256_madd_epi16(a, b))); }
};
struct MacU8S7 : MacS16 {  // u8 x 7-bit s8 quads: vpmaddubsw cannot saturate (see the header comment)
  static constexpr int kMaxRows = 3;  // 6 acc + 2 B + ones + 3 temps: at 4 rows GCC spilled an accumulator per k-step
  static BS_INLINE __m256 mac(__m256 acc, VI a, VI b) {
    const VI pairs = _mm256_maddubs_epi16(a, b);  // int16: (a0 + 128) w0 + (a1 + 128) w1, |.| <= 32130
    return add(acc, _mm256_castsi256_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1))));
  }
};

static BS_INLINE VI load_b(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static BS_INLINE VI bcast(uint32_t g) { return _mm256_set1_epi32(int32_t(g)); }
static BS_INLINE __m256 sub_i32(__m256 a, __m256 b) {
  return _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)));
}
static BS_INLINE __m256 i32_to_f32(__m256 a) { return _mm256_cvtepi32_ps(_mm256_castps_si256(a)); }

static BS_INLINE void store_out(const Epilogue& ep, int64_t i, __m256 y, int n) {
  switch (ep.out_type) {
    case OutType::BF16: Vec::storen(static_cast<bf16*>(ep.out) + i, y, n); break;
    case OutType::F16: {
      alignas(16) uint16_t tmp[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(tmp), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      std::memcpy(static_cast<uint16_t*>(ep.out) + i, tmp, size_t(n) * 2);
      break;
    }
    default: Vec::storen(static_cast<float*>(ep.out) + i, y, n);  // F32, and S32 (int bits in y)
  }
}

#include "gemm_tile_impl.h"
}  // namespace gemm256
#pragma GCC pop_options

// -------------------------------------------------------------------------------------------- //
// Driver                                                                                        //
// -------------------------------------------------------------------------------------------- //
using TileFn = void (*)(const Tiles&, const uint32_t* a, int64_t lda, int64_t m0, int64_t panel, int64_t s0,
                        int64_t s1, float* partial);
constexpr int MR = 6;

template <template <class, int> class Tile, class Mac>
struct TileTable {
  static constexpr TileFn fns[MR + 1] = {nullptr,         Tile<Mac, 1>::run, Tile<Mac, 2>::run, Tile<Mac, 3>::run,
                                         Tile<Mac, 4>::run, Tile<Mac, 5>::run, Tile<Mac, 6>::run};
};

template <class Mac, int R> struct Avx512Tile {
  static void run(const Tiles& t, const uint32_t* a, int64_t lda, int64_t m, int64_t p, int64_t s0, int64_t s1,
                  float* partial) {
    gemm512::tile<Mac, R>(t, a, lda, m, p, s0, s1, partial);
  }
};
template <class Mac, int R> struct Avx2Tile {
  static void run(const Tiles& t, const uint32_t* a, int64_t lda, int64_t m, int64_t p, int64_t s0, int64_t s1,
                  float* partial) {
    gemm256::tile<Mac, R>(t, a, lda, m, p, s0, s1, partial);
  }
};

struct TileSet {
  const TileFn* fns;  // by rows (1..MR)
  Blocking blocking;
};

// Tasks = (row group, panel group), panel-group-major so each thread keeps its panels; inside a task the
// loop nest of Blocking. Panel groups shrink (down to one panel) until there are 4 tasks per thread, so
// small M still spreads over the threads.
static void run_tiles(const Tiles& t, int64_t nr, const TileSet& set, int threads) {
  const Blocking& bk = set.blocking;
  const int64_t group_rows = int64_t(bk.group_blocks) * MR;
  const int64_t groups = ceil_div(t.M, group_rows), panels = ceil_div(t.N, nr);
  const int64_t per_group = std::clamp<int64_t>(groups * panels / (4 * int64_t(std::max(threads, 1))), 1,
                                                bk.group_panels);
  const int64_t panel_groups = ceil_div(panels, per_group);
  const int64_t lda_packed = bk.block_steps + kPackedRowPad;
  parallel_for(groups * panel_groups, threads, 1, [&](int64_t begin, int64_t end) {
    // scratch: the running-sum tiles, then the copied A block; uninitialised (each is written before read)
    const size_t partial_len = size_t(group_rows * per_group * nr);
    std::unique_ptr<float[]> scratch(new float[partial_len + (bk.pack_a ? size_t(group_rows * lda_packed) : 0) + 16]);
    float* partial = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.get()) + 63) & ~uintptr_t(63));
    uint32_t* a_block = reinterpret_cast<uint32_t*>(partial + partial_len);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t p0 = (i / groups) * per_group, p1 = std::min(panels, p0 + per_group);
      const int64_t g0 = (i % groups) * group_rows, g1 = std::min(t.M, g0 + group_rows);
      for (int64_t s0 = 0; s0 < t.steps || s0 == 0; s0 += bk.block_steps) {
        const int64_t s1 = std::min(t.steps, s0 + bk.block_steps);
        const uint32_t* a = t.a + g0 * t.lda + s0;
        int64_t lda = t.lda;
        if (bk.pack_a) {
          for (int64_t m = g0; m < g1; ++m)
            std::memcpy(a_block + (m - g0) * lda_packed, t.a + m * t.lda + s0, size_t(s1 - s0) * 4);
          a = a_block, lda = lda_packed;
        }
        for (int64_t p = p0; p < p1; ++p)
          for (int64_t m0 = g0; m0 < g1; m0 += MR)
            set.fns[std::min<int64_t>(MR, g1 - m0)](t, a + (m0 - g0) * lda, lda, m0, p, s0, s1,
                                                    partial + ((p - p0) * group_rows + (m0 - g0)) * nr);
      }
    }
  });
}

static TileSet tiles_for(PackKind kind) {
  switch (kind) {
    case PackKind::F32x64: return {TileTable<Avx512Tile, gemm512::MacF32>::fns, kAvx512Blocking};
    case PackKind::Bf16x64: return {TileTable<Avx512Tile, gemm512::MacBf16>::fns, kAvx512Blocking};
    case PackKind::U8S8x64: return {TileTable<Avx512Tile, gemm512::MacU8S8>::fns, kAvx512Blocking};
    case PackKind::S16x64: return {TileTable<Avx512Tile, gemm512::MacS16>::fns, kAvx512Blocking};
    case PackKind::F32x16: return {TileTable<Avx2Tile, gemm256::MacF32>::fns, kAvx2Blocking};
    case PackKind::S16x16: return {TileTable<Avx2Tile, gemm256::MacS16>::fns, kAvx2Blocking};
    case PackKind::U8S7x16: return {TileTable<Avx2Tile, gemm256::MacU8S7>::fns, kAvx2Blocking};
    default: return {nullptr, {}};
  }
}

// A rows copied to K padded to the group, converted by conv; parallel over rows. The buffer is left
// uninitialised (every element is written) and the row loop works on restrict-qualified rows so it
// vectorises (int8 sources alias everything otherwise).
template <class Src, class Dst, class Conv>
static void convert_row(const Src* __restrict src, Dst* __restrict dst, int64_t K, int64_t kp, Conv conv) {
  for (int64_t k = 0; k < K; ++k) dst[k] = conv(src[k]);
  for (int64_t k = K; k < kp; ++k) dst[k] = Dst(0);
}

template <class Src, class Conv>
static std::unique_ptr<uint32_t[]> widen_rows(const Src* x, int64_t M, int64_t K, int group, int threads, Conv conv) {
  using Dst = decltype(conv(x[0]));
  const int64_t kp = ceil_div(K, group) * group;
  std::unique_ptr<uint32_t[]> buf(new uint32_t[size_t(M * kp * int64_t(sizeof(Dst)) / 4 + 1)]);
  Dst* d = reinterpret_cast<Dst*>(buf.get());
  parallel_for(M, threads, std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(kp, 1)), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) convert_row(x + m * K, d + m * kp, K, kp, conv);
  });
  return buf;
}

// -------------------------------------------------------------------------------------------- //
// Scalar path (no packing): double accumulation for floats, int64 for int8.                     //
// -------------------------------------------------------------------------------------------- //
static void linear_scalar(const void* x, ElemType xt, const void* w, int64_t M, int64_t N, int64_t K,
                          const Epilogue& ep, int threads) {
  auto val = [xt](const void* p, int64_t i) -> double {
    return xt == ElemType::F32 ? static_cast<const float*>(p)[i] : bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  };
  parallel_for(M, threads, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0.0;
        for (int64_t k = 0; k < K; ++k) s += val(x, m * K + k) * val(w, n * K + k);
        if (ep.bias) s += ep.bias[n];
        store_scalar(ep.out, m * ep.ldo + n, activate_scalar(s, ep.act), ep.out_type);
      }
  });
}

static void int8_scalar(const int8_t* x, const int8_t* w, int64_t M, int64_t N, int64_t K, const float* xs,
                        const float* ws, const Epilogue& ep, int threads) {
  parallel_for(M, threads, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        int64_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += int32_t(x[m * K + k]) * int32_t(w[n * K + k]);
        if (ep.out_type == OutType::S32) {
          static_cast<int32_t*>(ep.out)[m * ep.ldo + n] = int32_t(s);
          continue;
        }
        double y = double(s) * double(xs[m]) * double(ws[n]);
        if (ep.bias) y += ep.bias[n];
        store_scalar(ep.out, m * ep.ldo + n, activate_scalar(y, ep.act), ep.out_type);
      }
  });
}

static void check_kind(PackKind kind) {
  if (!gemm_kind_runs_here(kind))
    throw std::invalid_argument("packed weight layout " + std::to_string(int(kind)) + " needs instructions this CPU lacks");
}

// -------------------------------------------------------------------------------------------- //
// Entry points                                                                                  //
// -------------------------------------------------------------------------------------------- //
void linear(PackKind kind, const void* x, ElemType xt, int64_t M, int64_t K, const void* w, int64_t N,
            const Epilogue& ep, int threads) {
  check_kind(kind);
  if (kind == PackKind::Raw) return linear_scalar(x, xt, w, M, N, K, ep, threads);
  const PackInfo p = pack_info(kind);
  Tiles t{};
  t.M = M, t.N = N, t.steps = ceil_div(K, p.group), t.b = static_cast<const int32_t*>(w), t.ep = ep;
  std::unique_ptr<uint32_t[]> buf;
  if (kind == PackKind::Bf16x64 && xt == ElemType::F32) {  // fp32 activations, bf16 weights: round x once
    const int64_t kp = t.steps * 2;
    buf.reset(new uint32_t[size_t(M * t.steps + 1)]);
    parallel_for(M, threads, std::max<int64_t>(1, (1 << 16) / kp), [&](int64_t m0, int64_t m1) {
      gemm512::narrow_rows_bf16(static_cast<const float*>(x), m0, m1, K, kp, reinterpret_cast<bf16*>(buf.get()));
    });
    t.a = buf.get(), t.lda = t.steps;
  } else if (xt == ElemType::F32) {
    t.a = static_cast<const uint32_t*>(x), t.lda = K;
  } else if (kind == PackKind::Bf16x64 && K % 2 == 0) {
    t.a = static_cast<const uint32_t*>(x), t.lda = K / 2;  // bf16 pairs read in place
  } else if (kind == PackKind::Bf16x64) {
    buf = widen_rows(static_cast<const uint16_t*>(x), M, K, 2, threads, [](uint16_t v) { return v; });
    t.a = buf.get(), t.lda = t.steps;
  } else {  // bf16 activations on an fp32 kernel: widen (exact)
    buf = widen_rows(static_cast<const uint16_t*>(x), M, K, 1, threads, [](uint16_t v) { return bf16_to_f32(v); });
    t.a = buf.get(), t.lda = K;
  }
  run_tiles(t, p.nr, tiles_for(kind), threads);
}

// The u8 x s8 kernels' compensation 128 * sum_k w[n, k], appended to the packed weight.
static const int32_t* u8_comp(PackKind kind, const void* w, int64_t N, int64_t K) {
  const PackInfo p = pack_info(kind);
  return reinterpret_cast<const int32_t*>(static_cast<const uint8_t*>(w) +
                                          gemm_packed_bytes(kind, N, K) - ceil_div(N, p.nr) * p.nr * 4);
}

void int8_linear(PackKind kind, const int8_t* x, int64_t M, int64_t K, const void* w, int64_t N,
                 const float* x_scale, const float* w_scale, const Epilogue& ep, int threads) {
  check_kind(kind);
  if (kind == PackKind::Raw)
    return int8_scalar(x, static_cast<const int8_t*>(w), M, N, K, x_scale, w_scale, ep, threads);
  const PackInfo p = pack_info(kind);
  Tiles t{};
  t.M = M, t.N = N, t.steps = ceil_div(K, p.group), t.b = static_cast<const int32_t*>(w), t.ep = ep;
  t.x_scale = x_scale, t.w_scale = w_scale;
  std::unique_ptr<uint32_t[]> buf;
  if (p.comp) {  // u8 x s8: activations shifted to u8
    buf = widen_rows(x, M, K, 4, threads, [](int8_t v) { return uint8_t(uint8_t(v) ^ 0x80u); });
    t.comp = u8_comp(kind, w, N, K);
  } else {
    buf = widen_rows(x, M, K, 2, threads, [](int8_t v) { return int16_t(v); });
  }
  t.a = buf.get(), t.lda = t.steps;
  run_tiles(t, p.nr, tiles_for(kind), threads);
}

// Quantize each row of x (optionally times inv_smooth first) as quantize_row does, straight into the
// GEMM's A operand: on the u8 x s8 paths the row is stored shifted (q + 128 as uint8, padded to the k-group)
// and read by the tiles in place; the int16 path widens the int8 rows once more. One pass over x
// instead of quantize's, then the int8 copy and its conversion.
void int8_linear_dynamic(PackKind kind, const void* x, ElemType xt, int64_t M, int64_t K, const float* inv_smooth,
                         const void* w, int64_t N, const float* w_scale, float* x_scale, const Epilogue& ep,
                         int threads) {
  check_kind(kind);
  const PackInfo p = pack_info(kind);
  const bool shifted = p.comp;  // u8 x s8 kernels: activations stored as q + 128
  const int64_t kp = kind == PackKind::Raw ? K : ceil_div(K, p.group) * p.group;
  const uint8_t flip = shifted ? 0x80 : 0x00;  // padding: k >= K meets zero weights, any value will do
  std::unique_ptr<uint32_t[]> qbuf(new uint32_t[size_t(M * kp / 4 + 1)]);
  int8_t* q = reinterpret_cast<int8_t*>(qbuf.get());
  const size_t xe = xt == ElemType::F32 ? 4 : 2;
  parallel_for(M, threads, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t m0, int64_t m1) {
    std::vector<float> smoothed(inv_smooth ? size_t(K) : 0);
    for (int64_t m = m0; m < m1; ++m) {
      const void* row = static_cast<const uint8_t*>(x) + size_t(m * K) * xe;
      ElemType rt = xt;
      if (inv_smooth) {  // x * inv_smooth in fp32, one rounding (as torch's x * inv_smooth)
        float* __restrict sm = smoothed.data();
        if (xt == ElemType::F32)
          for (int64_t k = 0; k < K; ++k) sm[k] = static_cast<const float*>(row)[k] * inv_smooth[k];
        else
          for (int64_t k = 0; k < K; ++k) sm[k] = bf16_to_f32(static_cast<const uint16_t*>(row)[k]) * inv_smooth[k];
        row = sm, rt = ElemType::F32;
      }
      x_scale[m] = quantize_row(row, rt, K, q + m * kp, flip);
      std::fill(q + m * kp + K, q + (m + 1) * kp, int8_t(flip));
    }
  });
  if (kind == PackKind::Raw)
    return int8_scalar(q, static_cast<const int8_t*>(w), M, N, K, x_scale, w_scale, ep, threads);
  Tiles t{};
  t.M = M, t.N = N, t.steps = ceil_div(K, p.group), t.b = static_cast<const int32_t*>(w), t.ep = ep;
  t.x_scale = x_scale, t.w_scale = w_scale;
  std::unique_ptr<uint32_t[]> wide;
  if (shifted) {
    t.a = qbuf.get(), t.comp = u8_comp(kind, w, N, K);
  } else {
    wide = widen_rows(q, M, kp, 2, threads, [](int8_t v) { return int16_t(v); });
    t.a = wide.get();
  }
  t.lda = t.steps;
  run_tiles(t, p.nr, tiles_for(kind), threads);
}

// -------------------------------------------------------------------------------------------- //
// Epilogue alone, in place: y = act(y + bias) on [M, N] fp32 or bf16 (after torch's GEMM).      //
// -------------------------------------------------------------------------------------------- //
void epilogue_inplace(void* y, ElemType yt, int64_t M, int64_t N, const float* bias, Activation act, int threads) {
  Epilogue ep{bias, act, yt == ElemType::F32 ? OutType::F32 : OutType::BF16, y, N};
  parallel_for(M, threads, 16, [&](int64_t m0, int64_t m1) {
    if (active_isa() == Isa::Avx512) return gemm512::epilogue_rows(y, yt, m0, m1, N, ep);
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = m * N + n;
        double v = yt == ElemType::F32 ? static_cast<float*>(y)[i] : bf16_to_f32(static_cast<uint16_t*>(y)[i]);
        if (bias) v += bias[n];
        store_scalar(y, i, activate_scalar(v, act), ep.out_type);
      }
  });
}

}  // namespace bs
