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
// NaN/inf anywhere in a row makes the row's statistics NaN, so the whole output row is NaN.
template <class E>
static void add_layernorm_row(const E* x, const E* res, const float* w, const float* b, E* out, float* h,
                              int64_t n, float eps) {
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
  s0 = s1 = s2 = s3 = Vec::zero();
  for (c = 0; c < n4; c += 4 * W) {
    const F c0 = Vec::sub(Vec::load(h + c), vmean), c1 = Vec::sub(Vec::load(h + c + W), vmean);
    const F c2 = Vec::sub(Vec::load(h + c + 2 * W), vmean), c3 = Vec::sub(Vec::load(h + c + 3 * W), vmean);
    s0 = Vec::fmadd(c0, c0, s0), s1 = Vec::fmadd(c1, c1, s1), s2 = Vec::fmadd(c2, c2, s2), s3 = Vec::fmadd(c3, c3, s3);
  }
  for (; c < n; c += W) {  // tail: lanes past n must not add mean^2
    const int rem = n - c >= W ? W : int(n - c);
    const F cv = Vec::keep_first(Vec::sub(Vec::loadn(h + c, rem), vmean), rem);
    s0 = Vec::fmadd(cv, cv, s0);
  }
  const float var = Vec::reduce_add(Vec::add(Vec::add(s0, s1), Vec::add(s2, s3))) / float(n);
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
