// Body of the GEMM micro-kernel and its epilogue, included once per instruction-set namespace in
// gemm.cpp (gemm512 with Vec = VecAvx512, NV = 4: a 6 x 64 tile of 24 zmm accumulators; gemm256
// with Vec = VecAvx2, NV = 2: a 6 x 16 tile of 12 ymm accumulators), under that path's target.
// Before including, the namespace defines: VI (integer vector), NV (vectors per tile row), load_b,
// bcast, sub_i32, i32_to_f32, store_out, and the Mac structs (mac(acc, a, b), add(acc, partial)).
// No #pragma once: included on purpose more than once.
using F = Vec::F;

static inline __attribute__((always_inline)) F activate(F y, Activation act) {
  switch (act) {
    case Activation::Gelu: return vgelu_erf(y);
    case Activation::GeluTanh: return vgelu_tanh(y);
    case Activation::Relu: return Vec::select(Vec::lt(y, Vec::zero()), Vec::zero(), y);
    default: return y;
  }
}

// One k-block of one tile: acc = A[m0 : m0 + R, k-block] @ B_panel[k-block] (+ the running sum of
// the earlier k-blocks, kept in `partial`, an R x NR fp32/int32 tile in L1). `a` is row m0's group at
// step s0 (in t.a itself, or in the driver's copy of the k-block), `lda` its row stride in groups. Not the last block:
// store the running sum back. The last block: the epilogue (int8: minus the u8-shift compensation,
// dequantize; + bias; activation; rounding to the output type) runs on the registers before the
// tile's only store to the output.
//
// A Mac whose step needs a temporary per product (int16 pairs: vpmaddwd, then vpaddd) declares
// kMaxRows < 6: R accumulators rows plus the B vectors, R broadcasts and the temporaries would not fit
// the register file (16 ymm / 32 zmm) and the compiler would spill accumulators to the stack in the
// inner loop; a taller tile is then run as sub-tiles of kMaxRows rows (B re-read from L1).
template <class Mac, int R>
static void tile(const Tiles& t, const uint32_t* a, int64_t lda, int64_t m0, int64_t panel, int64_t s0, int64_t s1,
                 float* partial) {
  constexpr int W = Vec::W, NR = NV * W;
  if constexpr (R > Mac::kMaxRows) {
    tile<Mac, Mac::kMaxRows>(t, a, lda, m0, panel, s0, s1, partial);
    tile<Mac, R - Mac::kMaxRows>(t, a + Mac::kMaxRows * lda, lda, m0 + Mac::kMaxRows, panel, s0, s1,
                                 partial + Mac::kMaxRows * NR);
    return;
  }
  F acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec::zero();
  const int32_t* b = t.b + (panel * t.steps + s0) * NR;
  for (int64_t j = 0; j < s1 - s0; ++j, b += NR) {
    VI bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = load_b(b + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const VI av = bcast(a[r * lda + j]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Mac::mac(acc[r][v], av, bv[v]);
    }
  }
  if (s0 > 0)  // add the earlier k-blocks (fp32 add, or int32 add for the integer kernels)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Mac::add(acc[r][v], Vec::load(partial + (r * NV + v) * W));
  if (s1 < t.steps) {  // not the last k-block: keep the running sum
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) Vec::store(partial + (r * NV + v) * W, acc[r][v]);
    return;
  }

  const Epilogue& ep = t.ep;
  const int64_t n0 = panel * NR, cols = std::min<int64_t>(NR, t.N - n0);
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    if (v * W >= cols) break;
    const int vc = int(std::min<int64_t>(W, cols - v * W));
    const int64_t n = n0 + v * W;
    const F ws = t.w_scale ? Vec::loadn(t.w_scale + n, vc) : Vec::zero();
    const F bias = ep.bias ? Vec::loadn(ep.bias + n, vc) : Vec::zero();
    const F comp = t.comp ? Vec::loadn(reinterpret_cast<const float*>(t.comp + n), vc) : Vec::zero();  // int bits
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int64_t i = (m0 + r) * ep.ldo + n;
      F y = acc[r][v];
      if (t.x_scale) {  // int8: exact int32 sum -> dequantize (or store the sum itself)
        y = sub_i32(y, comp);
        if (ep.out_type == OutType::S32) {
          store_out(ep, i, y, vc);
          continue;
        }
        // y (x_scale w_scale): overflows only with the result (an int sum is 0 or >= 1 in magnitude), but
        // where the sum is 0 and x_scale w_scale alone overflows, inf * 0 would be NaN: there (0 x_scale)
        // w_scale, the reference's 0 (NaN only for a NaN / inf scale)
        const F xs = Vec::set1(t.x_scale[m0 + r]), yf = i32_to_f32(y);
        y = Vec::select(Vec::eq(yf, Vec::zero()), Vec::mul(Vec::mul(yf, xs), ws), Vec::mul(yf, Vec::mul(xs, ws)));
      }
      if (ep.bias) y = Vec::add(y, bias);
      store_out(ep, i, activate(y, ep.act), vc);
    }
  }
}
