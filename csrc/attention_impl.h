// Body of attention (one instance per instruction set; see isa_instances.h): flash-style tiled
// attention with a key-padding mask, online softmax in fp32, no L x L matrix in memory.
//
// For one (sequence b, head h, tile of TILE_Q query rows):
//   keys     = the real keys of b (mask != 0), packed once per (b, h) per thread (layouts below)
//   for each block of TILE_K keys:
//     S  = c Q K^T[:, block],  c = scale * log2 e     [TILE_Q, TILE_K]   (register-blocked 4 x NV vectors)
//     m' = max(m, rowmax S);  P = 2^(S - m');  l = l 2^(m - m') + rowsum P;  O = O 2^(m - m')
//     O += P V[block]                                [TILE_Q, Dp]        (register-blocked 4 x DV vectors)
//   out = O / l                                      (all keys padding: zeros, as reference.attention)
// (2^x instead of e^x: c folds log2 e into the scale.)
//
// Two operand formats (the Dot policy; one kernel body, the policy supplies packing, the dot step
// and the exponentials of a row):
//
// DotF32 (fp32 and bf16 inputs on every ISA; bf16 is widened exactly): fp32 FMAs.
//   Kt [D, nk_pad] fp32 (K transposed, zero-padded)   Vp [nk_pad, Dp] fp32 (zero-padded)
//   Qs = q * c [TILE_Q, Dp] fp32 (c applied to q before the product: one rounding, as before).
//   P stays fp32 in the S buffer.
//
// DotBf16 (bf16 inputs, avx512 instance, CPU with AVX512_BF16): vdpbf16ps, acc += a0 b0 + a1 b1 over
// bf16 pairs in 32-bit lanes (products exact in fp32, sums in fp32).
//   Kp [D2, nk_pad] u32, D2 = ceil(D / 2): lane j of row t = (k[j][2t], k[j][2t+1]), d = D zero (odd D)
//   Vp [nk_pad / 2, Dp] u32: lane d of row t = (v[2t][d], v[2t+1][d]); keys >= nk zero
//   Q2 [TILE_Q, D2] u32: q's own bf16 pairs (not pre-scaled: rounding q * c to bf16 would add an error
//      torch does not have); S = c (Q K^T) is scaled in fp32 as each S vector leaves its accumulator.
//   P  = bf16(2^(S - m')) (round to nearest even, vcvtne2ps2bf16, as FlashAttention and torch's CPU
//      flash kernel), stored as pairs over keys [TILE_Q, TILE_K / 2] u32; an odd vector count of keys
//      is completed with a zero vector (zero P, and Vp is zero there).
//   l  sums the ROUNDED P (one vdpbf16ps of P with ones per 32 keys). Then the weights that multiply V
//      are P~ / sum P~ and sum to 1 exactly (up to fp32 sums): out is a convex combination of the V rows
//      with each weight off by its own rounding, relative error e_j (|e_j| <= 2^-9), minus their weighted
//      mean. Summing the fp32 P instead leaves that mean in: out (1 + mean e) + ..., a bias of up to
//      2^-9 |out| shared by the whole row (a constant V would not come back exactly). Measured against
//      float64 on B 8 H 12 L 512 D 32 (half the rows padded from 384; q, k ~ N(0, 1.5^2)), V ~ N(3, 1)
//      (a shared offset, where the difference shows): rounded-P l max 1.61e-2, rms 4.53e-3, 1.0 % of
//      the outputs not the correctly rounded bf16; fp32-P l 1.83e-2, 4.58e-3, 3.4 %; torch SDPA bf16
//      1.88e-2, 4.59e-3, 3.8 %; DotF32 1.56e-2, 4.53e-3, 0.01 %. V ~ N(0, 1): both l 8e-3, rms 5.1e-4.
//
// Padded keys are skipped entirely (not masked to -inf), so the work is proportional to the real
// key count: FLOPs = 4 * Lq * nk * D per (b, h) (two matmuls), plus Lq * nk exponentials. Instructions
// per 16 keys x 1 query row: DotF32 D + Dp FMAs, DotBf16 D2 + Dp / 2 vdpbf16ps (half), plus the softmax:
// DotF32 ~17 (max, exp2, sum), DotBf16 ~15 (its exp2 takes 2^n in one vscalefps and no upper clamp; plus
// 1/2 convert, 1/2 vdpbf16ps sum and 1 scale). At D 32 the softmax is then ~40 % of the DotBf16 kernel's
// time (perf, one thread, L 512): S and O take 31 % and 26 %.
// Bytes (ideal): read q, k, v once, write out once: (2 Lq + 2 Lk) * D * sizeof(E) per (b, h); the packed
// K and V per (b, h): DotF32 4 nk_pad (D + Dp) bytes, DotBf16 4 nk_pad D2 + 2 nk_pad Dp (about half).
// Shapes: any D (tails handled by zero padding to Dp, a multiple of the vector width); q/k/v/out are
// addressed by element strides (batch, head, row) with a contiguous last dim. dtype fp32 or bf16.
// NaN in a real position of q/k/v propagates like the reference; padded keys cannot contribute NaN.
constexpr int TILE_Q = 32;    // query rows per task
constexpr int TILE_K = 128;   // keys per online-softmax step
constexpr int RB = 4;         // query rows per register block
constexpr int NV = Vec::W == 8 ? 2 : 4;  // key vectors per register block of S (AVX2 has 16 registers)
constexpr int KEY_ALIGN = Vec::W;        // keys are padded to whole vectors
static_assert(TILE_K % (Vec::W * NV) == 0, "TILE_K must be a multiple of the key block");
constexpr float LOG2E = 1.44269504088896341f;

