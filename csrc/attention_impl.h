// Body of attention (one instance per instruction set; see isa_instances.h): flash-style tiled
// attention with a key-padding mask, online softmax, fp32 math, no L x L matrix in memory.
//
// For one (sequence b, head h, tile of TILE_Q query rows):
//   keys     = the real keys of b (mask != 0), packed once per (b, h) per thread:
//              Kt [D, nk_pad]  (K transposed, fp32, zero-padded)   Vp [nk_pad, Dp]  (fp32, zero-padded)
//   Qs       = q rows * (scale * log2 e)  [TILE_Q, Dp], so that softmax uses 2^x instead of e^x
//   for each block of TILE_K keys:
//     S  = Qs Kt[:, block]                         [TILE_Q, TILE_K]   (register-blocked 4 x NV vectors)
//     m' = max(m, rowmax S);  P = 2^(S - m');  l = l 2^(m - m') + rowsum P;  O = O 2^(m - m')
//     O += P Vp[block]                             [TILE_Q, Dp]        (register-blocked 4 x DV vectors)
//   out = O / l                                    (all keys padding: zeros, as reference.attention)
//
// Padded keys are skipped entirely (not masked to -inf), so the work is proportional to the real
// key count: FLOPs = 4 * Lq * nk * D per (b, h) (two matmuls), plus Lq * nk exponentials.
// Bytes (ideal): read q, k, v once, write out once: (2 Lq + 2 Lk) * D * sizeof(E) per (b, h).
// Shapes: any D (tails handled by zero padding to Dp, a multiple of the vector width); q/k/v/out are
// addressed by element strides (batch, head, row) with a contiguous last dim. dtype fp32 or bf16.
// NaN in a real position of q/k/v propagates like the reference; padded keys cannot contribute NaN.
constexpr int TILE_Q = 32;    // query rows per task
constexpr int TILE_K = 128;   // keys per online-softmax step
constexpr int RB = 4;         // query rows per register block
constexpr int NV = Vec::W == 8 ? 2 : 4;  // key vectors per register block of S (AVX2 has 16 registers)
constexpr int KEY_ALIGN = Vec::W;        // keys are padded to whole vectors
static_assert(TILE_K % (Vec::W * NV) == 0, "TILE_K must be a multiple of the key block");

