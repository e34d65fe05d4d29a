// add_layernorm: LayerNorm(x + residual) * weight + bias with fp32 statistics, fp32/bf16 in and out.
// The kernel body is layernorm_impl.h, compiled once per instruction set.
#include <vector>

#include "kernels.h"

#define BS_ISA_BODY "layernorm_impl.h"
#include "isa_instances.h"

namespace bs {

void add_layernorm(DType dtype, const void* x, const void* residual, const float* weight, const float* bias,
                   void* out, int64_t rows, int64_t n, float eps, int threads) {
  BS_ISA_DISPATCH(add_layernorm, dtype, x, residual, weight, bias, out, rows, n, eps, threads);
}

}  // namespace bs
