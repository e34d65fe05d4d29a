"""The ``triton`` backend: launchers from ``bertsilicon.kernels`` (kernels/), with the checks they rely on.

Runs on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import kernels  # noqa: F401  (ImportError marks the backend unavailable)
from ..kernels import layernorm as _ln
from ._dispatch import register
from ._validate import first_reason

FLOAT16_32 = (torch.float32, torch.bfloat16, torch.float16)


def _last_dim_contiguous(name: str, t: torch.Tensor) -> Optional[str]:
    if t.dim() and t.stride(-1) != 1:
        return f"{name} must have a contiguous last dim (stride {t.stride()})"
    return None


def _check_add_layernorm(x, residual, weight, bias, eps) -> Optional[str]:
    if x.dtype not in FLOAT16_32:
        return f"x has dtype {x.dtype}; the triton kernel takes float32, bfloat16 or float16"
    return first_reason(_last_dim_contiguous("x", x), _last_dim_contiguous("residual", residual))


@register("add_layernorm", "triton", check=_check_add_layernorm)
def add_layernorm(x, residual, weight, bias, eps):
    return _ln.add_layernorm(x, residual, weight.contiguous(), bias.contiguous(), eps)
