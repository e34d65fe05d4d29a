"""The ``cpu`` backend: C++ kernels from ``bertsilicon._C`` (csrc/), wrapped with the checks C++ relies on.

C++ trusts its caller, so every check that protects memory happens here: dtype, device, contiguity and
sizes; the C++ side gets raw pointers (and element strides where views are allowed). Each ``_check_*``
returns ``None`` or the reason this backend cannot serve the input, so ``backend="cpu"`` raises a
``ValueError`` naming it and ``backend=None`` falls back to the reference. The kernels release the GIL
and use torch's intra-op thread count.

``BERTSILICON_ISA=avx512|avx2|scalar`` (read at import) or :func:`set_isa` forces a kernel path no wider
than the CPU supports, so every path is testable anywhere. ``BERTSILICON_HIDE_CPU_FEATURES=avx512_bf16,...``
(read at import, before ``BERTSILICON_ISA``) or :func:`hide_cpu_features` hides CPU features from the kernels,
so a Zen 4 or Sapphire Rapids machine runs exactly the code an AVX-512 CPU without BF16 (Cascade Lake, Ice
Lake: ``avx512_bf16``) or without VNNI too (Skylake-SP: ``avx512_bf16,avx512_vnni``) would run.

Dtypes: attention, bias_gelu and add_layernorm take float32 or bfloat16 (fp32 math); round_to takes
float32, bfloat16 or float16.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _C  # ImportError here marks the backend unavailable (see _dispatch._load)
from .. import formats as _formats
from ._dispatch import register
from ._validate import contiguous, first_reason

ISAS = ("avx512", "avx2", "scalar")

# dtype codes of the C++ side (bs::DType in csrc/kernels.h)
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
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


def _dtype_reason(name: str, t: Optional[torch.Tensor], dtypes) -> Optional[str]:
    if t is not None and t.dtype not in dtypes:
        return f"{name} has dtype {t.dtype}; the cpu kernel takes {', '.join(map(str, dtypes))}"
    return None


def _last_dim_reason(name: str, t: torch.Tensor) -> Optional[str]:
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        return f"{name} must have a contiguous last dim (strides {t.stride()}); call .contiguous() first"
    return None


def _f32(t: torch.Tensor) -> torch.Tensor:
    """A small per-feature vector (weight, bias) as contiguous fp32 for the kernel."""
    return t.to(torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------- #
# add_layernorm, bias_gelu                                                                        #
# ---------------------------------------------------------------------------------------------- #
def _check_add_layernorm(x, residual, weight, bias, eps) -> Optional[str]:
    return first_reason(_dtype_reason("x", x, F32_BF16), contiguous("x", x), contiguous("residual", residual))


@register("add_layernorm", "cpu", check=_check_add_layernorm)
def add_layernorm(x, residual, weight, bias, eps):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.shape[-1]
    if x.numel() == 0:
        return out
    w, b = _f32(weight), _f32(bias)
    _C.add_layernorm(_DTYPE_CODE[x.dtype], x.data_ptr(), residual.data_ptr(), w.data_ptr(), b.data_ptr(),
                     out.data_ptr(), x.numel() // n, n, float(eps), threads())
    return out


def _check_bias_gelu(x, bias, approximate) -> Optional[str]:
    return first_reason(_dtype_reason("x", x, F32_BF16), contiguous("x", x))


@register("bias_gelu", "cpu", check=_check_bias_gelu)
def bias_gelu(x, bias, approximate):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.shape[-1]
    if x.numel() == 0:
        return out
    b = _f32(bias)
    _C.bias_gelu(_DTYPE_CODE[x.dtype], approximate == "tanh", x.data_ptr(), b.data_ptr(), out.data_ptr(),
                 x.numel() // n, n, threads())
    return out


# ---------------------------------------------------------------------------------------------- #
# attention, attention_varlen                                                                     #
# ---------------------------------------------------------------------------------------------- #
def _check_attention(q, k, v, attention_mask, scale) -> Optional[str]:
    return first_reason(_dtype_reason("q", q, F32_BF16),
                        _last_dim_reason("q", q), _last_dim_reason("k", k), _last_dim_reason("v", v))


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
    _C.attention(_DTYPE_CODE[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H, Lq, Lk, D,
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
    _C.attention(_DTYPE_CODE[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, H,
                 max_seqlen, max_seqlen, D, strides, 0, cu.data_ptr(),
                 D ** -0.5 if scale is None else float(scale), threads())
    return out


# ---------------------------------------------------------------------------------------------- #
# round_to                                                                                        #
# ---------------------------------------------------------------------------------------------- #
def _check_round_to(x, fmt, rounding, seed) -> Optional[str]:
    reason = first_reason(_dtype_reason("x", x, _formats.INPUT_DTYPES), contiguous("x", x))
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
    _C.round_to(_DTYPE_CODE[x.dtype], x.data_ptr(), out.data_ptr(), x.numel(), mbits, emin, max_finite,
                ieee, stochastic, (int(seed) & 0xFFFFFFFFFFFFFFFF) if stochastic else 0, saturate, threads())
    return out


from . import _cpu_gemm  # noqa: E402,F401  (registers linear / quantize / int8_linear)
