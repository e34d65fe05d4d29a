"""The public op surface: one function per fused op, each with ``backend=None | "reference" | "cpu" | "triton"``.

Every function validates its arguments (a bad argument is a ``TypeError``/``ValueError`` naming it),
then picks a backend (:mod:`bertsilicon.backends.routing`) and calls it. Under ``torch.compile`` the call
goes through the ``torch.ops.bertsilicon.*`` custom ops (:mod:`bertsilicon.ops.library`), so the C++ and
Triton kernels are captured in the graph as opaque nodes.

Meaning of each op: :mod:`bertsilicon.reference`. Dtypes: float ops take fp32, bf16, fp16 (and float64,
served by the reference backend); the result has the input's dtype.

Autograd: the C++ and Triton kernels are forward kernels. When an input requires a gradient (in grad
mode), the op runs its kernel forward and the backward of its reference definition, recomputed from the
saved inputs (:func:`reference_backward`), eagerly and under ``torch.compile`` alike: the gradient is the
same, bit for bit, whichever backend ran the forward.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import formats as _formats
from .. import reference as _ref
from .. import validation as V
from ..backends.registry import BACKENDS, backend_status
from ..backends.routing import available, resolve
from ..validation import check_cu_seqlens
from .autograd import KernelForwardReferenceBackward, reference_backward

__all__ = ["attention", "attention_varlen", "check_cu_seqlens", "bias_gelu", "add_layernorm", "linear", "quantize", "int8_linear", "round_to",
           "reference_backward", "BACKENDS", "available", "backend_status", "which_backend"]

_F = V.FLOAT_DTYPES


def _run(op: str, backend: Optional[str], device: torch.device, *args):
    if torch.compiler.is_compiling():
        from . import library  # noqa: F401  (registers torch.ops.bertsilicon.*)
        return getattr(torch.ops.bertsilicon, op)(*args, backend or "")
    name, fn = resolve(op, backend, device, *args)
    if name != "reference" and _needs_grad(args):
        return KernelForwardReferenceBackward.apply(op, fn, *args)
    return fn(*args)


def _needs_grad(args) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def which_backend(op: str, *args, backend: Optional[str] = None) -> str:
    """The backend that ``op`` would run on for these arguments (raises as the op would)."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    return resolve(op, backend, device, *args)[0]


def attention(q, k, v, attention_mask=None, scale: Optional[float] = None, *, backend: Optional[str] = None):
    """softmax(q k^T * scale, keys masked by ``attention_mask``) v.

    q ``[B, H, Lq, D]``, k/v ``[B, H, Lk, D]`` (one float dtype); ``attention_mask`` ``[B, Lk]`` of
    bool/int/float, nonzero = real token, 0 = padding. ``scale`` defaults to ``D ** -0.5``. Softmax and
    accumulation in fp32. A query row whose keys are all padding returns zeros. NaN in a real (unpadded)
    position of q/k/v propagates; padded keys never contribute, not even a NaN in their v.
    """
    V.tensor("q", q, dtypes=_F, ndim=4)
    V.tensor("k", k, dtypes=_F, ndim=4)
    V.tensor("v", v, dtypes=_F, ndim=4)
    V.same_dtype(q=q, k=k, v=v)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    V.shape("k", k, (B, H, Lk, D), "(k must be [B, H, Lk, D] with q's B, H, D)")
    V.shape("v", v, (B, H, Lk, D), "(v must match k)")
    if attention_mask is not None:
        V.tensor("attention_mask", attention_mask, ndim=2)
        V.shape("attention_mask", attention_mask, (B, Lk), "([batch, key length], 1 = real token, 0 = padding)")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    device = V.same_device(q=q, k=k, v=v, attention_mask=attention_mask)
    return _run("attention", backend, device, q, k, v, attention_mask, None if scale is None else float(scale))


