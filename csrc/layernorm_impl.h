// Body of add_layernorm (one instance per instruction set; see isa_instances.h).
//
//   h = x + residual;  mean = sum(h) / n;  var = sum((h - mean)^2) / n   (two passes: no cancellation)
//   out = (h - mean) * rsqrt(var + eps) * weight + bias
//
// x, residual, out [rows, n] fp32 or bf16, contiguous; weight, bias fp32 [n]; statistics in fp32.
// h goes to a per-thread fp32 scratch row (<= 16 KB for n <= 4096, stays in L1) between the passes,
// so DRAM/L2 traffic is one read of x and residual and one write of out: 12n bytes per row in fp32,
// 6n in bf16. FLOPs per element ~8. Sums use 4 vectors of partial sums (64 lanes on AVX-512, 4 on the
// scalar path), which keeps rounding error near torch's pairwise-ish reductions.
// The sum of squares is taken in runs of kVarRun groups of 4 vectors, each run's sum added to the total
// with Kahan compensation: in a row dominated by one value (|h| >> the rest) the other squares, added one
// by one to the dominant lane, fall below half its ulp and are lost or rounded with a bias (variance off
// by up to ~1e-4 relative, 10-100x torch's error, at n 4096-12365 and an outlier 1e3-1e18 x the rest).
// Cost: 7 vector ops per further run (64 vectors); a run covers 1024 elements on AVX-512 (512 on AVX2), so every
// BERT hidden size up to 1024 sums in one run, as before (at 768, a run of 512 measured +5 % on the kernel).
// NaN/inf anywhere in a row makes the row's statistics NaN, so the whole output row is NaN.
constexpr int64_t kVarRun = 16;  // groups of 4 vectors per run of the sum of squares

static inline __attribute__((always_inline)) void kahan_add(F& sum, F& comp, F v) {
  const F y = Vec::sub(v, comp), t = Vec::add(sum, y);
  comp = Vec::sub(Vec::sub(t, sum), y);  // what of y did not make it into t (negated)
  sum = t;
}

// sum over [c0, c1) (whole groups of 4 vectors) of (h - mean)^2, in 4 vectors of partial sums
static inline __attribute__((always_inline)) F sum_sq_run(const float* h, F vmean, int64_t c0, int64_t c1) {
  constexpr int W = Vec::W;
  F s0 = Vec::zero(), s1 = Vec::zero(), s2 = Vec::zero(), s3 = Vec::zero();
  for (int64_t c = c0; c < c1; c += 4 * W) {
    const F d0 = Vec::sub(Vec::load(h + c), vmean), d1 = Vec::sub(Vec::load(h + c + W), vmean);
    const F d2 = Vec::sub(Vec::load(h + c + 2 * W), vmean), d3 = Vec::sub(Vec::load(h + c + 3 * W), vmean);
    s0 = Vec::fmadd(d0, d0, s0), s1 = Vec::fmadd(d1, d1, s1), s2 = Vec::fmadd(d2, d2, s2), s3 = Vec::fmadd(d3, d3, s3);
  }
  return Vec::add(Vec::add(s0, s1), Vec::add(s2, s3));
}

