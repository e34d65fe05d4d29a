"""The cpu backend's run-time state: the C++ extension, the kernel path (instruction set and hidden CPU
features), the thread count, and the C++ enum codes the bindings take.

``BERTSILICON_ISA=avx512|avx2|scalar`` (read at import) or :func:`set_isa` forces a kernel path no wider
than the CPU supports, so every path is testable anywhere. ``BERTSILICON_HIDE_CPU_FEATURES=avx512_bf16,...``
(read at import, before ``BERTSILICON_ISA``) or :func:`hide_cpu_features` hides CPU features from the kernels,
so a Zen 4 or Sapphire Rapids machine runs exactly the code an AVX-512 CPU without BF16 (Cascade Lake, Ice
Lake: ``avx512_bf16``) or without VNNI too (Skylake-SP: ``avx512_bf16,avx512_vnni``) would run.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ... import _C  # ImportError here marks the backend unavailable (registry.load)

ISAS = ("avx512", "avx2", "scalar")

# Codes of the C++ enums (exported by the extension), by torch dtype or activation name.
DTYPE_CODE = {torch.float32: int(_C.DType.F32), torch.bfloat16: int(_C.DType.BF16), torch.float16: int(_C.DType.F16)}
ELEM = {torch.float32: int(_C.ElemType.F32), torch.bfloat16: int(_C.ElemType.BF16), torch.int8: int(_C.ElemType.I8)}
ACT = {None: int(_C.Activation.None_), "gelu": int(_C.Activation.Gelu), "gelu_tanh": int(_C.Activation.GeluTanh),
       "relu": int(_C.Activation.Relu)}
OUT = {torch.float32: int(_C.OutType.F32), torch.bfloat16: int(_C.OutType.BF16), torch.float16: int(_C.OutType.F16),
       torch.int32: int(_C.OutType.S32)}
F32_BF16 = (torch.float32, torch.bfloat16)


# (kernel_path(), native_bf16_attention()) of the current path, or None: read on every layer call, so kept
# here and forgotten by set_isa / hide_cpu_features, the only ways the path changes (a few us less a call).
_path_state: Optional[tuple] = None


def set_isa(isa: str) -> None:
    """Force the kernel path (``"avx512" | "avx2" | "scalar"``); ValueError if the CPU cannot run it."""
    global _path_state
    if isa not in ISAS:
        raise ValueError(f"isa={isa!r} is unknown; expected one of {ISAS}")
    _C.set_isa(isa)
    _path_state = None


def hide_cpu_features(names) -> None:
    """Hide CPU features (names as in :func:`cpu_features`) from every kernel, as on a CPU without them;
    the set replaces the previous one (``[]`` shows everything again). Hiding a feature hides those that
    need it (``avx512f`` hides every ``avx512*``) and lowers the active path to what is left. Weight packs
    and layer plans made before are re-made on their next use. ValueError on an unknown name."""
    global _path_state
    if isinstance(names, str):
        raise TypeError(f"names must be a list of feature names, got the string {names!r}")
    _C.hide_cpu_features([str(n) for n in names])
    _path_state = None


def cpu_features() -> dict:
    """The features the kernels may use (the CPU's less the hidden ones), ``hidden``, ``best_isa`` and
    ``active_isa``."""
    return dict(_C.cpu_features())


def _path() -> tuple:
    global _path_state
    if _path_state is None:
        f = _C.cpu_features()
        _path_state = (" ".join([f["active_isa"], *(f"-{name}" for name in f["hidden"])]),
                       f["active_isa"] == "avx512" and bool(f["avx512_bf16"]))
    return _path_state


def native_bf16_attention() -> bool:
    """Whether bf16 attention runs the ``vdpbf16ps`` kernel on the active path (avx512 with AVX512_BF16)
    rather than fp32 math on widened inputs (csrc/attention_impl.h)."""
    return _path()[1]


def kernel_path() -> str:
    """The active path and the hidden features, e.g. ``"avx512"`` or ``"avx512 -avx512_bf16"``: what weight
    packs and one-call layer plans are made for."""
    return _path()[0]


if os.environ.get("BERTSILICON_HIDE_CPU_FEATURES"):
    hide_cpu_features([n.strip() for n in os.environ["BERTSILICON_HIDE_CPU_FEATURES"].split(",") if n.strip()])
if os.environ.get("BERTSILICON_ISA"):
    set_isa(os.environ["BERTSILICON_ISA"])


def threads() -> int:
    """Threads the C++ kernels use: torch's intra-op thread count."""
    return torch.get_num_threads()


def dtype_reason(name: str, t: Optional[torch.Tensor], dtypes) -> Optional[str]:
    if t is not None and t.dtype not in dtypes:
        return f"{name} has dtype {t.dtype}; the cpu kernel takes {', '.join(map(str, dtypes))}"
    return None


def last_dim_reason(name: str, t: torch.Tensor) -> Optional[str]:
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        return f"{name} must have a contiguous last dim (strides {t.stride()}); call .contiguous() first"
    return None


def f32(t: Optional[torch.Tensor], n: Optional[int] = None) -> Optional[torch.Tensor]:
    """``t`` as contiguous fp32 for a kernel (None stays None); with ``n``: flattened to ``n`` values, one
    value broadcast (biases, scales)."""
    if t is None:
        return None
    if n is None:
        return t.to(torch.float32).contiguous()
    t = t.reshape(-1).to(torch.float32)
    return (t.expand(n) if t.numel() == 1 else t).contiguous()


def ptr(t: Optional[torch.Tensor]) -> int:
    """The data pointer a binding takes for an optional tensor (0 for None)."""
    return 0 if t is None else t.data_ptr()
