"""Weight / activation quantization for the int8 model path, calibration statistics and SmoothQuant.

Everything here is built on the public ops (:func:`bertsilicon.ops.quantize`,
:func:`bertsilicon.ops.int8_linear`), so it gets faster as the C++ / Triton kernels land.

int8 GEMM as the model wrapper runs it (docs/architecture.md, precision contract)::

    x_s          = x * (1 / s)                          smoothing (optional), s [K]
    x_q, a       = quantize(x_s, per_token)             a [T, 1] = amax_row(x_s) / 127
    W_q, b       = quantize(W * s, per_channel)         once, at optimize time; b [N] = amax_col / 127
                                                        (/ 63 on the AVX2 path's 7-bit weight kernel)
    y            = act((x_q @ W_q^T) * a * b + bias)    int32 accumulation, fused dequant epilogue

SmoothQuant (Xiao et al. 2023) migrates activation outliers into the weights: with per-input-channel
``s_k = max|x_k|^alpha / max|W_:,k|^(1 - alpha)``, ``(x / s) (W s)^T = x W^T`` exactly, while the
activation's range per channel is flattened (alpha = 0.5 balances the two quantization errors).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import ops, reference
from .backends import routing

__all__ = ["quantize_weight", "quantize_activations", "int8_matmul", "smoothing_factors", "ChannelAbsMax",
           "relative_error"]


def quantize_weight(weight: torch.Tensor, smooth: Optional[torch.Tensor] = None, *,
                    backend: Optional[str] = None, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 of an ``nn.Linear`` weight ``[N, K]`` (optionally ``W * s``
    with smoothing factors ``s [K]``) -> ``(w_q int8 [N, K], w_scale fp32 [N])``. Done once per model.

    ``qmax``: the range ``[-qmax, qmax]``; 127, or 63 for the AVX2 path's ``vpmaddubsw`` kernel, which cannot
    saturate only with 7-bit weights (:func:`~bertsilicon.backends.routing.int8_weight_max`)."""
    w = weight.detach().to(torch.float32)
    if smooth is not None:
        w = w * smooth.to(w)[None, :]
    if qmax == 127:
        w_q, w_scale = ops.quantize(w.contiguous(), "int8", "per_channel", backend=backend)
        return w_q.contiguous(), w_scale.reshape(-1).contiguous()
    return quantize_rows(w, qmax)


def quantize_rows(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 of fp32 ``w [N, K]`` in ``[-qmax, qmax]`` -> ``(q int8 [N, K], scale fp32 [N])``: the
    int8 op's definition (:func:`bertsilicon.reference.quantize`, ``per_channel``) with ``qmax`` for 127."""
    q, scale = reference.quantize(w, "int8", "per_channel", qmax=qmax)
    return q.contiguous(), scale.reshape(-1).contiguous()


def quantize_activations(x: torch.Tensor, inv_smooth: Optional[torch.Tensor] = None, *,
                         backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token int8 of activations ``x [..., K]`` (after dividing by the smoothing factors)."""
    if inv_smooth is not None:
        x = x * inv_smooth
    return ops.quantize(x.contiguous(), "int8", "per_token", backend=backend)


def int8_matmul(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                activation: Optional[str] = None, inv_smooth: Optional[torch.Tensor] = None, *,
                backend: Optional[str] = None) -> torch.Tensor:
    """``act(x W^T + bias)`` with W prepared by :func:`quantize_weight`: per-token quantize of x, int8 GEMM
    with int32 accumulation and the dequant + bias + activation epilogue; result in x's dtype."""
    if routing.cpu_int8_fused(x, inv_smooth, backend):  # same result, one C++ call (quantize fused into the GEMM)
        return routing.cpu_backend().gemm.int8_linear_dynamic(x.contiguous(), w_q, w_scale, bias, activation,
                                                              inv_smooth)
    x_q, x_scale = quantize_activations(x, inv_smooth, backend=backend)
    return ops.int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype=x.dtype, backend=backend)


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant factors ``s [K] = max|x_k|^alpha / max_n|W_nk|^(1 - alpha)`` for a GEMM with input
    channel maxima ``act_absmax [K]`` (from calibration) and weight ``[N, K]``; channels that never fire
    (or weights that are all zero) get ``s = 1``. ``alpha`` in [0, 1]."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"smooth alpha must be in [0, 1], got {alpha!r}")
    a = act_absmax.detach().to(torch.float32).clamp_min(1e-5)
    w = weight.detach().to(torch.float32).abs().amax(dim=0).clamp_min(1e-5)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    ok = (act_absmax > 0) & torch.isfinite(s) & (s > 0)
    return torch.where(ok, s, torch.ones_like(s))


class ChannelAbsMax:
    """Running per-channel ``max |x|`` over the last dim of every tensor passed to :meth:`update`
    (the calibration statistic SmoothQuant needs)."""

    def __init__(self):
        self.value: Optional[torch.Tensor] = None

    def update(self, x: torch.Tensor) -> None:
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).to(torch.float32)
        self.value = m if self.value is None else torch.maximum(self.value, m)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref||_F / ||ref||_F`` computed in float64 (0 when both are empty)."""
    if ref.numel() == 0:
        return 0.0
    d = (out.double() - ref.double()).norm()
    n = ref.double().norm()
    return float(d / n) if float(n) > 0 else float(d)
