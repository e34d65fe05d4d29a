"""The ``cpu`` backend: C++ kernels from ``bertsilicon._C`` (csrc/), wrapped with the checks C++ relies on.

C++ trusts its caller, so every check that protects memory happens here: dtype, device, contiguity and
sizes; the C++ side gets raw pointers. ``BERTSILICON_ISA=avx512|avx2|scalar`` (read at import) or
:func:`set_isa` forces a kernel path no wider than the CPU supports, so every path is testable anywhere.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _C  # ImportError here marks the backend unavailable (see _dispatch._load)
from ._dispatch import register
from ._validate import contiguous, first_reason

ISAS = ("avx512", "avx2", "scalar")


def set_isa(isa: str) -> None:
    """Force the kernel path (``"avx512" | "avx2" | "scalar"``); ValueError if the CPU cannot run it."""
    if isa not in ISAS:
        raise ValueError(f"isa={isa!r} is unknown; expected one of {ISAS}")
    _C.set_isa(isa)


def cpu_features() -> dict:
    return dict(_C.cpu_features())


if os.environ.get("BERTSILICON_ISA"):
    set_isa(os.environ["BERTSILICON_ISA"])


def threads() -> int:
    """Threads the C++ kernels use: torch's intra-op thread count."""
    return torch.get_num_threads()


def _dtype_reason(name: str, t: Optional[torch.Tensor], dtypes) -> Optional[str]:
    if t is not None and t.dtype not in dtypes:
        return f"{name} has dtype {t.dtype}; the cpu kernel takes {', '.join(map(str, dtypes))}"
    return None


# ---------------------------------------------------------------------------------------------- #
# add_layernorm                                                                                   #
# ---------------------------------------------------------------------------------------------- #
def _check_add_layernorm(x, residual, weight, bias, eps) -> Optional[str]:
    return first_reason(_dtype_reason("x", x, (torch.float32,)),
                        contiguous("x", x), contiguous("residual", residual))


@register("add_layernorm", "cpu", check=_check_add_layernorm)
def add_layernorm(x, residual, weight, bias, eps):
    n = x.shape[-1]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out
    w = weight.to(torch.float32).contiguous()
    b = bias.to(torch.float32).contiguous()
    _C.add_layernorm_f32(x.data_ptr(), residual.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(),
                         x.numel() // n, n, eps, threads())
    return out


from . import _cpu_gemm  # noqa: E402,F401  (registers linear / quantize / int8_linear)
