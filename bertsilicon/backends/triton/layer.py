"""The fused layer's per-op path on the triton backend, launched directly.

Through :mod:`bertsilicon.ops` each of a layer's 7 ops (11 for int8: a per-token quantize before each GEMM)
validates its arguments and resolves its backend before the launcher runs: about a quarter of the eager Triton
path's host time (``bench/studies/gpu_host_overhead.py``, figures in bench/results/gpu/NOTES.md). On a GPU that
host time is the eager path's floor above the CUDA-graph token budget, so a layer whose every op the public ops would send to the triton backend calls the
backend's launchers here directly — the functions :mod:`.ops` registers, so the same
kernels with the same arguments and bit-identical results (tests/models/test_optimize_gpu.py,
``test_direct_triton_launches_equal_the_public_ops``).

Whether a layer may: :meth:`FusedEncoderLayer.direct_triton` asks the public dispatch once per (device,
activation dtype) with the layer's own operands (:meth:`FusedEncoderLayer.backends_used`): every op must
resolve to ``triton`` (with ``backend="triton"`` a check that fails raises there, as the public op would; with
``backend=None`` an op the triton kernels cannot serve keeps the whole layer on the public path, which sends
that op to the reference). What the checks read beyond that is fixed by the layer (dtypes, head dim, device
capability) or by construction (every intermediate is contiguous); the one property of the caller's input they
need, a contiguous last dim, is checked per call.

One difference in the work, not the result: an int8 GEMM's SmoothQuant division is fused into the per-token
quantize (``kernels.elementwise.quantize(x, "per_token", inv_smooth)``: one pass, ``x / s`` never written),
bit-identical to quantizing torch's ``x * inv_smooth`` as the public path does.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...kernels import elementwise as _ew
from . import ops as _impl


def linear(gemm, x: torch.Tensor, activation: Optional[str] = None) -> torch.Tensor:
    """``gemm`` (a :class:`~bertsilicon.models.layers.PreparedLinear`) on ``x [..., K]`` (last dim
    contiguous), as :meth:`PreparedLinear.forward` computes it through the public ops."""
    w, b = gemm.operands()[:2]
    if gemm.precision == "int8":
        x_q, x_scale = _ew.quantize(x, "per_token", gemm.inv_smooth)
        return _impl.int8_linear(x_q, x_scale, w, gemm.w_scale, b, activation, x.dtype)
    if x.dtype != w.dtype:  # a bf16 GEMM in a layer whose activations are fp32 (int8 fallback)
        return _impl.linear(x.to(w.dtype), w, b, activation).to(x.dtype)
    return _impl.linear(x, w, b, activation)


def add_layernorm(x: torch.Tensor, residual: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm(x + residual) with ``ln``'s weight, bias and eps."""
    return _impl.add_layernorm(x, residual, ln.weight, ln.bias, float(ln.eps))


attention = _impl.attention              # (q, k, v [B, n, L, d], key_mask [B, L] or None, scale)
attention_varlen = _impl.attention_varlen  # (q, k, v [T, n, d], cu_seqlens [B + 1] int32, max_seqlen, scale)
