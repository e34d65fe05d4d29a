// Vector math shared by the kernel bodies (included once per instruction set by isa_instances.h,
// inside bs::avx512 / bs::avx2 / bs::scalar, with `Vec` naming that path's vector type).
//
//   vexp2(x)  2^x: x = n + r, |r| <= 1/2, 2^r by a degree-6 polynomial (<= 1 ulp on [-1/2, 1/2]);
//             x <= -127 gives 0 (flushes results below 2^-126), x >= 127 clamps, NaN stays NaN.
//   vexp(x)   e^x: n = round(x log2 e), r = x - n ln2 (Cody-Waite, two-part ln2), e^r by a degree-6
//             polynomial; <= ~1 ulp measured; x < -87.33 gives 0, x > 88.72 gives inf.
//   verf(x)   erf in fp32, <= ~1.0 ulp (measured against float64 erf in tests/test_cpu_elementwise.py):
//             |x| <= 0.9277: x + x * P(x^2)  (odd polynomial, degree 13)
//             |x| >  0.9277: sign(x) * (1 - e^(Q(t))), t = min(|x|, 4), Q of degree 8, Q(t) ~ log erfc(t)
//             (coefficients from N. Juffa's branch-free erff; both branches are evaluated, then selected).
//   vgelu_erf(x)  = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, with its own erf: GELU needs erf only to
//             an absolute accuracy (an error e in erf is an error |x| e / 2 in GELU), so Phi is one
//             rational in x clamped to +-C, clipped to [0, 1]:  Phi = clip(1/2 + xc P(xc^2) / Q(xc^2)),
//             deg P 5, deg Q 4, C = 3.72 sqrt 2; max |erf error| 6.2e-7 (torch's own fp32 GELU: 7.3e-7,
//             measured the same way). The fit pins Phi(+-C) to exactly 1 / 0, so beyond the clamp
//             gelu = max(x, -C) Phi is x above and -0 below with no select (+inf -> +inf, -inf -> -0).
//             One division (on Zen 4 / Intel its own unit, off the FMA ports) and 10 FMAs instead of
//             verf's two polynomials and an exp: about twice as fast. Coefficients: our fit,
//             csrc/tools/fit_gelu_erf.py (which also checks the end points).
//   vgelu_tanh(x) = x/2 * (1 + tanh(y)) = x / (1 + e^(-2y)),  y = sqrt(2/pi) (x + 0.044715 x^3)
//             (the sigmoid form has no cancellation); +inf at +inf, 0 at -inf.
using F = Vec::F;

// 2^r for r = x - round(x) in [-1/2, 1/2]: the polynomial of vexp2 (also used by the attention kernel's
// exp2 of non-positive scores, which applies 2^n its own way).
static inline __attribute__((always_inline)) F vexp2_frac(F r) {
  F p = Vec::set1(1.5467369e-04f);
  p = Vec::fmadd(p, r, Vec::set1(1.3400437e-03f));
  p = Vec::fmadd(p, r, Vec::set1(9.6180355e-03f));
  p = Vec::fmadd(p, r, Vec::set1(5.550327e-02f));
  p = Vec::fmadd(p, r, Vec::set1(2.402265e-01f));
  p = Vec::fmadd(p, r, Vec::set1(6.931472e-01f));
  return Vec::fmadd(p, r, Vec::set1(1.f));
}

static inline __attribute__((always_inline)) F vexp2(F x) {
  x = Vec::min(Vec::set1(127.f), Vec::max(Vec::set1(-127.f), x));  // NaN passes both (2nd operand)
  const F n = Vec::round(x);
  return Vec::mul(vexp2_frac(Vec::sub(x, n)), Vec::pow2(n));  // n = -127 gives pow2 == +0
}

// e^x for x in [-87, 88] (no clamping; callers bound x).
static inline __attribute__((always_inline)) F vexp_core(F x) {
  const F n = Vec::round(Vec::mul(x, Vec::set1(1.44269504f)));
  F r = Vec::fnmadd(n, Vec::set1(0.693145751953125f), x);  // x - n * ln2_hi (exact)
  r = Vec::fnmadd(n, Vec::set1(1.4286068e-06f), r);         //   - n * ln2_lo
  F p = Vec::set1(1.3946451e-03f);
  p = Vec::fmadd(p, r, Vec::set1(8.369154e-03f));
  p = Vec::fmadd(p, r, Vec::set1(4.166626e-02f));
  p = Vec::fmadd(p, r, Vec::set1(1.6666517e-01f));
  p = Vec::fmadd(p, r, Vec::set1(0.5f));
  p = Vec::fmadd(p, Vec::mul(r, r), r);
  p = Vec::add(p, Vec::set1(1.f));
  return Vec::ldexp(p, n);
}

