"""The backends that run the fused ops, and the one policy that picks among them.

* :mod:`.registry`: the backends (``reference``, ``cpu``, ``triton``) and each one's implementation of each op;
* :mod:`.routing`: which backend serves an op, a GEMM or a whole fused layer, and if not, why;
* :mod:`.reference`: plain torch (:mod:`bertsilicon.reference`), every op, any device;
* :mod:`.cpu`: C++ kernels for x86 CPUs (``bertsilicon._C``);
* :mod:`.triton`: Triton kernels for GPUs (:mod:`bertsilicon.kernels`).

Data flows one way: model -> encoder -> layer -> ops / routing -> backend -> kernel. A backend imports nothing
of :mod:`bertsilicon.ops` or :mod:`bertsilicon.models`.
"""
