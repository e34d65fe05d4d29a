"""The backend registry: which backends exist, and each one's implementation of each op.

Each backend package (:mod:`.reference`, :mod:`.cpu`, :mod:`.triton`) registers, per op, an implementation
and an optional ``check`` that returns ``None`` when the backend can serve the given arguments, or a short
reason (``"dtype torch.float64 not supported; expected float32 or bfloat16"``) when it cannot. Which backend
serves a call is decided in one place, :mod:`.routing`, from what is registered here.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

BACKENDS = ("reference", "cpu", "triton")

# Modules that register each backend's implementations when imported. Imported lazily: triton is
# slow to import and absent on some machines; the C++ extension may not be built.
_BACKEND_MODULES = {
    "reference": "bertsilicon.backends.reference",
    "cpu": "bertsilicon.backends.cpu",
    "triton": "bertsilicon.backends.triton",
}


@dataclass(frozen=True)
class Impl:
    fn: Callable
    check: Optional[Callable[..., Optional[str]]] = None


REGISTRY: dict[tuple[str, str], Impl] = {}  # (op, backend) -> implementation
_LOADED: dict[str, Optional[str]] = {}  # backend -> None if importable, else the reason it is not


def register(op: str, backend: str, check: Optional[Callable[..., Optional[str]]] = None):
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn):
        REGISTRY[(op, backend)] = Impl(fn, check)
        return fn

    return deco


def load(backend: str) -> Optional[str]:
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
    return {b: load(b) for b in BACKENDS}


def triton_interpreter() -> bool:
    """True when Triton kernels run under the interpreter on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