// Per-thread working set; K/V stay packed while consecutive tasks share (b, h).
struct AttnScratch {
  std::vector<float> kt, vp, qs, s, o, m, l;    // DotF32 operands (kt, vp, qs), S / fp32 P, O, m, l
  std::vector<uint32_t> kp2, vp2, q2, p2;       // DotBf16 operands and bf16 P pairs
  std::vector<int64_t> keys;
  int64_t packed_bh = -1;
  int64_t nk = 0, nk_pad = 0;
};

#define BS_AI static inline __attribute__((always_inline))

// fp32 operands: one value per lane, acc += a * b.
struct DotF32 {
  static constexpr int G = 1;  // operand values per 32-bit lane
  using T = float;
  using V = F;
  BS_AI V load(const T* p) { return Vec::load(p); }
  BS_AI V bcast(const T* p) { return Vec::set1(*p); }
  BS_AI F mac(F acc, V b, V a) { return Vec::fmadd(b, a, acc); }
  BS_AI F finish(F acc, F) { return acc; }  // q was scaled before the product

  template <class E>
  static void pack_kv(const E* kb, int64_t k_sl, const E* vb, int64_t v_sl, int64_t D, int64_t Dp, AttnScratch& w) {
    constexpr int W = Vec::W;
    const int64_t nk = w.nk, nk_pad = w.nk_pad;
    w.kt.assign(size_t(D * nk_pad), 0.f);
    w.vp.resize(size_t(nk_pad * Dp));
    for (int64_t jj = 0; jj < nk; ++jj) {
      const E* kr = kb + w.keys[jj] * k_sl;
      for (int64_t d = 0; d < D; ++d) w.kt[d * nk_pad + jj] = to_f32(kr[d]);
      const E* vr = vb + w.keys[jj] * v_sl;
      float* dst = w.vp.data() + jj * Dp;
      for (int64_t d = 0; d < Dp; d += W) Vec::store(dst + d, Vec::loadn(vr + d, D - d >= W ? W : int(D - d)));
    }
    std::fill(w.vp.begin() + nk * Dp, w.vp.end(), 0.f);
  }
  // Qs = q * c; rows past `rows` are zero (computed, then ignored).
  template <class E>
  static void pack_q(const E* qb, int64_t q_sl, int rows, int rows_pad, int64_t D, int64_t Dp, float c, AttnScratch& w) {
    constexpr int W = Vec::W;
    w.qs.assign(size_t(rows_pad * Dp), 0.f);
    const F qscale = Vec::set1(c);
    for (int i = 0; i < rows; ++i)
      for (int64_t d = 0; d < Dp; d += W)
        Vec::store(w.qs.data() + i * Dp + d, Vec::mul(Vec::loadn(qb + i * q_sl + d, D - d >= W ? W : int(D - d)), qscale));
  }
  static const T* qbuf(const AttnScratch& w) { return w.qs.data(); }
  static const T* kbuf(const AttnScratch& w) { return w.kt.data(); }
  static const T* vbuf(const AttnScratch& w) { return w.vp.data(); }
  static T* pbuf(AttnScratch& w) { return w.s.data(); }
  static int64_t ldq(int64_t, int64_t Dp) { return Dp; }
  static int64_t groups(int64_t D) { return D; }
  static constexpr int64_t LDP = TILE_K;

