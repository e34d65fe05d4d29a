"""Plain-torch definitions of every op: the meaning of ``bertsilicon.ops`` and the fallback backend.

Arithmetic is done in ``acc = promote(input dtype, float32)``: float32 for fp32/bf16/fp16 inputs and
float64 for float64 inputs, so calling these functions on float64 tensors *is* the float64 reference the
tests compare every kernel against. Results are cast back to the input dtype (or ``out_dtype``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import formats
from .formats import INT8_GRANULARITIES as GRANULARITIES  # noqa: F401  (the int8 op's definition)
from .formats import quant_reduce_dims  # noqa: F401

ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu")
INT8_MAX = 127


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def gelu(h: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU with its limits at infinity stated: gelu(+inf) = +inf, gelu(-inf) = 0 (both forms).
    torch's own F.gelu returns NaN there (0 * inf inside the formula), and its erf form overflows to inf
    for h above half the dtype's largest value; above 10 gelu(h) is h itself in every float dtype
    (Phi(10) = 1 - 7.6e-24, and the tanh form's 1 + tanh rounds to 2), so h is taken. NaN stays NaN."""
    y = F.gelu(h, approximate=approximate)
    return torch.where(torch.isinf(h) | (h > 10), torch.where(h > 0, h, torch.zeros_like(h)), y)


def activate(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    """Apply an epilogue activation (``None | "gelu" | "gelu_tanh" | "relu"``)."""
    if activation is None:
        return y
    if activation == "gelu":
        return gelu(y)
    if activation == "gelu_tanh":
        return gelu(y, "tanh")
    if activation == "relu":
        return F.relu(y)
    raise ValueError(f"activation={activation!r} is unknown; expected one of {ACTIVATIONS}")


def attention(q, k, v, attention_mask=None, scale=None):
    """softmax(q k^T * scale + mask) v with a key-padding mask.

    q ``[B, H, Lq, D]``, k and v ``[B, H, Lk, D]``, ``attention_mask`` ``[B, Lk]`` (nonzero = real token,
    0 = padding: that key gets no weight and its v is never read). Scores, softmax and the weighted sum are computed in fp32
    (float64 for float64 inputs). A query whose keys are all padding gets an all-zero output row (the
    FlashAttention convention; the model wrapper re-pads such rows as Hugging Face does).
    """
    acc = _acc(q.dtype)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if attention_mask is None:
        p = torch.softmax(s, dim=-1)
    else:
        keep = attention_mask.bool()[:, None, None, :]
        p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
        p = torch.where(keep.any(dim=-1, keepdim=True), p, torch.zeros((), dtype=acc, device=p.device))
        # padded keys never contribute, not even a NaN in their v (0 * NaN would be NaN)
        v = v.masked_fill(~keep.transpose(-1, -2), 0)
    return torch.matmul(p, v.to(acc)).to(q.dtype)


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """Attention on packed tokens (no padding anywhere): q, k, v ``[T, H, D]`` hold B sequences back to
    back; sequence ``i`` is tokens ``cu_seqlens[i]:cu_seqlens[i+1]`` and attends only to itself.
    ``cu_seqlens`` int32 ``[B + 1]`` (0 first, T last, non-decreasing); ``max_seqlen`` its largest gap
    (a hint for kernels). Returns ``[T, H, D]`` in q's dtype; fp32 softmax and accumulation.
    """
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:  # [L, H, D] -> [1, H, L, D]
            seq = [t[s:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v)]
            out[s:e] = attention(*seq, None, scale)[0].transpose(0, 1)
    return out


def bias_gelu(x, bias, approximate="none"):
    """gelu(x + bias), exact erf form (``"none"``) or the tanh approximation (``"tanh"``)."""
    acc = _acc(x.dtype)
    return gelu(x.to(acc) + bias.to(acc), approximate).to(x.dtype)


def add_layernorm(x, residual, weight, bias, eps=1e-12):
    """LayerNorm(x + residual) over the last dim, statistics in fp32 (biased variance, as nn.LayerNorm)."""
    acc = _acc(x.dtype)
    h = x.to(acc) + residual.to(acc)
    return F.layer_norm(h, (h.shape[-1],), weight.to(acc), bias.to(acc), eps).to(x.dtype)


def linear(x, weight, bias=None, activation=None):
    """activation(x @ weight^T + bias); x ``[..., K]``, weight ``[N, K]`` as in nn.Linear."""
    acc = _acc(x.dtype)
    y = F.linear(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc))
    return activate(y, activation).to(x.dtype)


