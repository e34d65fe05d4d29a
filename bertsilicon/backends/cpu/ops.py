"""The ``cpu`` backend's element-wise, normalisation, attention and rounding ops: C++ kernels from
``bertsilicon._C`` (csrc/), wrapped with the checks C++ relies on.

C++ trusts its caller, so every check that protects memory happens here: dtype, device, contiguity and
sizes; the C++ side gets raw pointers (and element strides where views are allowed). Each ``_check_*``
returns ``None`` or the reason this backend cannot serve the input (see :mod:`bertsilicon.backends.routing`).
The kernels release the GIL and use torch's intra-op thread count.

Dtypes: attention, bias_gelu and add_layernorm take float32 or bfloat16 (fp32 math); round_to takes
float32, bfloat16 or float16.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import _C
from ... import formats as _formats
from ...validation import contiguous, first_reason
from ..registry import register
from .runtime import DTYPE_CODE, F32_BF16, dtype_reason, f32, last_dim_reason, threads

# ---------------------------------------------------------------------------------------------- #
# add_layernorm, bias_gelu                                                                        #
# ---------------------------------------------------------------------------------------------- #
def _check_add_layernorm(x, residual, weight, bias, eps) -> Optional[str]:
    return first_reason(dtype_reason("x", x, F32_BF16), contiguous("x", x), contiguous("residual", residual))


@register("add_layernorm", "cpu", check=_check_add_layernorm)
def add_layernorm(x, residual, weight, bias, eps):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.shape[-1]
    if x.numel() == 0:
        return out
    w, b = f32(weight), f32(bias)
    _C.add_layernorm(DTYPE_CODE[x.dtype], x.data_ptr(), residual.data_ptr(), w.data_ptr(), b.data_ptr(),
                     out.data_ptr(), x.numel() // n, n, float(eps), threads())
    return out


def _check_bias_gelu(x, bias, approximate) -> Optional[str]:
    return first_reason(dtype_reason("x", x, F32_BF16), contiguous("x", x))


@register("bias_gelu", "cpu", check=_check_bias_gelu)
def bias_gelu(x, bias, approximate):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.shape[-1]
    if x.numel() == 0:
        return out
    b = f32(bias)
    _C.bias_gelu(DTYPE_CODE[x.dtype], approximate == "tanh", x.data_ptr(), b.data_ptr(), out.data_ptr(),
                 x.numel() // n, n, threads())
    return out


# ---------------------------------------------------------------------------------------------- #
# attention, attention_varlen                                                                     #
# ---------------------------------------------------------------------------------------------- #
def _check_attention(q, k, v, attention_mask, scale) -> Optional[str]:
    return first_reason(dtype_reason("q", q, F32_BF16),
                        last_dim_reason("q", q), last_dim_reason("k", k), last_dim_reason("v", v))


def _strides(*tensors: torch.Tensor) -> list[int]:
    """(batch, head, row) element strides of each 4-D tensor, in order."""
    return [s for t in tensors for s in t.stride()[:3]]


@register("attention", "cpu", check=_check_attention)
def attention(q, k, v, attention_mask, scale):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    keep = None if attention_mask is None else attention_mask.ne(0).to(torch.uint8).contiguous()
    _C.attention(DTYPE_CODE[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H, Lq, Lk, D,
                 _strides(q, k, v, out), 0 if keep is None else keep.data_ptr(), 0,
                 D ** -0.5 if scale is None else float(scale), threads())
    return out


def _check_attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale) -> Optional[str]:
    return _check_attention(q, k, v, None, scale)


@register("attention_varlen", "cpu", check=_check_attention_varlen)
def attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    T, H, D = q.shape
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    cu = cu_seqlens.to(torch.int32).contiguous()
    B = cu.numel() - 1
    # [T, H, D] seen as B sequences: batch stride unused, head stride, row (token) stride
    strides = [0, q.stride(1), q.stride(0), 0, k.stride(1), k.stride(0), 0, v.stride(1), v.stride(0),
               0, out.stride(1), out.stride(0)]
    _C.attention(DTYPE_CODE[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H,
                 max_seqlen, max_seqlen, D, strides, 0, cu.data_ptr(),
                 D ** -0.5 if scale is None else float(scale), threads())
    return out


# ---------------------------------------------------------------------------------------------- #
# round_to                                                                                        #
# ---------------------------------------------------------------------------------------------- #
def _check_round_to(x, fmt, rounding, seed) -> Optional[str]:
    reason = first_reason(dtype_reason("x", x, _formats.INPUT_DTYPES), contiguous("x", x))
    if reason is None and rounding not in ("nearest", "stochastic"):
        reason = f"rounding={rounding!r}: the cpu kernel does 'nearest' and 'stochastic'"
    f = _formats.get_format(fmt)
    if reason is None and not (isinstance(f, _formats.FloatFormat) and getattr(f, "subnormals", True)):
        reason = (f"fmt={f.name!r}: the cpu kernel rounds to float formats with subnormals "
                  "(bf16, fp16, e4m3, e5m2, e{E}m{M}); fixed point, integer and no-subnormal formats use the reference")
    return reason


def round_format_args(fmt) -> tuple:
    """``(mbits, emin, max_finite, ieee, saturate)`` of a float format as the C++ round_to kernel takes
    them (``saturate``: the format's default overflow policy); also what the one-call encoder layer gives
    its fp16 GEMMs' input rounding (``EncoderLayerPlan.set_input_rounding``), so both round alike."""
    f = _formats.get_format(fmt)
    return f.mbits, f.emin, f.max_finite, f.ieee, _formats.default_overflow(f) == "saturate"


@register("round_to", "cpu", check=_check_round_to)
def round_to(x, fmt, rounding, seed):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out
    mbits, emin, max_finite, ieee, saturate = round_format_args(fmt)
    stochastic = rounding == "stochastic"
    _C.round_to(DTYPE_CODE[x.dtype], x.data_ptr(), out.data_ptr(), x.numel(), mbits, emin, max_finite,
                ieee, stochastic, (int(seed) & 0xFFFFFFFFFFFFFFFF) if stochastic else 0, saturate, threads())
    return out