template <class E>
static inline __attribute__((always_inline)) void add_layernorm_row(  // inlined: the scalar path is
    const E* x, const E* res, const float* w, const float* b, E* out, float* h, int64_t n, float eps) {  // 20% slower if not
  constexpr int W = Vec::W;
  const int64_t n4 = n - n % (4 * W);
  F s0 = Vec::zero(), s1 = Vec::zero(), s2 = Vec::zero(), s3 = Vec::zero();
  int64_t c = 0;
  for (; c < n4; c += 4 * W) {
    const F h0 = Vec::add(Vec::load(x + c), Vec::load(res + c));
    const F h1 = Vec::add(Vec::load(x + c + W), Vec::load(res + c + W));
    const F h2 = Vec::add(Vec::load(x + c + 2 * W), Vec::load(res + c + 2 * W));
    const F h3 = Vec::add(Vec::load(x + c + 3 * W), Vec::load(res + c + 3 * W));
    Vec::store(h + c, h0), Vec::store(h + c + W, h1), Vec::store(h + c + 2 * W, h2), Vec::store(h + c + 3 * W, h3);
    s0 = Vec::add(s0, h0), s1 = Vec::add(s1, h1), s2 = Vec::add(s2, h2), s3 = Vec::add(s3, h3);
  }
  for (; c < n; c += W) {  // tail: whole or partial vectors (loadn zero-fills the unused lanes)
    const int rem = n - c >= W ? W : int(n - c);
    const F hv = Vec::add(Vec::loadn(x + c, rem), Vec::loadn(res + c, rem));
    Vec::storen(h + c, hv, rem);
    s0 = Vec::add(s0, hv);
  }
  const float mean = Vec::reduce_add(Vec::add(Vec::add(s0, s1), Vec::add(s2, s3))) / float(n);
  const F vmean = Vec::set1(mean);
  constexpr int64_t run = kVarRun * 4 * W;
  F sq = sum_sq_run(h, vmean, 0, std::min(n4, run)), comp = Vec::zero();
  for (c = run; c < n4; c += run) kahan_add(sq, comp, sum_sq_run(h, vmean, c, std::min(n4, c + run)));
  for (c = n4; c < n; c += W) {  // tail: lanes past n must not add mean^2
    const int rem = n - c >= W ? W : int(n - c);
    const F cv = Vec::keep_first(Vec::sub(Vec::loadn(h + c, rem), vmean), rem);
    sq = Vec::fmadd(cv, cv, sq);
  }
  float sum_sq = Vec::reduce_add(sq);  // comp is 0 for one run, NaN once sq overflows to inf: keep the inf
  if (n4 > run && std::isfinite(sum_sq)) sum_sq -= Vec::reduce_add(comp);
  const float var = sum_sq / float(n);
  const F vrstd = Vec::set1(1.f / std::sqrt(var + eps));
  for (c = 0; c + W <= n; c += W) {
    const F y = Vec::mul(Vec::sub(Vec::load(h + c), vmean), vrstd);
    Vec::store(out + c, Vec::fmadd(y, Vec::load(w + c), Vec::load(b + c)));
  }
  if (c < n) {
    const int rem = int(n - c);
    const F y = Vec::mul(Vec::sub(Vec::loadn(h + c, rem), vmean), vrstd);
    Vec::storen(out + c, Vec::fmadd(y, Vec::loadn(w + c, rem), Vec::loadn(b + c, rem)), rem);
  }
}

template <class E>
static void add_layernorm_typed(const void* x, const void* residual, const float* weight, const float* bias,
                                void* out, int64_t rows, int64_t n, float eps, int threads) {
  const E* xe = static_cast<const E*>(x);
  const E* re = static_cast<const E*>(residual);
  E* oe = static_cast<E*>(out);
  // ~12n bytes per row: give each thread at least ~64 KB of work before splitting.
  const int64_t grain = (int64_t(64) * 1024) / (12 * n) + 1;
  parallel_for(rows, threads, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(size_t(n) + Vec::W);
    for (int64_t r = r0; r < r1; ++r)
      add_layernorm_row<E>(xe + r * n, re + r * n, weight, bias, oe + r * n, scratch.data(), n, eps);
  });
}

static void add_layernorm(DType dtype, const void* x, const void* residual, const float* weight,
                          const float* bias, void* out, int64_t rows, int64_t n, float eps, int threads) {
  if (dtype == DType::BF16) add_layernorm_typed<bf16>(x, residual, weight, bias, out, rows, n, eps, threads);
  else add_layernorm_typed<float>(x, residual, weight, bias, out, rows, n, eps, threads);
}
