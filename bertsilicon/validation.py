"""Argument checks shared by the public ops and every backend: a bad argument is a TypeError/ValueError that
names it and says what was expected, raised before any kernel runs."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def tensor(name: str, t, *, dtypes: Optional[Iterable[torch.dtype]] = None, ndim=None,
           min_ndim: Optional[int] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise ValueError(f"{name} has dtype {t.dtype}; expected one of {', '.join(map(str, dtypes))}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(t.shape)}")
    return t


def same_device(**named: Optional[torch.Tensor]) -> torch.device:
    devices = {n: t.device for n, t in named.items() if t is not None}
    first = next(iter(devices.values()))
    for n, d in devices.items():
        if d != first:
            others = ", ".join(f"{k} on {v}" for k, v in devices.items())
            raise ValueError(f"all tensors must be on one device; got {others}")
    return first


def same_dtype(**named: Optional[torch.Tensor]) -> None:
    dts = {n: t.dtype for n, t in named.items() if t is not None}
    if len(set(dts.values())) > 1:
        raise ValueError("dtypes differ: " + ", ".join(f"{k} is {v}" for k, v in dts.items())
                         + "; pass tensors of one dtype")


def shape(name: str, t: torch.Tensor, expected: Sequence[int], what: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(expected)}{' ' + what if what else ''}")


def contiguous(name: str, t: Optional[torch.Tensor]) -> Optional[str]:
    """For backend checks: a reason string if ``t`` is not contiguous."""
    if t is not None and not t.is_contiguous():
        return f"{name} is not contiguous (strides {t.stride()}); call .contiguous() first"
    return None


def first_reason(*reasons: Optional[str]) -> Optional[str]:
    return next((r for r in reasons if r), None)


def cu_seqlens_arg(cu_seqlens, max_seqlen) -> None:
    """The checks of ``cu_seqlens`` / ``max_seqlen`` that need no look at the values."""
    tensor("cu_seqlens", cu_seqlens, dtypes=(torch.int32,), ndim=1)
    if cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must hold at least [0]; expected int32 [B + 1] prefix sums")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a non-negative int, got {max_seqlen!r}")


def check_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int) -> None:
    """Check packed-sequence offsets before a kernel trusts them: ``cu_seqlens`` int32 ``[B + 1]`` starts at
    0, never decreases, ends at ``total_tokens``, and no sequence is longer than ``max_seqlen``.
    ValueError naming the problem otherwise. Reads the values on the host (a device sync for CUDA)."""
    cu_seqlens_arg(cu_seqlens, max_seqlen)
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != total_tokens or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at T={total_tokens}; "
                         f"got {cu[:8]}{'...' if len(cu) > 8 else ''}")
    longest = max((b - a for a, b in zip(cu, cu[1:])), default=0)
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest sequence ({longest})")
