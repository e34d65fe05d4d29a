"""bertsilicon: fast, honest low-precision inference for distilled BERT students.

* :mod:`bertsilicon.ops` — fused ops with ``reference`` / ``cpu`` (C++) / ``triton`` backends
* :func:`optimize` / :func:`restore` — drop-in fused kernels for Hugging Face BERT-family models
* :func:`save` / :func:`load` — an optimized model as a directory, loaded without calibration
* :func:`profile`, :mod:`bertsilicon.design` — FLOPs, bytes, roofline latency and energy; student design
* :mod:`bertsilicon.formats`, :mod:`bertsilicon.precision` — number formats, rounding, precision experiments
* :mod:`bertsilicon.distill` — distillation losses and the distiller
* :func:`encode` — bulk embedding of a corpus (also ``bertsilicon encode``: resumable shards, Ray)
* :func:`student_config`, :func:`load_student`, :mod:`bertsilicon.data` — students and real text
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from . import data, formats, ops, reference  # noqa: E402
from .models.students import STUDENTS, load_student, load_tokenizer, student_config  # noqa: E402

# Heavier or later parts load on first use: `bertsilicon.optimize` imports the model adapters, etc.
_LAZY = {
    "optimize": ("bertsilicon.models.optimize", "optimize"),
    "restore": ("bertsilicon.models.optimize", "restore"),
    "save": ("bertsilicon.models.artifact", "save"),
    "load": ("bertsilicon.models.artifact", "load"),
    "profile": ("bertsilicon.profiler", "profile"),
    "design": ("bertsilicon.profiler.design", None),
    "precision": ("bertsilicon.precision", None),
    "distill": ("bertsilicon.distill", None),
    "encode": ("bertsilicon.encode", None),  # a callable package: bertsilicon.encode(texts, ...)
}


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        m = importlib.import_module(mod)
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'bertsilicon' has no attribute {name!r}")


__all__ = ["ops", "formats", "reference", "data", "student_config", "load_student", "load_tokenizer", "STUDENTS",
           *_LAZY]
