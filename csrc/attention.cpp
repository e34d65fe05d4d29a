// attention / attention_varlen: flash-style tiled attention with a key-padding mask, fp32/bf16.
// The kernel body is attention_impl.h, compiled once per instruction set; the avx512 instance also
// holds the AVX512_BF16 (vdpbf16ps) variant for bf16 inputs, taken when the CPU has the instructions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

#define BS_ISA_BODY "attention_impl.h"
#define BS_ISA_AVX512_BF16
#include "isa_instances.h"

namespace bs {

void attention(const AttnArgs& a) { BS_ISA_DISPATCH(attention, a); }

}  // namespace bs
