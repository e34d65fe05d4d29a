// Body of add_nonorm (one instance per instruction set; see isa_instances.h).
//
//   out[r, c] = (z[r, c] + residual[r, c]) * gamma[c] + beta[c]        (no residual: z * gamma + beta)
//
// MobileBERT's NoNorm after a GEMM: an elementwise affine without statistics. Each step is rounded to the
// element type as torch rounds its in-place add_, mul_, add_ on a tensor of that type (fp32: three IEEE
// operations, never an FMA; bf16: each in fp32 and rounded to bf16, nearest even), so the one-call layer
// gives the per-op path's bits. z rows have stride z_ld (a column block of a wider GEMM output), residual and
// out rows stride n; gamma, beta fp32 [n] holding the element type's values. 2-3 passes' worth of
// arithmetic over one read of z and residual and one write: memory-bound, 12n bytes a row in fp32.
template <class E>
static inline F nonorm_round(F v) {  // the value rounded to E, back in fp32 lanes
  if constexpr (std::is_same_v<E, float>) {
    // an empty asm that "changes" v: the product is materialised, so the compiler cannot contract
    // (z + r) * gamma + beta into one FMA (GCC contracts intrinsics' mul + add by default), which rounds once
    __asm__("" : "+v"(v));
    return v;
  } else {
    alignas(64) E tmp[Vec::W];
    Vec::store(tmp, v);
    return Vec::load(tmp);
  }
}

template <class E>
static void nonorm_rows(const E* z, int64_t z_ld, const E* res, const float* gamma, const float* beta, E* out,
                        int64_t m0, int64_t m1, int64_t n) {
  constexpr int W = Vec::W;
  for (int64_t m = m0; m < m1; ++m) {
    const E* zr = z + m * z_ld;
    const E* rr = res ? res + m * n : nullptr;
    E* orow = out + m * n;
    for (int64_t c = 0; c < n; c += W) {
      const int k = n - c >= W ? W : int(n - c);
      F t = k == W ? Vec::load(zr + c) : Vec::loadn(zr + c, k);
      if (rr) t = nonorm_round<E>(Vec::add(t, k == W ? Vec::load(rr + c) : Vec::loadn(rr + c, k)));
      t = nonorm_round<E>(Vec::mul(t, k == W ? Vec::load(gamma + c) : Vec::loadn(gamma + c, k)));
      t = Vec::add(t, k == W ? Vec::load(beta + c) : Vec::loadn(beta + c, k));
      if (k == W) Vec::store(orow + c, t);
      else Vec::storen(orow + c, t, k);
    }
  }
}

static void add_nonorm(DType dtype, const void* z, int64_t z_ld, const void* residual, const float* gamma,
                       const float* beta, void* out, int64_t rows, int64_t n, int threads) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(n, 1));
  parallel_for(rows, threads, grain, [&](int64_t m0, int64_t m1) {
    if (dtype == DType::BF16)
      nonorm_rows(static_cast<const bf16*>(z), z_ld, static_cast<const bf16*>(residual), gamma, beta,
                  static_cast<bf16*>(out), m0, m1, n);
    else
      nonorm_rows(static_cast<const float*>(z), z_ld, static_cast<const float*>(residual), gamma, beta,
                  static_cast<float*>(out), m0, m1, n);
  });
}
