// Body of bias_gelu (one instance per instruction set; see isa_instances.h).
//
//   out[r, c] = gelu(x[r, c] + bias[c])      erf form, or tanh form (vgelu_tanh in vmath_impl.h)
//
// x, out [rows, n] fp32 or bf16, contiguous; bias fp32 [n]; math in fp32.
// Bytes per element: read x + write out = 8 (fp32) or 4 (bf16); bias stays in L1.
// Vector instructions per 16 (AVX-512) elements: ~20 for erf (clamp, a 5/4 rational, one divide, clip),
// ~20 for tanh (one exp, one divide); bf16 adds one word permute to widen and six integer ops to round.
template <class E, bool Tanh>
static void bias_gelu_rows(const E* x, const float* bias, E* out, int64_t r0, int64_t r1, int64_t n) {
  constexpr int W = Vec::W;
  for (int64_t r = r0; r < r1; ++r) {
    const E* xr = x + r * n;
    E* o = out + r * n;
    int64_t c = 0;
    for (; c + W <= n; c += W) {
      const F h = Vec::add(Vec::load(xr + c), Vec::load(bias + c));
      Vec::store(o + c, Tanh ? vgelu_tanh(h) : vgelu_erf(h));
    }
    if (c < n) {
      const int rem = int(n - c);
      const F h = Vec::add(Vec::loadn(xr + c, rem), Vec::loadn(bias + c, rem));
      Vec::storen(o + c, Tanh ? vgelu_tanh(h) : vgelu_erf(h), rem);
    }
  }
}

template <class E>
static void bias_gelu_typed(bool tanh_form, const void* x, const float* bias, void* out, int64_t rows,
                            int64_t n, int threads) {
  const E* xe = static_cast<const E*>(x);
  E* oe = static_cast<E*>(out);
  // ~32K elements per thread at least: below that the fork/join costs more than it saves.
  const int64_t grain = (int64_t(32) * 1024 + n - 1) / n;
  parallel_for(rows, threads, grain, [&](int64_t r0, int64_t r1) {
    if (tanh_form) bias_gelu_rows<E, true>(xe, bias, oe, r0, r1, n);
    else bias_gelu_rows<E, false>(xe, bias, oe, r0, r1, n);
  });
}

static void bias_gelu(DType dtype, bool tanh_form, const void* x, const float* bias, void* out, int64_t rows,
                      int64_t n, int threads) {
  if (dtype == DType::BF16) bias_gelu_typed<bf16>(tanh_form, x, bias, out, rows, n, threads);
  else bias_gelu_typed<float>(tanh_form, x, bias, out, rows, n, threads);
}

// The vector functions themselves, for the accuracy tests (erf, exp, exp2, gelu on fp32 arrays), and
// the vector bf16 store + load (a round trip through Vec::store(bf16*) = nearest-even narrowing).
static void eval_math(int which, const float* x, float* out, int64_t n) {
  constexpr int W = Vec::W;
  for (int64_t i = 0; i < n; i += W) {
    const int rem = n - i >= W ? W : int(n - i);
    const F v = Vec::loadn(x + i, rem);
    F y;
    switch (which) {
      case 0: y = verf(v); break;
      case 1: y = vexp(v); break;
      case 2: y = vexp2(v); break;
      case 3: y = vgelu_erf(v); break;
      case 4: y = vgelu_tanh(v); break;
      default: {
        bf16 narrowed[W];
        Vec::store(narrowed, v);
        y = Vec::load(narrowed);
      }
    }
    Vec::storen(out + i, y, rem);
  }
}
