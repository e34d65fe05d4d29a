"""The ``triton`` backend: the Triton kernels of :mod:`bertsilicon.kernels` on CUDA tensors (or on CPU tensors
under the Triton interpreter, ``TRITON_INTERPRET=1``).

Importing it registers its ops (:mod:`.ops`) with :mod:`bertsilicon.backends.registry`; an ImportError (triton
missing) marks the backend unavailable. :mod:`.layer` holds the launchers a fused layer calls directly.
"""
from . import ops  # noqa: F401  (registers the ops)
