"""The routing policy: which backend serves an op, or a whole fused layer, and if not, why.

Every place that needs the answer asks here; nothing else decides.

* An op (:func:`resolve`): ``backend=None`` takes CPU tensors to ``cpu`` when the C++ extension is built and
  its check passes, CUDA tensors to ``triton`` when it imports and its check passes, else ``reference``. An
  explicit backend that is unknown, not built, or whose check fails is a ``ValueError`` naming the backend and
  the reason: a fallback is never silent where a backend was asked for.
* A model's GEMMs and layers (the functions below :func:`resolve`): whether the cpu backend's packed GEMMs
  serve a call directly, whether a whole layer runs as one C++ call, whether bf16 is native (faster than
  fp32) where the model runs, and whether the triton launchers may be called directly.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from .registry import BACKENDS, REGISTRY, load, triton_interpreter


def resolve(op: str, backend: Optional[str], device: torch.device, *args, **kwargs) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for these arguments; returns ``(backend_name, fn)``."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; expected one of {BACKENDS} or None")
        reason = why_not(op, backend, device, args, kwargs)
        if reason is not None:
            raise ValueError(f"{op}: backend={backend!r} cannot serve this input: {reason}")
        return backend, REGISTRY[(op, backend)].fn

    preferred = "cpu" if device.type == "cpu" else ("triton" if device.type == "cuda" else None)
    if preferred is not None and why_not(op, preferred, device, args, kwargs) is None:
        return preferred, REGISTRY[(op, preferred)].fn
    load("reference")
    return "reference", REGISTRY[(op, "reference")].fn


def why_not(op: str, backend: str, device: torch.device, args: tuple, kwargs: dict) -> Optional[str]:
    """None when ``backend`` can run ``op`` on these arguments, else the reason it cannot."""
    # Device first: importing the triton kernels with the interpreter off would fix that choice for
    # the whole process (triton decides interpreter-or-GPU when the kernels are defined).
    reason = device_reason(backend, device)
    if reason is not None:
        return reason
    reason = load(backend)
    if reason is not None:
        return f"the {backend} backend is not available ({reason})"
    impl = REGISTRY.get((op, backend))
    if impl is None:
        return f"the {backend} backend has no {op} kernel yet"
    if impl.check is not None:
        return impl.check(*args, **kwargs)
    return None


def available(op: str, backend: str, *args, **kwargs) -> bool:
    """Whether ``backend`` can run ``op`` on these arguments (no exception)."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    return why_not(op, backend, device, args, kwargs) is None


def device_reason(backend: str, device: torch.device) -> Optional[str]:
    """None when ``backend`` runs on tensors of ``device``, else why not: ``cpu`` takes CPU tensors, ``triton``
    CUDA tensors (or CPU tensors under the Triton interpreter), ``reference`` any."""
    if backend == "cpu" and device.type != "cpu":
        return f"tensors are on {device}, the cpu backend needs CPU tensors"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
        return (f"tensors are on {device}; the triton backend needs CUDA tensors "
                "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)")
    return None


def model_reason(backend: Optional[str], device: torch.device) -> Optional[str]:
    """None when a model on ``device`` can be optimized for ``backend`` (None: the best per op), else why
    not: an unknown backend, one that does not import here, or one that does not run on that device."""
    if device.type == "meta":
        return "the model's weights are on the 'meta' device (not loaded): no backend can run it"
    if backend is None:
        return None
    if backend not in BACKENDS:
        return f"backend={backend!r} is unknown; expected one of {BACKENDS} or None"
    reason = load(backend)
    if reason is not None:
        return f"backend={backend!r} is not available on this machine: {reason}"
    reason = device_reason(backend, device)
    return None if reason is None else f"backend={backend!r} cannot run this model: {reason}"


# -------------------------------------------------------------------------------------------------- #
# the model's GEMMs and layers                                                                       #
# -------------------------------------------------------------------------------------------------- #
@functools.cache
def cpu_backend():
    """The cpu backend package (:mod:`bertsilicon.backends.cpu`), or None when the C++ extension is not built
    (asked once: whether a backend imports never changes within a process)."""
    if load("cpu") is not None:
        return None
    from . import cpu

    return cpu


CPU_GEMM_DTYPES = (torch.float32, torch.bfloat16)  # activations and weights the cpu packed GEMMs take (and int8)


def _cpu_serving(device: torch.device, backend: Optional[str]):
    """The cpu backend package when it serves a model on ``device`` asked with ``backend`` (a CPU model, backend
    None or "cpu", the extension built), else None: the one place these three conditions are written."""
    return cpu_backend() if device.type == "cpu" and backend in (None, "cpu") else None


