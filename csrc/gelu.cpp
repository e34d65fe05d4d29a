// bias_gelu: gelu(x + bias), erf or tanh form, fp32/bf16; and the vector math exposed for tests.
// The kernel body is gelu_impl.h, compiled once per instruction set.
#include "kernels.h"

#define BS_ISA_BODY "gelu_impl.h"
#include "isa_instances.h"

namespace bs {

void bias_gelu(DType dtype, bool tanh_form, const void* x, const float* bias, void* out, int64_t rows,
               int64_t n, int threads) {
  BS_ISA_DISPATCH(bias_gelu, dtype, tanh_form, x, bias, out, rows, n, threads);
}

void eval_math(int which, const float* x, float* out, int64_t n) { BS_ISA_DISPATCH(eval_math, which, x, out, n); }

}  // namespace bs