// S[i, j0 : j0 + NVB W] = sum_d Qs[i, d] * Kt[d, j0 : ...] for rows [i0, i0 + RB).
template <int NVB>
static inline void attn_qk_block(const float* qs, int64_t ldq, const float* kt, int64_t ldk, int64_t D, float* s,
                                 int i0, int64_t j0) {
  constexpr int W = Vec::W;
  F acc[RB][NVB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NVB; ++v) acc[r][v] = Vec::zero();
  const float* q0 = qs + i0 * ldq;
  for (int64_t d = 0; d < D; ++d) {
    F kv[NVB];
#pragma GCC unroll 4
    for (int v = 0; v < NVB; ++v) kv[v] = Vec::load(kt + d * ldk + j0 + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const F qb = Vec::set1(q0[r * ldq + d]);
#pragma GCC unroll 4
      for (int v = 0; v < NVB; ++v) acc[r][v] = Vec::fmadd(qb, kv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NVB; ++v) Vec::store(s + (i0 + r) * int64_t(TILE_K) + j0 + v * W, acc[r][v]);
}

// S = Qs Kt for rows [0, rows_pad) and keys [0, ncols), ncols % W == 0: blocks of NV vectors, then single vectors.
static inline void attn_qk(const float* qs, int64_t ldq, const float* kt, int64_t ldk, int64_t D, float* s,
                           int rows_pad, int64_t ncols) {
  constexpr int W = Vec::W;
  for (int i0 = 0; i0 < rows_pad; i0 += RB) {
    int64_t j0 = 0;
    for (; j0 + NV * W <= ncols; j0 += NV * W) attn_qk_block<NV>(qs, ldq, kt, ldk, D, s, i0, j0);
    for (; j0 < ncols; j0 += W) attn_qk_block<1>(qs, ldq, kt, ldk, D, s, i0, j0);
  }
}

// O[i, d0 : d0 + DV W] += sum_j P[i, j] * Vp[j, d0 : ...] for rows [i0, i0 + RB), keys [0, ncols).
template <int DV>
static inline void attn_pv_block(const float* p, const float* vp, int64_t ldv, int64_t ncols, float* o,
                                 int64_t ldo, int i0, int64_t d0) {
  constexpr int W = Vec::W;
  F acc[RB][DV];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < DV; ++v) acc[r][v] = Vec::load(o + (i0 + r) * ldo + d0 + v * W);
  const float* p0 = p + i0 * int64_t(TILE_K);
  for (int64_t j = 0; j < ncols; ++j) {
    F vv[DV];
#pragma GCC unroll 4
    for (int v = 0; v < DV; ++v) vv[v] = Vec::load(vp + j * ldv + d0 + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const F pb = Vec::set1(p0[r * int64_t(TILE_K) + j]);
#pragma GCC unroll 4
      for (int v = 0; v < DV; ++v) acc[r][v] = Vec::fmadd(pb, vv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < DV; ++v) Vec::store(o + (i0 + r) * ldo + d0 + v * W, acc[r][v]);
}

static inline void attn_pv(const float* p, const float* vp, int64_t Dp, int64_t ncols, float* o, int rows_pad) {
  constexpr int W = Vec::W;
  for (int i0 = 0; i0 < rows_pad; i0 += RB) {
    for (int64_t d0 = 0; d0 < Dp; d0 += 4 * W) {
      switch ((Dp - d0) / W) {
        case 1: attn_pv_block<1>(p, vp, Dp, ncols, o, Dp, i0, d0); break;
        case 2: attn_pv_block<2>(p, vp, Dp, ncols, o, Dp, i0, d0); break;
        case 3: attn_pv_block<3>(p, vp, Dp, ncols, o, Dp, i0, d0); break;
        default: attn_pv_block<4>(p, vp, Dp, ncols, o, Dp, i0, d0); break;
      }
    }
  }
}

// Per-thread working set; K/V stay packed while consecutive tasks share (b, h).
struct AttnScratch {
  std::vector<float> kt, vp, qs, s, o, m, l;
  std::vector<int64_t> keys;
  int64_t packed_bh = -1;
  int64_t nk = 0, nk_pad = 0;
};

template <class E>
static void attn_pack_kv(const AttnArgs& a, int64_t b, int64_t h, int64_t row0, int64_t len, int64_t Dp,
                         AttnScratch& w) {
  constexpr int W = Vec::W;
  const E* kb = static_cast<const E*>(a.k) + (a.cu_seqlens ? row0 * a.k_sl : b * a.k_sb) + h * a.k_sh;
  const E* vb = static_cast<const E*>(a.v) + (a.cu_seqlens ? row0 * a.v_sl : b * a.v_sb) + h * a.v_sh;
  w.keys.clear();
  const uint8_t* keep = a.keep ? a.keep + b * a.Lk : nullptr;
  for (int64_t j = 0; j < len; ++j)
    if (!keep || keep[j]) w.keys.push_back(j);
  const int64_t nk = int64_t(w.keys.size());
  const int64_t nk_pad = (nk + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN;
  const int64_t D = a.D;
  w.kt.assign(size_t(D * nk_pad), 0.f);
  w.vp.resize(size_t(nk_pad * Dp));
  for (int64_t jj = 0; jj < nk; ++jj) {
    const E* kr = kb + w.keys[jj] * a.k_sl;
    for (int64_t d = 0; d < D; ++d) w.kt[d * nk_pad + jj] = to_f32(kr[d]);
    const E* vr = vb + w.keys[jj] * a.v_sl;
    float* dst = w.vp.data() + jj * Dp;
    for (int64_t d = 0; d < Dp; d += W) Vec::store(dst + d, Vec::loadn(vr + d, D - d >= W ? W : int(D - d)));
  }
  std::fill(w.vp.begin() + nk * Dp, w.vp.end(), 0.f);
  w.nk = nk;
  w.nk_pad = nk_pad;
}

template <class E>
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
    attn_pack_kv<E>(a, b, h, row0, lk, Dp, w);
    w.packed_bh = bh;
  }
  if (w.nk == 0) {  // every key is padding: zeros (reference.attention / FlashAttention convention)
    for (int i = 0; i < rows; ++i)
      for (int64_t d = 0; d < D; d += W) Vec::storen(ob + i * a.o_sl + d, Vec::zero(), D - d >= W ? W : int(D - d));
    return;
  }

  // Qs = q * scale * log2(e); rows past `rows` are zero (computed, then ignored).
  const E* qb = static_cast<const E*>(a.q) + (a.cu_seqlens ? (row0 + i_begin) * a.q_sl : b * a.q_sb + i_begin * a.q_sl) +
                h * a.q_sh;
  w.qs.assign(size_t(rows_pad * Dp), 0.f);
  const F qscale = Vec::set1(a.scale * 1.44269504088896341f);
  for (int i = 0; i < rows; ++i)
    for (int64_t d = 0; d < Dp; d += W)
      Vec::store(w.qs.data() + i * Dp + d, Vec::mul(Vec::loadn(qb + i * a.q_sl + d, D - d >= W ? W : int(D - d)), qscale));
  w.o.assign(size_t(rows_pad * Dp), 0.f);
  w.m.assign(rows_pad, -INFINITY);
  w.l.assign(rows_pad, 0.f);
  w.s.resize(size_t(rows_pad) * TILE_K);

  for (int64_t k0 = 0; k0 < w.nk; k0 += TILE_K) {
    const int64_t nb = std::min<int64_t>(TILE_K, w.nk - k0);             // real keys in this block
    const int64_t nb_pad = (nb + KEY_ALIGN - 1) / KEY_ALIGN * KEY_ALIGN;  // keys computed
    attn_qk(w.qs.data(), Dp, w.kt.data() + k0, w.nk_pad, D, w.s.data(), rows_pad, nb_pad);
    for (int i = 0; i < rows_pad; ++i) {
      float* srow = w.s.data() + i * int64_t(TILE_K);
      for (int64_t j = nb; j < nb_pad; ++j) srow[j] = -INFINITY;  // zero-padded keys get no weight
      F mx = Vec::set1(-INFINITY);
      for (int64_t j = 0; j < nb_pad; j += W) mx = Vec::max(mx, Vec::load(srow + j));
      const float m_new = std::max(w.m[i], Vec::reduce_max(mx));
      const F vm = Vec::set1(m_new);
      F sum = Vec::zero();
      for (int64_t j = 0; j < nb_pad; j += W) {
        const F p = vexp2(Vec::sub(Vec::load(srow + j), vm));
        Vec::store(srow + j, p);
        sum = Vec::add(sum, p);
      }
      const float alpha = k0 == 0 ? 0.f : std::exp2(w.m[i] - m_new);
      w.l[i] = w.l[i] * alpha + Vec::reduce_add(sum);
      w.m[i] = m_new;
      if (k0 > 0) {
        const F va = Vec::set1(alpha);
        for (int64_t d = 0; d < Dp; d += W) Vec::store(w.o.data() + i * Dp + d, Vec::mul(Vec::load(w.o.data() + i * Dp + d), va));
      }
    }
    attn_pv(w.s.data(), w.vp.data() + k0 * Dp, Dp, nb_pad, w.o.data(), rows_pad);
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

template <class E>
static void attention_typed(const AttnArgs& a) {
  const int64_t n_qtiles = (a.Lq + TILE_Q - 1) / TILE_Q;
  const int64_t tasks = a.B * a.H * n_qtiles;
  // Tasks of one (b, h) are consecutive; hand them out in chunks of up to one head so the packed K/V
  // are reused, smaller when there are few heads per thread (ragged lengths make tasks unequal).
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n_qtiles, tasks / (int64_t(a.threads) * 4)));
  parallel_for_dynamic<AttnScratch>(tasks, a.threads, chunk, [&](int64_t t0, int64_t t1, AttnScratch& w) {
    for (int64_t t = t0; t < t1; ++t) attn_task<E>(a, t, n_qtiles, w);
  });
}

static void attention(const AttnArgs& a) {
  if (a.dtype == DType::BF16) attention_typed<bf16>(a);
  else attention_typed<float>(a);
}
