"""Backend registry and selection for the ops in :mod:`bertsilicon.ops`.

Each backend module (``_reference``, ``_cpu``, ``_triton``) registers, per op, an implementation and
an optional ``check`` that returns ``None`` when the backend can serve the given arguments, or a short
reason (``"dtype torch.float64 not supported; expected float32 or bfloat16"``) when it cannot.

Selection rules (DESIGN.md, "Backends and dispatch"):

* ``backend=None``: CPU tensors -> ``cpu`` if it is built and its check passes, else ``reference``;
  CUDA tensors -> ``triton`` if it imports and its check passes, else ``reference``.
* an explicit backend that is unknown, not built, or whose check fails raises ``ValueError`` naming
  the backend and the reason: a fallback is never silent where a backend was asked for.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

BACKENDS = ("reference", "cpu", "triton")

# Modules that register each backend's implementations when imported. Imported lazily: triton is
# slow to import and absent on some machines; the C++ extension may not be built.
_BACKEND_MODULES = {
    "reference": "bertsilicon.ops._reference",
    "cpu": "bertsilicon.ops._cpu",
    "triton": "bertsilicon.ops._triton",
}


@dataclass(frozen=True)
class Impl:
    fn: Callable
    check: Optional[Callable[..., Optional[str]]] = None


_REGISTRY: dict[tuple[str, str], Impl] = {}
_LOADED: dict[str, Optional[str]] = {}  # backend -> None if importable, else the reason it is not


def register(op: str, backend: str, check: Optional[Callable[..., Optional[str]]] = None):
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn):
        _REGISTRY[(op, backend)] = Impl(fn, check)
        return fn

    return deco


def _load(backend: str) -> Optional[str]:
    """Import a backend's module once; return None when usable, else why not."""
    if backend not in _LOADED:
        try:
            importlib.import_module(_BACKEND_MODULES[backend])
            _LOADED[backend] = None
        except Exception as exc:  # the C++ extension not built, triton not installed, ...
            _LOADED[backend] = f"{type(exc).__name__}: {exc}"
    return _LOADED[backend]


def backend_status() -> dict[str, Optional[str]]:
    """``{backend: None | reason}``: which backends import on this machine."""
    return {b: _load(b) for b in BACKENDS}


def triton_interpreter() -> bool:
    """True when Triton kernels run under the interpreter on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve(op: str, backend: Optional[str], device: torch.device, *args, **kwargs) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for these arguments; returns ``(backend_name, fn)``."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; expected one of {BACKENDS} or None")
        reason = _unavailable(op, backend, device, args, kwargs)
        if reason is not None:
            raise ValueError(f"{op}: backend={backend!r} cannot serve this input: {reason}")
        return backend, _REGISTRY[(op, backend)].fn

    preferred = "cpu" if device.type == "cpu" else ("triton" if device.type == "cuda" else None)
    if preferred is not None and _unavailable(op, preferred, device, args, kwargs) is None:
        return preferred, _REGISTRY[(op, preferred)].fn
    _load("reference")
    return "reference", _REGISTRY[(op, "reference")].fn


def _unavailable(op, backend, device, args, kwargs) -> Optional[str]:
    # Device first: importing the triton kernels with the interpreter off would fix that choice for
    # the whole process (triton decides interpreter-or-GPU when the kernels are defined).
    if backend == "cpu" and device.type != "cpu":
        return f"tensors are on {device}, the cpu backend needs CPU tensors"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
        return (f"tensors are on {device}; the triton backend needs CUDA tensors "
                "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)")
    reason = _load(backend)
    if reason is not None:
        return f"the {backend} backend is not available ({reason})"
    impl = _REGISTRY.get((op, backend))
    if impl is None:
        return f"the {backend} backend has no {op} kernel yet"
    if impl.check is not None:
        return impl.check(*args, **kwargs)
    return None


def available(op: str, backend: str, *args, **kwargs) -> bool:
    """Whether ``backend`` can run ``op`` on these arguments (no exception)."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    return _unavailable(op, backend, device, args, kwargs) is None
