// Entry points of the GEMM family (gemm.cpp) and quantize (quantize.cpp); bound in gemm_bindings.cpp.
// Callers (Python) validate dtypes, shapes and contiguity; these functions trust them.
#pragma once

#include "gemm_common.h"

namespace bs {

// The packed layout the active instruction-set path uses for weights of element type t; for int8,
// weight_7bit says every |w| <= kU8S7MaxWeight (the AVX2 path then takes the u8 x s7 kernel).
PackKind gemm_pack_kind(ElemType t, bool weight_7bit = false);
// Whether every one of the n int8 values is within [-kU8S7MaxWeight, kU8S7MaxWeight].
bool fits_7bit(const int8_t* w, int64_t n);
bool gemm_kind_runs_here(PackKind kind);
int64_t gemm_packed_bytes(PackKind kind, int64_t N, int64_t K);
// Pack weight w [N, K] (fp32, bf16 or int8, row-major) into dst (gemm_packed_bytes bytes).
void gemm_pack(PackKind kind, const void* w, ElemType wt, int64_t N, int64_t K, void* dst, int threads);

// out = act(x [M, K] @ W^T + bias); w is packed in `kind` (or, for PackKind::Raw, W itself).
void linear(PackKind kind, const void* x, ElemType xt, int64_t M, int64_t K, const void* w, int64_t N,
            const Epilogue& ep, int threads);
// out = act((x_q @ W_q^T) * x_scale[m] * w_scale[n] + bias) with exact int32 sums;
// ep.out_type == S32 stores the raw int32 sums instead (x_scale/w_scale unused but non-null).
void int8_linear(PackKind kind, const int8_t* x, int64_t M, int64_t K, const void* w, int64_t N,
                 const float* x_scale, const float* w_scale, const Epilogue& ep, int threads);
// Dynamic int8 linear from float activations: x [M, K] (fp32 or bf16; times inv_smooth [K] first when
// non-null) is quantized per row as quantize() does (its scales written to x_scale [M]) straight into
// the GEMM's operand, then int8_linear. Bit-identical to quantize() followed by int8_linear().
void int8_linear_dynamic(PackKind kind, const void* x, ElemType xt, int64_t M, int64_t K, const float* inv_smooth,
                         const void* w, int64_t N, const float* w_scale, float* x_scale, const Epilogue& ep,
                         int threads);
// y = act(y + bias) in place on a contiguous [M, N] fp32 or bf16 tensor.
void epilogue_inplace(void* y, ElemType yt, int64_t M, int64_t N, const float* bias, Activation act, int threads);

// Symmetric int8 quantization of x viewed as [rows, cols] (fp32 or bf16): one scale per row, or one
// for the whole tensor when per_tensor. scale = amax / 127 (1 where amax == 0), q = rne(x / scale)
// clamped to +-127; NaN in a group -> its scale NaN and its q 0. Bit-identical to reference.quantize.
void quantize(const void* x, ElemType xt, int64_t rows, int64_t cols, bool per_tensor, int8_t* q, float* scale,
              int threads);
// One group (a row of n values) of the above, single-threaded; returns its scale. Every stored byte
// is XORed with `flip` (0x80: q + 128 as uint8, the VNNI kernel's shifted activations).
float quantize_row(const void* x, ElemType xt, int64_t n, int8_t* q, uint8_t flip);

}  // namespace bs
