// Body of round_to (one instance per instruction set; see isa_instances.h). Integer arithmetic on the
// fp32 bit pattern, the algorithm of bertsilicon/formats/__init__.py: 16 lanes at a time in GCC vector
// extensions (round16, philox8) compiled under each path's target, plus a scalar double-based
// round_one for the formats the vector form does not cover.
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

// philox_word for 8 consecutive counters: the 32 x 32 -> 64-bit products in 64-bit lanes (operands
// masked to 32 bits, so the compiler emits vpmuludq), words written to out[0..8).
typedef uint64_t u64x8 __attribute__((vector_size(64)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) void philox8(uint64_t seed, uint32_t counter, uint32_t* out) {
  const u64x8 zero = {}, mask = zero + 0xffffffffu;  // every lane holds a 32-bit value
  u64x8 c0 = zero, c1 = zero, c2 = zero, c3 = zero;
  for (int i = 0; i < 8; ++i) c0[i] = uint32_t(counter + uint32_t(i));  // counter mod 2^32
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const u64x8 pb = (c2 & mask) * 0xCD9E8D57u, pa = (c0 & mask) * 0xD2511F53u;
    c0 = (pb >> 32) ^ c1 ^ k0;
    c1 = pb & mask;
    c2 = (pa >> 32) ^ c3 ^ k1;
    c3 = pa & mask;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const u32x8 w = __builtin_convertvector(c0, u32x8);
  std::memcpy(out, &w, 32);
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

// The same rounding, 16 lanes at a time, for formats whose values are all fp32 numbers (1 <= m <= 22,
// emin - m >= -149, max_finite an fp32 value: bf16, fp16, the fp8s, most custom e{E}m{M}): 32-bit
// integer arithmetic on the bit patterns and one fp32 multiply, in GCC vector extensions (vpsrlvd,
// vpsllvd, compares, blends on AVX-512; pairs of ymm on AVX2; SSE2 on the scalar path). The result
// q 2^k (k = d + E - 23 >= emin - m >= -149, q <= 2^(m+1)) is an fp32 number or overflows to +inf,
// so float(q) * 2^k is exact. Shift counts are clamped to [0, 31]; sig < 2^24 makes every clamped
// shift give the unclamped result (sig >> d = 0 for d >= 24; half = 2^30 > rem where the clamp bites).
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef float f32x16 __attribute__((vector_size(64)));

struct FastRound {
  int32_t mbits, emin;
  bool stochastic;
  uint32_t max_bits, over_bits;  // bit patterns of max_finite and of what replaces values above it
};

static inline bool fast_round_ok(const RoundArgs& a) {
  return a.mbits >= 1 && a.mbits <= 22 && a.emin - a.mbits >= -149 && a.max_finite <= 3.4028234663852886e38 &&
         double(float(a.max_finite)) == a.max_finite;
}

static inline FastRound fast_round_args(const RoundArgs& a) {
  const float mf = float(a.max_finite), over = a.saturate ? mf : (a.ieee ? INFINITY : NAN);
  FastRound f{a.mbits, a.emin, a.stochastic, 0, 0};
  std::memcpy(&f.max_bits, &mf, 4);
  std::memcpy(&f.over_bits, &over, 4);
  return f;
}

static inline __attribute__((always_inline)) i32x16 clamp31(i32x16 v) {
  const i32x16 zero = {};
  v = v < zero ? zero : v;
  return v > zero + 31 ? zero + 31 : v;
}

// u: 16 fp32 bit patterns; r: their Philox words (stochastic). Returns the rounded bit patterns.
static inline __attribute__((always_inline)) u32x16 round16(u32x16 u, u32x16 r, const FastRound& a) {
  const i32x16 zero = {};
  const u32x16 uzero = {};
  const u32x16 mag = u & 0x7fffffffu;
  const i32x16 ex = (i32x16)(mag >> 23);
  const i32x16 normal = ex != zero;
  const u32x16 sig = (mag & 0x7fffffu) | ((u32x16)normal & 0x800000u);
  const i32x16 E = normal ? ex - 127 : zero - 126;
  const i32x16 under = a.emin - E;
  const i32x16 d = (23 - a.mbits) + (under > zero ? under : zero);  // >= 1
  const u32x16 dc = (u32x16)clamp31(d);
  u32x16 q = sig >> dc;
  const u32x16 rem = sig - (q << dc);
  i32x16 up;
  if (a.stochastic) {  // up with probability rem / 2^d: r < rem 2^(32 - d) (or rem >> (d - 32))
    const u32x16 t = d <= 32 ? rem << (u32x16)clamp31(32 - d) : rem >> (u32x16)clamp31(d - 32);
    up = r < t;
  } else {             // nearest, ties to even
    const u32x16 half = (uzero + 1u) << (dc - 1u);
    up = (rem > half) | ((rem == half) & ((q & 1u) != uzero));
  }
  q -= (u32x16)up;  // up is -1 / 0
  const i32x16 k = d + E - 23;
  const u32x16 p2 = k >= -126 ? (u32x16)(k + 127) << 23 : (uzero + 1u) << (u32x16)((k + 149) & 31);
  const f32x16 res = __builtin_convertvector(q, f32x16) * (f32x16)p2;  // >= 0: bits order as values
  u32x16 rb = (u32x16)res;
  rb = (rb > a.max_bits ? uzero + a.over_bits : rb) | (u & 0x80000000u);  // overflow policy, x's sign
  return mag > 0x7f800000u ? u : rb;                                       // NaN stays NaN
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
  const bool fast = fast_round_ok(a);
  const FastRound fa = fast_round_args(a);
  parallel_for(a.n, a.threads, 16 * ROUND_BLOCK, [&](int64_t i0, int64_t i1) {
    alignas(64) uint32_t rbits[ROUND_BLOCK] = {};
    alignas(64) float v[ROUND_BLOCK] = {};
    for (int64_t b = i0; b < i1; b += ROUND_BLOCK) {
      const int64_t nb = i1 - b < ROUND_BLOCK ? i1 - b : ROUND_BLOCK;
      if (a.stochastic)
        for (int64_t j = 0; j < nb; j += 8) philox8(a.seed, uint32_t(b + j), rbits + j);  // counter mod 2^32
      for (int64_t j = 0; j < nb; ++j) v[j] = load_elem(x, b + j);
      if (fast) {
        for (int64_t j = 0; j < nb; j += 16) {  // whole vectors: lanes past nb are never stored
          u32x16 u, r;
          std::memcpy(&u, v + j, 64);
          std::memcpy(&r, rbits + j, 64);
          u = round16(u, r, fa);
          std::memcpy(v + j, &u, 64);
        }
      } else {
        for (int64_t j = 0; j < nb; ++j) v[j] = round_one(v[j], rbits[j], a);
      }
      for (int64_t j = 0; j < nb; ++j) store_elem(out, b + j, v[j]);
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
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) philox8(seed, uint32_t(start + uint64_t(i)), out + i);
  for (; i < n; ++i) out[i] = philox_word(seed, uint32_t(start + uint64_t(i)));
}