def quantize(x, dtype="int8", granularity="per_token", qmax: int = INT8_MAX):
    """Symmetric int8 quantization: ``scale = amax / 127`` (1 where amax == 0), ``q = round_half_even(x / scale)``.
    ``qmax`` narrows the range to ``[-qmax, qmax]`` (63: the 7-bit weights of the AVX2 int8 kernel).

    Returns ``(q int8, scale float32)``; ``scale`` keeps the reduced dims as size 1 so ``q * scale``
    dequantizes. ``per_tensor``: one scale (shape ``[1]*ndim``); ``per_token``: amax over the last dim;
    ``per_channel``: amax over all dims but the first (per output channel of a weight ``[N, K]``).
    ``x / scale`` is computed in fp32 (float64 for float64 x). NaN in a group makes its scale NaN (so
    the dequantized group is NaN) and its q values 0.
    """
    if dtype != "int8":
        raise ValueError(f"dtype={dtype!r} is not supported; expected 'int8'")
    if isinstance(qmax, bool) or not isinstance(qmax, int) or not 1 <= qmax <= INT8_MAX:
        raise ValueError(f"qmax must be an int in [1, {INT8_MAX}], got {qmax!r}")
    acc = _acc(x.dtype)
    xa = x.to(acc)
    dims = quant_reduce_dims(x, granularity)
    if x.numel() == 0:
        shape = [1 if i in dims else s for i, s in enumerate(x.shape)]
        return torch.empty_like(x, dtype=torch.int8), torch.ones(shape, dtype=torch.float32, device=x.device)
    amax = xa.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax == 0, torch.ones((), dtype=acc, device=x.device), amax / qmax)
    q = torch.round(xa / scale).clamp(-qmax, qmax)
    q = torch.nan_to_num(q, nan=0.0)
    return q.to(torch.int8), scale.to(torch.float32)


def int8_linear(x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.float32):
    """activation((x_q @ w_q^T) * x_scale * w_scale + bias), the int8 GEMM with its dequant epilogue.

    x_q int8 ``[..., K]``, x_scale broadcastable to ``[..., 1]`` (per token or per tensor), w_q int8
    ``[N, K]``, w_scale ``[N]``/``[N, 1]`` (per channel) or one value. The integer product is exact (it
    is formed in float64, which holds any int8 dot product of length < 2^39 exactly); the epilogue is
    applied in float64 and the result cast to ``out_dtype``.
    """
    acc = torch.matmul(x_q.to(torch.float64), w_q.to(torch.float64).t())
    xs = x_scale.to(torch.float64).reshape(*x_q.shape[:-1], 1) if x_scale.numel() > 1 else x_scale.to(torch.float64).reshape(())
    ws = w_scale.to(torch.float64).reshape(-1) if w_scale.numel() > 1 else w_scale.to(torch.float64).reshape(())
    y = acc * xs * ws
    if bias is not None:
        y = y + bias.to(torch.float64)
    return activate(y, activation).to(out_dtype)


def round_to(x, fmt="bf16", rounding="nearest", seed=None):
    """Values of ``fmt`` nearest (ties to even) or stochastically rounded; see :mod:`bertsilicon.formats`."""
    return formats.round_to(x, fmt, rounding, seed)
