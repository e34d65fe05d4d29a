// add_nonorm: (z + residual) * gamma + beta, MobileBERT's NoNorm, fp32/bf16; rounded step by step as torch.
// The kernel body is nonorm_impl.h, compiled once per instruction set.
#include <algorithm>
#include <type_traits>

#include "kernels.h"

#define BS_ISA_BODY "nonorm_impl.h"
#include "isa_instances.h"

namespace bs {

void add_nonorm(DType dtype, const void* z, int64_t z_ld, const void* residual, const float* gamma,
                const float* beta, void* out, int64_t rows, int64_t n, int threads) {
  BS_ISA_DISPATCH(add_nonorm, dtype, z, z_ld, residual, gamma, beta, out, rows, n, threads);
}

}  // namespace bs