def cpu_gemm(x: torch.Tensor, backend: Optional[str], weight_dtype: Optional[torch.dtype], fp16_on_fp32: bool = False):
    """The cpu backend's GEMM module (:mod:`bertsilicon.backends.cpu.gemm`) when its packed-weight entry points
    serve a model GEMM on ``x`` directly, else None (the public ops then decide, and raise where they must).

    Served: CPU tensors, ``backend`` None or "cpu", the extension built, fp32/bf16 activations and a weight the
    cpu GEMMs take (``weight_dtype`` fp32, bf16, or None for int8; an fp16 GEMM only as fp16 values on the
    fp32 kernel, ``fp16_on_fp32``), outside torch.compile tracing (which captures the public custom ops)."""
    if (x.dtype not in CPU_GEMM_DTYPES or (weight_dtype is not None and weight_dtype not in CPU_GEMM_DTYPES
                                           and not fp16_on_fp32) or torch.compiler.is_compiling()):
        return None
    cpu = _cpu_serving(x.device, backend)
    return None if cpu is None else cpu.gemm


def cpu_int8_fused(x: torch.Tensor, inv_smooth: Optional[torch.Tensor], backend: Optional[str]) -> bool:
    """Whether a dynamic int8 GEMM on ``x`` runs as the cpu backend's fused ``int8_linear_dynamic`` (quantize
    inside the GEMM): where the composed ops would both resolve to the cpu backend (CPU tensor, fp32/bf16,
    extension built: what :func:`cpu_gemm` asks), outside ``torch.compile`` tracing (which captures the composed
    custom ops instead), with fp32 contiguous SmoothQuant factors if any."""
    return (cpu_gemm(x, backend, None) is not None
            and (inv_smooth is None or (inv_smooth.dtype == torch.float32 and inv_smooth.is_contiguous())))


def fp16_on_fp32_kernels(device: torch.device, backend: Optional[str]) -> bool:
    """Whether an fp16 model's GEMMs run as fp16 operands on the cpu backend's fp32 kernel (x86 CPUs have no
    fp16 arithmetic): a CPU model, backend None or "cpu", the extension built. Its activations between GEMMs
    are then fp32."""
    return _cpu_serving(device, backend) is not None


def native_bf16_gemm(device: torch.device, backend: Optional[str]) -> bool:
    """Whether a bf16 GEMM is faster than fp32 where a model runs: a CUDA GPU with bf16, or the cpu backend on
    a CPU with AVX512_BF16 (its ``vdpbf16ps`` kernel; without it bf16 is widened to fp32, no faster). The
    reference backend has no fast bf16."""
    if backend == "reference":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = _cpu_serving(device, backend)
    return cpu is not None and cpu.gemm.native_bf16()


def int8_weight_max(device: torch.device, backend: Optional[str]) -> int:
    """The int8 weight range ``[-q, q]`` a model quantizes its weights to where it runs: the cpu backend's
    :func:`~bertsilicon.backends.cpu.gemm.int8_weight_max` (63 on AVX2, whose fast int8 kernel needs 7-bit
    weights), else 127."""
    cpu = _cpu_serving(device, backend)
    return cpu.gemm.int8_weight_max() if cpu is not None else 127


def assume_constant_when_traced(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` (over a second of every
    ``import bertsilicon``): the same mark on ``fn``, which torch.compile reads when it traces a call to it."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_when_traced  # read when torch.compile traces (a pybind call would break the graph)
def _cpu_bf16_attention_kernel() -> bool:
    cpu = cpu_backend()
    return cpu is not None and cpu.native_bf16_attention()


def native_bf16_attention(device: torch.device, backend: Optional[str]) -> bool:
    """Whether bf16 attention runs the cpu backend's ``vdpbf16ps`` kernel (faster than fp32) for a layer on
    ``device``: CPU, backend None or "cpu", the active path avx512 with AVX512_BF16."""
    return device.type == "cpu" and backend in (None, "cpu") and _cpu_bf16_attention_kernel()


def one_call_reason(device: torch.device, backend: Optional[str], compute_dtype: torch.dtype,
                    gemm_precisions) -> Optional[str]:
    """Why a fused layer on ``device`` cannot run as one C++ call, judged from what it is (backend, device,
    activation dtype, GEMM precisions), or None when nothing here stands in the way (the layer's plan
    builder may still refuse its GEMM mix)."""
    if device.type == "cuda" and backend in (None, "triton"):
        return "CUDA: Triton per op"
    if backend not in (None, "cpu"):
        return f"backend={backend!r}"
    if device.type != "cpu":
        return f"{device.type} tensors"
    if cpu_backend() is None:
        return "C++ extension not built"
    if compute_dtype not in CPU_GEMM_DTYPES:
        return f"{str(compute_dtype).replace('torch.', '')} activations"
    if compute_dtype != torch.float32 and "fp16" in gemm_precisions:
        return "fp16 GEMMs need fp32 activations"
    return None


def triton_direct(x: torch.Tensor, backend: Optional[str]) -> bool:
    """Whether a fused layer may call the triton launchers directly for ``x`` (before asking the dispatch
    about its every op): backend None or "triton" on CUDA tensors, or ``backend="triton"`` on CPU tensors
    under the interpreter; not while torch.compile traces; x's last dim contiguous."""
    if x.device.type == "cuda":
        served = backend in (None, "triton")
    else:
        served = backend == "triton" and x.device.type == "cpu" and triton_interpreter()
    return served and not torch.compiler.is_compiling() and not (x.dim() and x.stride(-1) != 1)
