"""Triton GPU kernels, one file per op family, shipped as ``bertsilicon.kernels``.

* :mod:`.attention`   flash-attention forward: key-padding mask or packed tokens (cu_seqlens), one kernel
* :mod:`.gemm`        linear and int8_linear: one GEMM with a bias / GELU / ReLU (+ dequant) epilogue
* :mod:`.layernorm`   add_layernorm (residual add + LayerNorm, fp32 statistics)
* :mod:`.elementwise` bias_gelu, quantize (int8, one scale per row), round_to (nearest / Philox stochastic)
* :mod:`._common`     epilogue activations, autotuning settings per GPU class, fp32 dot precision

On a machine with no GPU they run under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton
is imported) on CPU tensors: that is how CI checks them. The launchers here take already-validated
tensors; argument checks live in :mod:`bertsilicon.ops` and :mod:`bertsilicon.backends.triton.ops`.
"""