  // P = 2^(srow - m) in place (prow == srow); returns rowsum P.
  BS_AI float exp_row(float* srow, int64_t nb_pad, float m_new, T*) {
    constexpr int W = Vec::W;
    const F vm = Vec::set1(m_new);
    F sum = Vec::zero();
    for (int64_t j = 0; j < nb_pad; j += W) {
      const F p = vexp2(Vec::sub(Vec::load(srow + j), vm));
      Vec::store(srow + j, p);
      sum = Vec::add(sum, p);
    }
    return Vec::reduce_add(sum);
  }
};

#if BS_ISA_BF16_DOT
// bf16 pairs in 32-bit lanes: acc += a0 b0 + a1 b1 (vdpbf16ps). AVX512_BF16 only.
struct DotBf16 {
  static constexpr int G = 2;
  using T = uint32_t;
  using V = __m512i;
  BS_AI V load(const T* p) { return _mm512_loadu_si512(p); }
  BS_AI V bcast(const T* p) { return _mm512_set1_epi32(int(*p)); }
  BS_AI F mac(F acc, V b, V a) { return _mm512_dpbf16_ps(acc, (__m512bh)b, (__m512bh)a); }
  BS_AI F finish(F acc, F c) { return Vec::mul(acc, c); }  // S = c (Q K^T) in fp32