def attention_varlen(q, k, v, cu_seqlens, max_seqlen: int, scale: Optional[float] = None, *,
                     backend: Optional[str] = None, offsets_checked: bool = False):
    """Padding-free attention on packed tokens: q/k/v ``[T, H, D]``, ``cu_seqlens`` int32 ``[B + 1]``
    (sequence i = tokens ``cu_seqlens[i]:cu_seqlens[i+1]``, attending only within itself), ``max_seqlen``
    the longest sequence. What the model wrapper's unpadded path runs; see :func:`bertsilicon.reference.attention_varlen`.

    The kernels trust ``cu_seqlens`` (it bounds their reads), so its values are checked first
    (:func:`check_cu_seqlens`), which reads it on the host: one device synchronisation for CUDA tensors.
    ``offsets_checked=True`` skips that read for a caller that built ``cu_seqlens`` itself or checked it once for
    many calls (the model wrapper: built from the key mask once per forward, used by every layer)."""
    V.tensor("q", q, dtypes=_F, ndim=3)
    V.tensor("k", k, dtypes=_F, ndim=3)
    V.tensor("v", v, dtypes=_F, ndim=3)
    V.same_dtype(q=q, k=k, v=v)
    V.shape("k", k, q.shape, "(must match q: [T, H, D])")
    V.shape("v", v, q.shape, "(must match q: [T, H, D])")
    V.cu_seqlens_arg(cu_seqlens, max_seqlen)
    if not offsets_checked and not torch.compiler.is_compiling():
        check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    device = V.same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    return _run("attention_varlen", backend, device, q, k, v, cu_seqlens, max_seqlen,
                None if scale is None else float(scale))


def bias_gelu(x, bias, approximate: str = "none", *, backend: Optional[str] = None):
    """gelu(x + bias): x ``[..., N]``, bias ``[N]``; ``approximate`` is ``"none"`` (erf) or ``"tanh"``.
    Computed in fp32, returned in x's dtype. NaN propagates; gelu(+inf) = +inf, gelu(-inf) = 0
    (the tanh form gives the same limits)."""
    V.tensor("x", x, dtypes=_F, min_ndim=1)
    V.tensor("bias", bias, dtypes=_F, ndim=1)
    V.shape("bias", bias, (x.shape[-1],), "(one bias per feature of x's last dim)")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate={approximate!r} is unknown; expected 'none' (erf) or 'tanh'")
    device = V.same_device(x=x, bias=bias)
    return _run("bias_gelu", backend, device, x, bias, approximate)


def add_layernorm(x, residual, weight, bias, eps: float = 1e-12, *, backend: Optional[str] = None):
    """LayerNorm(x + residual) over the last dim, with fp32 statistics.

    x, residual ``[..., N]`` (same dtype), weight/bias ``[N]`` (any float dtype). Returns x's dtype.
    NaN or inf anywhere in a row makes that whole output row NaN.
    """
    V.tensor("x", x, dtypes=_F, min_ndim=1)
    V.tensor("residual", residual, dtypes=_F)
    V.same_dtype(x=x, residual=residual)
    V.shape("residual", residual, x.shape, "(must match x)")
    N = x.shape[-1]
    V.tensor("weight", weight, dtypes=_F, ndim=1)
    V.tensor("bias", bias, dtypes=_F, ndim=1)
    V.shape("weight", weight, (N,), "(one per feature of x's last dim)")
    V.shape("bias", bias, (N,), "(one per feature of x's last dim)")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    device = V.same_device(x=x, residual=residual, weight=weight, bias=bias)
    return _run("add_layernorm", backend, device, x, residual, weight, bias, float(eps))


