// attention / attention_varlen: flash-style tiled attention with a key-padding mask, fp32/bf16.
// The kernel body is attention_impl.h, compiled once per instruction set.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

#define BS_ISA_BODY "attention_impl.h"
#include "isa_instances.h"

namespace bs {

void attention(const AttnArgs& a) { BS_ISA_DISPATCH(attention, a); }

}  // namespace bs
