// round_to (nearest-even, stochastic with Philox4x32-10), bit-identical to bertsilicon.formats.round_to.
// The kernel body is rounding_impl.h, compiled once per instruction set.
#include "kernels.h"

// The body's 16-lane vector-extension helpers are always inlined into their own path's code, so the
// note that 64-byte vector arguments pass differently without AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#define BS_ISA_BODY "rounding_impl.h"
#include "isa_instances.h"

namespace bs {

void round_to(const RoundArgs& a) { BS_ISA_DISPATCH(round_to, a); }

void philox_bits(uint64_t seed, uint64_t start, uint32_t* out, int64_t n) {
  BS_ISA_DISPATCH(philox_bits, seed, start, out, n);
}

}  // namespace bs
