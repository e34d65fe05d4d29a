"""The ``cpu`` backend: C++ kernels (``bertsilicon._C``, csrc/) for x86 CPUs, instruction set chosen at run time.

Importing it registers its ops (:mod:`.ops`, :mod:`.gemm`) with :mod:`bertsilicon.backends.registry`; an
ImportError (the extension not built) marks the backend unavailable. Internal API for the rest of the package:

* :mod:`.runtime`: the kernel path (``set_isa``, ``hide_cpu_features``, ``cpu_features``, ``kernel_path``),
  ``threads``, the C++ enum codes;
* :mod:`.gemm`: packed weights (``PackedWeight``, ``cached_pack``, ``pack_linear``, ``pack_int8``) and the GEMM
  entry points that take them (``linear_packed``, ``int8_linear_dynamic``, ...), ``kernel_summary``;
* :mod:`.layer`: a whole fused encoder layer as one C++ call (``snapshot``, ``forward_packed``,
  ``forward_padded``, ``scratch_held``).
"""
from . import gemm, layer, ops, runtime  # noqa: F401  (gemm and ops register the ops)
from .runtime import cpu_features, hide_cpu_features, kernel_path, native_bf16_attention, set_isa, threads

__all__ = ["cpu_features", "hide_cpu_features", "kernel_path", "native_bf16_attention", "set_isa", "threads",
           "gemm", "layer", "ops", "runtime"]