def linear(x, weight, bias=None, activation: Optional[str] = None, *, backend: Optional[str] = None):
    """activation(x @ weight^T + bias): x ``[..., K]``, weight ``[N, K]`` (nn.Linear layout), bias ``[N]``.
    ``activation``: ``None | "gelu" | "gelu_tanh" | "relu"``, applied in the GEMM's epilogue."""
    V.tensor("x", x, dtypes=_F, min_ndim=1)
    V.tensor("weight", weight, dtypes=_F, ndim=2)
    V.same_dtype(x=x, weight=weight)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected [N, {x.shape[-1]}] (K = x's last dim)")
    if bias is not None:
        V.tensor("bias", bias, dtypes=_F, ndim=1)
        V.shape("bias", bias, (weight.shape[0],), "(one per output feature N)")
    if activation not in _ref.ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is unknown; expected one of {_ref.ACTIVATIONS}")
    device = V.same_device(x=x, weight=weight, bias=bias)
    return _run("linear", backend, device, x, weight, bias, activation)


def quantize(x, dtype: str = "int8", granularity: str = "per_token", *, backend: Optional[str] = None):
    """Symmetric int8 quantization -> ``(q, scale)``, ``q * scale`` ~= x; see :func:`bertsilicon.reference.quantize`.
    ``granularity``: ``"per_tensor" | "per_token"`` (last dim) ``| "per_channel"`` (dim 0, for weights)."""
    V.tensor("x", x, dtypes=_F, min_ndim=1)
    if dtype != "int8":
        raise ValueError(f"dtype={dtype!r} is not supported; expected 'int8'")
    if granularity not in _ref.GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is unknown; expected one of {_ref.GRANULARITIES}")
    return _run("quantize", backend, x.device, x, dtype, granularity)


def int8_linear(x_q, x_scale, w_q, w_scale, bias=None, activation: Optional[str] = None,
                out_dtype: torch.dtype = torch.float32, *, backend: Optional[str] = None):
    """activation((x_q @ w_q^T) * x_scale * w_scale + bias) with int32 accumulation, in ``out_dtype``.

    x_q int8 ``[..., K]``; x_scale per token (``[..., 1]`` or ``[...]``) or one value; w_q int8 ``[N, K]``;
    w_scale per output channel (``[N]`` or ``[N, 1]``) or one value; bias ``[N]``. K < 133,000 so the
    int32 accumulator cannot overflow (127 * 127 * K < 2^31).
    """
    V.tensor("x_q", x_q, dtypes=(torch.int8,), min_ndim=1)
    V.tensor("w_q", w_q, dtypes=(torch.int8,), ndim=2)
    V.tensor("x_scale", x_scale, dtypes=_F)
    V.tensor("w_scale", w_scale, dtypes=_F)
    M_shape, K = x_q.shape[:-1], x_q.shape[-1]
    N = w_q.shape[0]
    if w_q.shape[1] != K:
        raise ValueError(f"w_q has shape {tuple(w_q.shape)}; expected [N, {K}] (K = x_q's last dim)")
    if K >= 133_000:
        raise ValueError(f"K={K} could overflow the int32 accumulator; expected K < 133000")
    if x_scale.numel() != 1 and x_scale.numel() != math.prod(M_shape):
        raise ValueError(f"x_scale has shape {tuple(x_scale.shape)}; expected one value or one per token "
                         f"({tuple(M_shape)} or {tuple(M_shape) + (1,)})")
    if w_scale.numel() not in (1, N):
        raise ValueError(f"w_scale has shape {tuple(w_scale.shape)}; expected one value or one per output channel ([{N}])")
    if bias is not None:
        V.tensor("bias", bias, dtypes=_F, ndim=1)
        V.shape("bias", bias, (N,), "(one per output channel)")
    if activation not in _ref.ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is unknown; expected one of {_ref.ACTIVATIONS}")
    if out_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"out_dtype={out_dtype} is not supported; expected float32, bfloat16 or float16")
    device = V.same_device(x_q=x_q, x_scale=x_scale, w_q=w_q, w_scale=w_scale, bias=bias)
    return _run("int8_linear", backend, device, x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)


def round_to(x, fmt: str, rounding: str = "nearest", seed: Optional[int] = None, *, backend: Optional[str] = None):
    """Round x to the values of ``fmt`` (``"bf16" | "fp16" | "e4m3" | "e5m2"`` or a custom float
    ``"e{E}m{M}"`` where the backend serves it; fixed point, integers, toward-zero and explicit overflow
    policies: :func:`bertsilicon.formats.round_to`) -> a tensor of x's dtype.
    ``rounding``: ``"nearest"`` (ties to even) or ``"stochastic"`` (Philox4x32-10 keyed on ``seed`` and
    the element index; bit-identical on every backend). See :mod:`bertsilicon.formats`."""
    V.tensor("x", x, dtypes=_formats.INPUT_DTYPES)
    _formats.get_format(fmt)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding={rounding!r} is unknown; expected 'nearest' or 'stochastic'")
    if rounding == "stochastic" and (seed is None or not isinstance(seed, int)):
        raise ValueError(f"rounding='stochastic' needs an integer seed, got seed={seed!r}")
    return _run("round_to", backend, x.device, x, fmt, rounding, seed)