  static void pack_kv(const bf16* kb, int64_t k_sl, const bf16* vb, int64_t v_sl, int64_t D, int64_t Dp, AttnScratch& w) {
    constexpr int W = Vec::W;
    const int64_t nk = w.nk, nk_pad = w.nk_pad, D2 = (D + 1) / 2;
    w.kp2.assign(size_t(D2 * nk_pad), 0u);
    for (int64_t jj = 0; jj < nk; ++jj) {
      const bf16* kr = kb + w.keys[jj] * k_sl;
      for (int64_t t = 0; t < D / 2; ++t)
        w.kp2[t * nk_pad + jj] = uint32_t(kr[2 * t].bits) | uint32_t(kr[2 * t + 1].bits) << 16;
      if (D % 2) w.kp2[(D2 - 1) * nk_pad + jj] = kr[D - 1].bits;
    }
    w.vp2.resize(size_t(nk_pad / 2 * Dp));
    for (int64_t t = 0; t < nk_pad / 2; ++t) {
      const bf16* r0 = 2 * t < nk ? vb + w.keys[2 * t] * v_sl : nullptr;
      const bf16* r1 = 2 * t + 1 < nk ? vb + w.keys[2 * t + 1] * v_sl : nullptr;
      uint32_t* dst = w.vp2.data() + t * Dp;
      for (int64_t d = 0; d < Dp; d += W) {
        const __mmask16 n = Vec::first(D - d >= W ? W : int(D - d));
        const __m512i lo = r0 ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(n, r0 + d)) : _mm512_setzero_si512();
        const __m512i hi = r1 ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(n, r1 + d)) : _mm512_setzero_si512();
        _mm512_storeu_si512(dst + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
  // Q2 = q's bf16 pairs, zero past D and for rows past `rows`.
  static void pack_q(const bf16* qb, int64_t q_sl, int rows, int rows_pad, int64_t D, int64_t, float, AttnScratch& w) {
    const int64_t D2 = (D + 1) / 2;
    w.q2.assign(size_t(rows_pad * D2), 0u);
    for (int i = 0; i < rows; ++i) std::memcpy(w.q2.data() + i * D2, qb + i * q_sl, size_t(D) * 2);
  }
  static const T* qbuf(const AttnScratch& w) { return w.q2.data(); }
  static const T* kbuf(const AttnScratch& w) { return w.kp2.data(); }
  static const T* vbuf(const AttnScratch& w) { return w.vp2.data(); }
  static T* pbuf(AttnScratch& w) { return w.p2.data(); }
  static int64_t ldq(int64_t D, int64_t) { return (D + 1) / 2; }
  static int64_t groups(int64_t D) { return (D + 1) / 2; }
  static constexpr int64_t LDP = TILE_K / 2;

  // 2^x for x <= 0 or NaN (x = S - m'), with vexp2's polynomial; 2^n applied by vscalefps in one step
  // (vexp2: clamp to 127, convert, add, shift, multiply). x < -126 gives a subnormal or zero where vexp2
  // gives zero or the same subnormal; the bf16 conversion flushes subnormals to zero either way, so the
  // bf16 P is vexp2's bit for bit. -inf (a padded key) is clamped to -127 first: round(-inf) - -inf is NaN.
  BS_AI F exp2_nonpos(F x) {
    x = Vec::max(Vec::set1(-127.f), x);  // NaN passes (2nd operand)
    const F n = Vec::round(x);
    return _mm512_scalef_ps(vexp2_frac(Vec::sub(x, n)), n);
  }

  // prow = bf16 pairs of P = 2^(srow - m) over keys; returns the sum of the rounded P (see the header).
  BS_AI float exp_row(const float* srow, int64_t nb_pad, float m_new, T* prow) {
    constexpr int W = Vec::W;
    const F vm = Vec::set1(m_new);
    const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // (1.0, 1.0) in bf16
    F sum = Vec::zero();
    int64_t j = 0;
    for (; j + 2 * W <= nb_pad; j += 2 * W) {
      const F p0 = exp2_nonpos(Vec::sub(Vec::load(srow + j), vm));
      const F p1 = exp2_nonpos(Vec::sub(Vec::load(srow + j + W), vm));
      const __m512bh pb = _mm512_cvtne2ps_pbh(p1, p0);  // words 0-15 p0, 16-31 p1: lane t = (p[2t], p[2t+1])
      _mm512_storeu_si512(prow + j / 2, (__m512i)pb);
      sum = _mm512_dpbf16_ps(sum, pb, ones);
    }
    if (j < nb_pad) {  // an odd number of vectors: pair the last one with zeros
      const F p0 = exp2_nonpos(Vec::sub(Vec::load(srow + j), vm));
      const __m512bh pb = _mm512_cvtne2ps_pbh(Vec::zero(), p0);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(prow + j / 2), _mm512_castsi512_si256((__m512i)pb));
      sum = _mm512_dpbf16_ps(sum, pb, ones);
    }
    return Vec::reduce_add(sum);
  }
};
#endif

// S[i, j0 : j0 + NVB W] = finish(sum_t Q[i, t] * K[t, j0 : ...]) for rows [i0, i0 + RB); t over the
// operand groups (d for DotF32, d pairs for DotBf16).
template <class Dot, int NVB>
static inline void attn_qk_block(const typename Dot::T* qs, int64_t ldq, const typename Dot::T* kt, int64_t ldk,
                                 int64_t ng, float* s, int i0, int64_t j0, F c) {
  constexpr int W = Vec::W;
  F acc[RB][NVB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NVB; ++v) acc[r][v] = Vec::zero();
  const typename Dot::T* q0 = qs + i0 * ldq;
  for (int64_t d = 0; d < ng; ++d) {
    typename Dot::V kv[NVB];
#pragma GCC unroll 4
    for (int v = 0; v < NVB; ++v) kv[v] = Dot::load(kt + d * ldk + j0 + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const typename Dot::V qb = Dot::bcast(q0 + r * ldq + d);
#pragma GCC unroll 4
      for (int v = 0; v < NVB; ++v) acc[r][v] = Dot::mac(acc[r][v], qb, kv[v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NVB; ++v) Vec::store(s + (i0 + r) * int64_t(TILE_K) + j0 + v * W, Dot::finish(acc[r][v], c));
}

// S = Q K for rows [0, rows_pad) and keys [0, ncols), ncols % W == 0: blocks of NV vectors, then single vectors.
template <class Dot>
static inline void attn_qk(const typename Dot::T* qs, int64_t ldq, const typename Dot::T* kt, int64_t ldk, int64_t ng,
                           float* s, int rows_pad, int64_t ncols, F c) {
  constexpr int W = Vec::W;
  for (int i0 = 0; i0 < rows_pad; i0 += RB) {
    int64_t j0 = 0;
    for (; j0 + NV * W <= ncols; j0 += NV * W) attn_qk_block<Dot, NV>(qs, ldq, kt, ldk, ng, s, i0, j0, c);
    for (; j0 < ncols; j0 += W) attn_qk_block<Dot, 1>(qs, ldq, kt, ldk, ng, s, i0, j0, c);
  }
}

// O[i, d0 : d0 + DV W] += sum_t P[i, t] * Vp[t, d0 : ...] for rows [i0, i0 + RB), t over [0, ng) (keys for
// DotF32, key pairs for DotBf16).
template <class Dot, int DV>
static inline void attn_pv_block(const typename Dot::T* p, const typename Dot::T* vp, int64_t ldv, int64_t ng,
                                 float* o, int64_t ldo, int i0, int64_t d0) {
  constexpr int W = Vec::W;
  F acc[RB][DV];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < DV; ++v) acc[r][v] = Vec::load(o + (i0 + r) * ldo + d0 + v * W);
  const typename Dot::T* p0 = p + i0 * Dot::LDP;
  for (int64_t j = 0; j < ng; ++j) {
    typename Dot::V vv[DV];
#pragma GCC unroll 4
    for (int v = 0; v < DV; ++v) vv[v] = Dot::load(vp + j * ldv + d0 + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const typename Dot::V pb = Dot::bcast(p0 + r * Dot::LDP + j);
#pragma GCC unroll 4
      for (int v = 0; v < DV; ++v) acc[r][v] = Dot::mac(acc[r][v], pb, vv[v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < DV; ++v) Vec::store(o + (i0 + r) * ldo + d0 + v * W, acc[r][v]);
}

template <class Dot>
static inline void attn_pv(const typename Dot::T* p, const typename Dot::T* vp, int64_t Dp, int64_t ng, float* o,
                           int rows_pad) {
  constexpr int W = Vec::W;
  for (int i0 = 0; i0 < rows_pad; i0 += RB) {
    for (int64_t d0 = 0; d0 < Dp; d0 += 4 * W) {
      switch ((Dp - d0) / W) {
        case 1: attn_pv_block<Dot, 1>(p, vp, Dp, ng, o, Dp, i0, d0); break;
        case 2: attn_pv_block<Dot, 2>(p, vp, Dp, ng, o, Dp, i0, d0); break;
        case 3: attn_pv_block<Dot, 3>(p, vp, Dp, ng, o, Dp, i0, d0); break;
        default: attn_pv_block<Dot, 4>(p, vp, Dp, ng, o, Dp, i0, d0); break;
      }
    }
  }
}

template <class E, class Dot>
static void attn_pack_kv(const AttnArgs& a, int64_t b, int64_t h, int64_t row0, int64_t len, int64_t Dp,
                         AttnScratch& w) {
  const E* kb = static_cast<const E*>(a.k) + (a.cu_seqlens ? row0 * a.k_sl : b * a.k_sb) + h * a.k_sh;
  const E* vb = static_cast<const E*>(a.v) + (a.cu_seqlens ? row0 * a.v_sl : b * a.v_sb) + h * a.v_sh;
  w.keys.clear();
  const uint8_t* keep = a.keep ? a.keep + b * a.Lk : nullptr;
  for (int64_t j = 0; j < len; ++j)
    if (!keep || keep[j]) w.keys.push_back(j);
  w.nk = int64_t(w.keys.size());
  w.nk_pad = (w.nk + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN;
  Dot::pack_kv(kb, a.k_sl, vb, a.v_sl, a.D, Dp, w);
}

template <class E, class Dot>
static void attn_task(const AttnArgs& a, int64_t task, int64_t n_qtiles, AttnScratch& w) {
  constexpr int W = Vec::W;
  const int64_t qt = task % n_qtiles, bh = task / n_qtiles, h = bh % a.H, b = bh / a.H;
  int64_t row0 = 0, lq = a.Lq, lk = a.Lk;  // varlen: the sequence's first row and its length
  if (a.cu_seqlens) {
    row0 = a.cu_seqlens[b];
    lq = lk = a.cu_seqlens[b + 1] - row0;
  }
  const int64_t i_begin = qt * TILE_Q;
  if (i_begin >= lq) return;
  const int rows = int(std::min<int64_t>(TILE_Q, lq - i_begin));
  const int rows_pad = (rows + RB - 1) / RB * RB;
  const int64_t D = a.D, Dp = (D + W - 1) / W * W;

  E* ob = static_cast<E*>(a.out) + (a.cu_seqlens ? (row0 + i_begin) * a.o_sl : b * a.o_sb + i_begin * a.o_sl) +
          h * a.o_sh;
  if (w.packed_bh != bh) {
    attn_pack_kv<E, Dot>(a, b, h, row0, lk, Dp, w);
    w.packed_bh = bh;
  }
  if (w.nk == 0) {  // every key is padding: zeros (reference.attention / FlashAttention convention)
    for (int i = 0; i < rows; ++i)
      for (int64_t d = 0; d < D; d += W) Vec::storen(ob + i * a.o_sl + d, Vec::zero(), D - d >= W ? W : int(D - d));
    return;
  }

  const E* qb = static_cast<const E*>(a.q) + (a.cu_seqlens ? (row0 + i_begin) * a.q_sl : b * a.q_sb + i_begin * a.q_sl) +
                h * a.q_sh;
  const float c = a.scale * LOG2E;
  Dot::pack_q(qb, a.q_sl, rows, rows_pad, D, Dp, c, w);
  const F vc = Vec::set1(c);
  w.o.assign(size_t(rows_pad * Dp), 0.f);
  w.m.assign(rows_pad, -INFINITY);
  w.l.assign(rows_pad, 0.f);
  w.s.resize(size_t(rows_pad) * TILE_K);
  if (Dot::G > 1) w.p2.resize(size_t(rows_pad) * Dot::LDP);
  typename Dot::T* pb = Dot::pbuf(w);

  for (int64_t k0 = 0; k0 < w.nk; k0 += TILE_K) {
    const int64_t nb = std::min<int64_t>(TILE_K, w.nk - k0);             // real keys in this block
    const int64_t nb_pad = (nb + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN;  // keys computed
    attn_qk<Dot>(Dot::qbuf(w), Dot::ldq(D, Dp), Dot::kbuf(w) + k0, w.nk_pad, Dot::groups(D), w.s.data(), rows_pad,
                 nb_pad, vc);
    for (int i = 0; i < rows_pad; ++i) {
      float* srow = w.s.data() + i * int64_t(TILE_K);
      for (int64_t j = nb; j < nb_pad; ++j) srow[j] = -INFINITY;  // zero-padded keys get no weight
      F mx = Vec::set1(-INFINITY);
      for (int64_t j = 0; j < nb_pad; j += W) mx = Vec::max(mx, Vec::load(srow + j));
      const float m_new = std::max(w.m[i], Vec::reduce_max(mx));
      const float rowsum = Dot::exp_row(srow, nb_pad, m_new, pb + i * Dot::LDP);
      const float alpha = k0 == 0 ? 0.f : std::exp2(w.m[i] - m_new);
      w.l[i] = w.l[i] * alpha + rowsum;
      w.m[i] = m_new;
      if (k0 > 0) {
        const F va = Vec::set1(alpha);
        for (int64_t d = 0; d < Dp; d += W) Vec::store(w.o.data() + i * Dp + d, Vec::mul(Vec::load(w.o.data() + i * Dp + d), va));
      }
    }
    // key rows of this block in Vp: k0 (DotF32) or k0 / 2 pair rows (DotBf16); k0 is a multiple of TILE_K
    attn_pv<Dot>(pb, Dot::vbuf(w) + k0 / Dot::G * Dp, Dp, nb_pad / Dot::G, w.o.data(), rows_pad);
  }

  for (int i = 0; i < rows; ++i) {
    const F inv = Vec::set1(1.f / w.l[i]);
    for (int64_t d = 0; d < D; d += W) {
      const F y = Vec::mul(Vec::load(w.o.data() + i * Dp + d), inv);
      if (D - d >= W) Vec::store(ob + i * a.o_sl + d, y);
      else Vec::storen(ob + i * a.o_sl + d, y, int(D - d));
    }
  }
}

template <class E, class Dot>
static void attention_typed(const AttnArgs& a) {
  const int64_t n_qtiles = (a.Lq + TILE_Q - 1) / TILE_Q;
  const int64_t tasks = a.B * a.H * n_qtiles;
  // Tasks of one (b, h) are consecutive; hand them out in chunks of up to one head so the packed K/V
  // are reused, smaller when there are few heads per thread (ragged lengths make tasks unequal).
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n_qtiles, tasks / (int64_t(a.threads) * 4)));
  parallel_for_dynamic<AttnScratch>(tasks, a.threads, chunk, [&](int64_t t0, int64_t t1, AttnScratch& w) {
    for (int64_t t = t0; t < t1; ++t) attn_task<E, Dot>(a, t, n_qtiles, w);
  });
}

static void attention(const AttnArgs& a) {
#if BS_ISA_BF16_DOT
  if (a.dtype == DType::BF16 && cpu_features().avx512_bf16) return attention_typed<bf16, DotBf16>(a);
#endif
  if (a.dtype == DType::BF16) attention_typed<bf16, DotF32>(a);
  else attention_typed<float, DotF32>(a);
}

#undef BS_AI