static inline __attribute__((always_inline)) F vexp(F x) {
  const F e = vexp_core(Vec::min(Vec::set1(88.f), Vec::max(Vec::set1(-88.f), x)));  // NaN passes
  const F e_hi = Vec::select(Vec::gt(x, Vec::set1(88.7228f)), Vec::set1(INFINITY), e);  // overflow: inf
  return Vec::select(Vec::lt(x, Vec::set1(-87.33f)), Vec::zero(), e_hi);               // no subnormal results
}

// erf's two branches on t = min(|x|, 4) (magnitudes; the caller applies the sign of x).
constexpr float ERF_SPLIT = 0.927734375f;  // small branch for t <= ERF_SPLIT

static inline __attribute__((always_inline)) F verf_small(F t) {  // t + t P(t^2), for t <= ERF_SPLIT
  const F s = Vec::mul(t, t);
  F q = Vec::set1(-5.96761703e-4f);
  q = Vec::fmadd(q, s, Vec::set1(4.99119423e-3f));
  q = Vec::fmadd(q, s, Vec::set1(-2.67681349e-2f));
  q = Vec::fmadd(q, s, Vec::set1(1.12819925e-1f));
  q = Vec::fmadd(q, s, Vec::set1(-3.76125336e-1f));
  q = Vec::fmadd(q, s, Vec::set1(1.28379166e-1f));
  return Vec::fmadd(q, t, t);
}

static inline __attribute__((always_inline)) F verf_big(F t) {  // 1 - exp(Q(t)), Q(t) in [-17, -0.9]
  const F s = Vec::mul(t, t);
  F r = Vec::fmadd(Vec::set1(-1.72853470e-5f), t, Vec::set1(3.83197126e-4f));
  const F u = Vec::fmadd(Vec::set1(-3.88396438e-3f), t, Vec::set1(2.42546219e-2f));
  r = Vec::fmadd(r, s, u);
  r = Vec::fmadd(r, t, Vec::set1(-1.06777877e-1f));
  r = Vec::fmadd(r, t, Vec::set1(-6.34846687e-1f));
  r = Vec::fmadd(r, t, Vec::set1(-1.28717512e-1f));
  r = Vec::fnmadd(Vec::set1(1.f), t, Vec::mul(r, t));  // r * t - t
  return Vec::sub(Vec::set1(1.f), vexp_core(r));
}

static inline __attribute__((always_inline)) F verf_abs_arg(F a) {  // t = min(|a|, 4); erf(4) rounds to 1
  return Vec::min(Vec::set1(4.f), Vec::abs(a));                     // NaN passes (2nd operand)
}

static inline __attribute__((always_inline)) F verf(F a) {
  const F t = verf_abs_arg(a);
  return Vec::copysign(Vec::select(Vec::gt(t, Vec::set1(ERF_SPLIT)), verf_big(t), verf_small(t)), a);
}

// x -> 0 where x is -inf (the formulas give -inf * 0 = NaN there).
static inline __attribute__((always_inline)) F zero_at_minus_inf(F x, F g) {
  return Vec::select(Vec::lt(x, Vec::set1(-3.40282347e38f)), Vec::zero(), g);
}

constexpr float GELU_ERF_CLAMP = 5.26087427f;  // 3.72 sqrt 2

static inline __attribute__((always_inline)) F vgelu_erf(F x) {
  const F xl = Vec::max(Vec::set1(-GELU_ERF_CLAMP), x);   // NaN passes (2nd operand)
  const F xc = Vec::min(Vec::set1(GELU_ERF_CLAMP), xl);
  const F s = Vec::mul(xc, xc);
  F p = Vec::set1(-1.59222324e-08f);
  p = Vec::fmadd(p, s, Vec::set1(5.39578832e-06f));
  p = Vec::fmadd(p, s, Vec::set1(0.000419647287f));
  p = Vec::fmadd(p, s, Vec::set1(0.00615990628f));
  p = Vec::fmadd(p, s, Vec::set1(0.0611912571f));
  p = Vec::fmadd(p, s, Vec::set1(0.398942173f));
  F q = Vec::set1(0.000140069271f);
  q = Vec::fmadd(q, s, Vec::set1(0.00331474887f));
  q = Vec::fmadd(q, s, Vec::set1(0.0437925421f));
  q = Vec::fmadd(q, s, Vec::set1(0.320046186f));
  q = Vec::fmadd(q, s, Vec::set1(1.f));
  F phi = Vec::add(Vec::div(Vec::mul(xc, p), q), Vec::set1(0.5f));
  phi = Vec::min(Vec::set1(1.f), Vec::max(Vec::zero(), phi));
  return Vec::mul(xl, phi);
}

static inline __attribute__((always_inline)) F vgelu_tanh(F x) {
  const F x3 = Vec::mul(Vec::mul(x, x), x);
  const F y = Vec::mul(Vec::set1(0.79788456080286536f), Vec::fmadd(Vec::set1(0.044715f), x3, x));
  const F z = vexp(Vec::mul(Vec::set1(-2.f), y));
  return zero_at_minus_inf(x, Vec::div(x, Vec::add(Vec::set1(1.f), z)));
}
