"""The ``triton`` backend: launchers from ``bertsilicon.kernels``, with the checks they rely on.

Runs on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``). Each
check returns None when the kernel can serve the arguments, else the reason (dispatch then raises for an
explicit ``backend="triton"`` and uses the reference for ``backend=None``). What the kernels take:
fp32 / bf16 / fp16 tensors (int8 for the int8 GEMM), innermost dim contiguous (other strides are free),
attention head dims up to 128.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import formats as _formats
from ... import kernels  # noqa: F401  (ImportError marks the backend unavailable)
from ...kernels import attention as _attn
from ...kernels import elementwise as _ew
from ...kernels import gemm as _gemm
from ...kernels import layernorm as _ln
from ...validation import first_reason
from ..registry import register

FLOAT16_32 = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 128


def _last_dim_contiguous(name: str, t: Optional[torch.Tensor]) -> Optional[str]:
    if t is not None and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        return f"{name} must have a contiguous last dim (strides {t.stride()}); call .contiguous() first"
    return None


def _float_dtype(name: str, t: Optional[torch.Tensor]) -> Optional[str]:
    if t is not None and t.dtype not in FLOAT16_32:
        return f"{name} has dtype {t.dtype}; the triton kernels take float32, bfloat16 or float16"
    return None


# ---------------------------------------------------------------------------------------------- #
# attention                                                                                       #
# ---------------------------------------------------------------------------------------------- #
def _check_head_dim(D: int) -> Optional[str]:
    if D > MAX_HEAD_DIM:
        return f"head dim {D} > {MAX_HEAD_DIM} is not supported by the triton attention kernel"
    return None


def _check_attention(q, k, v, attention_mask, scale) -> Optional[str]:
    return first_reason(_float_dtype("q", q), _check_head_dim(q.shape[-1]),
                        *(_last_dim_contiguous(n, t) for n, t in (("q", q), ("k", k), ("v", v))))


@register("attention", "triton", check=_check_attention)
def attention(q, k, v, attention_mask, scale):
    return _attn.attention(q, k, v, attention_mask, scale)


def _check_attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale) -> Optional[str]:
    return _check_attention(q, k, v, None, scale)


@register("attention_varlen", "triton", check=_check_attention_varlen)
def attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    return _attn.attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale)


# ---------------------------------------------------------------------------------------------- #
# element-wise and row-wise                                                                       #
# ---------------------------------------------------------------------------------------------- #
def _check_bias_gelu(x, bias, approximate) -> Optional[str]:
    return first_reason(_float_dtype("x", x), _float_dtype("bias", bias), _last_dim_contiguous("x", x))


@register("bias_gelu", "triton", check=_check_bias_gelu)
def bias_gelu(x, bias, approximate):
    return _ew.bias_gelu(x, bias, approximate)


def _check_add_layernorm(x, residual, weight, bias, eps) -> Optional[str]:
    return first_reason(_float_dtype("x", x), _float_dtype("weight", weight), _float_dtype("bias", bias),
                        _last_dim_contiguous("x", x), _last_dim_contiguous("residual", residual))


@register("add_layernorm", "triton", check=_check_add_layernorm)
def add_layernorm(x, residual, weight, bias, eps):
    return _ln.add_layernorm(x, residual, weight.contiguous(), bias.contiguous(), eps)


def _check_quantize(x, dtype, granularity) -> Optional[str]:
    reason = _float_dtype("x", x)
    if reason is None and granularity == "per_token":
        reason = _last_dim_contiguous("x", x)
    return reason


@register("quantize", "triton", check=_check_quantize)
def quantize(x, dtype, granularity):
    return _ew.quantize(x, granularity)


def _check_round_to(x, fmt, rounding, seed) -> Optional[str]:
    if rounding not in ("nearest", "stochastic"):
        return f"rounding={rounding!r}: the triton kernel does 'nearest' and 'stochastic'"
    if isinstance(_formats.get_format(fmt), _formats.IntFormat):
        return f"fmt={fmt!r} is an integer format (it needs a scale); the triton kernel does float and fixed-point formats"
    return _float_dtype("x", x)


@register("round_to", "triton", check=_check_round_to)
def round_to(x, fmt, rounding, seed):
    return _ew.round_to(x, fmt, rounding, seed)


# ---------------------------------------------------------------------------------------------- #
# GEMMs                                                                                           #
# ---------------------------------------------------------------------------------------------- #
def _check_linear(x, weight, bias, activation) -> Optional[str]:
    return first_reason(_float_dtype("x", x), _float_dtype("bias", bias))


@register("linear", "triton", check=_check_linear)
def linear(x, weight, bias, activation):
    return _gemm.linear(x, weight, bias, activation)


def _int8_dot_supported(t: torch.Tensor) -> Optional[str]:
    if t.device.type == "cuda" and torch.cuda.get_device_capability(t.device) < (8, 0):
        return (f"int8 tl.dot needs compute capability >= 8.0 (Ampere; triton does not compile it for sm_7x: "
                f"bench/results/gpu/sass_sm75.md); {torch.cuda.get_device_name(t.device)} has "
                + ".".join(map(str, torch.cuda.get_device_capability(t.device))))
    return None


def _check_int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype) -> Optional[str]:
    return first_reason(_int8_dot_supported(x_q), _float_dtype("bias", bias), _float_dtype("x_scale", x_scale),
                        _float_dtype("w_scale", w_scale))


@register("int8_linear", "triton", check=_check_int8_linear)
def int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype):
    return _gemm.int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)
