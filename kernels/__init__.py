"""Triton GPU kernels, one file per op family, shipped as ``bertsilicon.kernels``.

On a machine with no GPU they run under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton
is imported) on CPU tensors: that is how CI checks them. The launchers here take already-validated
tensors; argument checks live in :mod:`bertsilicon.ops`.
"""
