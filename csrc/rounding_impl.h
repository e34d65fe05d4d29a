// Body of round_to (one instance per instruction set; see isa_instances.h). Plain integer C++ on the
// fp32 bit pattern, the algorithm of bertsilicon/formats/__init__.py; the per-path target attribute
// lets the compiler vectorise the Philox loop.
//
//   x = (-1)^s sig 2^(E - 23);  d = 23 - m + max(0, emin - E);  q = sig >> d;  rem = sig mod 2^d
//   nearest-even: q += rem > 2^(d-1) or (rem == 2^(d-1) and q odd)
//   stochastic:   q += r < t,  t = rem << (32 - d) (d <= 32) or rem >> (d - 32);  r = Philox word
//   result = (-1)^s q 2^(d + E - 23), then the overflow policy above max_finite; NaN stays NaN.
// Bytes per element: read + write sizeof(dtype) each; ~10 integer ops, + ~60 for Philox-10.
constexpr int64_t ROUND_BLOCK = 256;

static inline uint32_t philox_word(uint64_t seed, uint32_t counter) {
  uint32_t c0 = counter, c1 = 0, c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t pb = uint64_t(0xCD9E8D57u) * c2, pa = uint64_t(0xD2511F53u) * c0;
    c0 = uint32_t(pb >> 32) ^ c1 ^ k0;
    c1 = uint32_t(pb);
    c2 = uint32_t(pa >> 32) ^ c3 ^ k1;
    c3 = uint32_t(pa);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

static inline float round_one(float xf, uint32_t r, const RoundArgs& a) {
  uint32_t u;
  std::memcpy(&u, &xf, 4);
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return xf;  // NaN stays NaN
  double res;
  if (mag == 0x7f800000u) {
    res = INFINITY;
  } else {
    const int32_t ex = int32_t(mag >> 23);
    const uint64_t sig = ex ? ((mag & 0x7fffffu) | 0x800000u) : (mag & 0x7fffffu);
    const int32_t E = ex ? ex - 127 : -126;
    const int32_t d = 23 - a.mbits + (a.emin > E ? a.emin - E : 0);
    const int32_t dc = d > 62 ? 62 : d;
    uint64_t q = sig >> dc;
    const uint64_t rem = sig - (q << dc);
    // branch-free: the up/down decision is data-dependent and would mispredict half the time
    uint64_t up;
    if (a.stochastic) {
      const uint64_t t = d <= 32 ? rem << (32 - d) : rem >> (d - 32 > 62 ? 62 : d - 32);
      up = uint64_t(r) < t;
    } else {
      const uint64_t half = dc > 0 ? uint64_t(1) << (dc - 1) : uint64_t(1) << 62;
      up = uint64_t(rem > half) | (uint64_t(rem == half) & q & 1u);
    }
    q += up;
    // q 2^(d + E - 23) exactly, in double (2^k built from its exponent bits; k in [-150, 128])
    const int64_t k = int64_t(d) + E - 23;
    const uint64_t pbits = uint64_t(k + 1023) << 52;
    double p2;
    std::memcpy(&p2, &pbits, 8);
    res = double(q) * p2;
  }
  if (res > a.max_finite) res = a.saturate ? a.max_finite : (a.ieee ? INFINITY : NAN);
  return std::copysign(float(res), xf);
}

template <class E>
static inline float load_elem(const E* p, int64_t i) { return to_f32(p[i]); }
template <>
inline float load_elem<uint16_t>(const uint16_t* p, int64_t i) { return f16_to_f32(p[i]); }
static inline void store_elem(float* p, int64_t i, float v) { p[i] = v; }
static inline void store_elem(bf16* p, int64_t i, float v) { p[i].bits = f32_to_bf16(v); }
static inline void store_elem(uint16_t* p, int64_t i, float v) { p[i] = f32_to_f16(v); }

template <class E>
static void round_to_typed(const RoundArgs& a) {
  const E* x = static_cast<const E*>(a.x);
  E* out = static_cast<E*>(a.out);
  parallel_for(a.n, a.threads, 16 * ROUND_BLOCK, [&](int64_t i0, int64_t i1) {
    uint32_t rbits[ROUND_BLOCK];
    for (int64_t b = i0; b < i1; b += ROUND_BLOCK) {
      const int64_t nb = i1 - b < ROUND_BLOCK ? i1 - b : ROUND_BLOCK;
      if (a.stochastic)
        for (int64_t j = 0; j < nb; ++j) rbits[j] = philox_word(a.seed, uint32_t(b + j));  // counter mod 2^32
      for (int64_t j = 0; j < nb; ++j)
        store_elem(out, b + j, round_one(load_elem(x, b + j), a.stochastic ? rbits[j] : 0u, a));
    }
  });
}

static void round_to(const RoundArgs& a) {
  switch (a.dtype) {
    case DType::BF16: round_to_typed<bf16>(a); break;
    case DType::F16: round_to_typed<uint16_t>(a); break;
    default: round_to_typed<float>(a); break;
  }
}

static void philox_bits(uint64_t seed, uint64_t start, uint32_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = philox_word(seed, uint32_t(start + uint64_t(i)));
}
