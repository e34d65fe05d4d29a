"""Emulate a number format inside a Hugging Face model by rounding around its ``nn.Linear`` layers.

What is emulated (``where``):

* ``weights``: every ``nn.Linear`` weight of the encoder is replaced by its rounded values (restored on
  exit). Integer formats: one scale per output channel.
* ``activations``: the input of every ``nn.Linear`` is rounded on the fly (forward pre-hook). Integer
  formats: one dynamic scale per token.
* ``accumulation``: the GEMM result ``x @ W^T`` is rounded before the bias is added (the linear's
  forward is wrapped), i.e. the accumulator is written out in the format once. Integer formats: the
  output is requantized per token (int32 accumulators themselves are exact, so that is what int8 can
  mean here).

fp8 formats (e4m3, e5m2) are used with a dynamic per-tensor scale ``max_finite / amax`` (as fp8 GEMM
libraries do), unless ``fp8_scaling=False``; 16-bit floats are plain casts.

What cannot be emulated this way: rounding inside the K-sum of a GEMM (a low-precision accumulator
adds rounding at every step; here the fp32 sum is rounded once); the attention matmuls (``q k^T``,
``p v``), softmax, GELU, LayerNorm and the residual adds, which are not ``nn.Linear`` and stay fp32;
the embedding tables. Those are stated in every report.

Stochastic rounding uses a distinct Philox seed per (module, role, call), derived from ``seed``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import formats, ops

WHERE = ("weights", "activations", "accumulation")
_ROLE_ID = {"weights": 1, "activations": 2, "accumulation": 3}
_OPS_FORMATS = ("bf16", "fp16", "e4m3", "e5m2")  # what bertsilicon.ops.round_to serves on every backend
_FP8_FREE_BITS = 9  # e4m3's subnormal spacing is 2^-9: used by the integer stochastic fast path


def parse_where(where) -> tuple[str, ...]:
    """``"weights+activations"`` / ``("weights",)`` -> a tuple of places; ValueError on unknown ones."""
    items = where.split("+") if isinstance(where, str) else list(where)
    bad = [w for w in items if w not in WHERE]
    if bad or not items:
        raise ValueError(f"where={where!r}: expected one or more of {WHERE} joined by '+'")
    return tuple(items)


def _seed_for(seed: int, module_index: int, role: str, call: int) -> int:
    """A per-tensor Philox key, so no two rounded tensors share random bits."""
    return (seed * 1_000_003 + module_index * 7_919 + _ROLE_ID[role] * 104_729 + call * 15_485_863) % (1 << 62)


def _round_int_codes(y: torch.Tensor, rounding: str, seed: Optional[int]) -> torch.Tensor:
    """round(y) to integers (fp32 y, no clamp), bit-identical to :func:`bertsilicon.formats.quantize`'s
    integer rounding, but fast: nearest is ``torch.round`` (ties to even); stochastic rounds the
    fraction ``f = |y| - floor(|y|)`` scaled by 2^-9 in e4m3 with the same seed and element index,
    where e4m3's neighbours are 0 and 2^-9 and P(up) is the same truncated ``f * 2^32`` test the
    integer algorithm uses (so it runs on the C++/Triton ``round_to`` kernels)."""
    if rounding == "nearest":
        return torch.round(y)
    a = y.abs()
    fl = torch.floor(a)
    if rounding == "toward_zero":
        return torch.copysign(fl, y)
    frac = torch.ldexp(a - fl, torch.tensor(-_FP8_FREE_BITS, dtype=torch.int32))
    up = ops.round_to(frac.contiguous(), "e4m3", "stochastic", seed) > 0
    return torch.copysign(fl + up.to(y.dtype), y)


def round_tensor(x: torch.Tensor, fmt, rounding: str = "nearest", seed: Optional[int] = None,
                 granularity: str = "per_token", fp8_scaling: bool = True) -> torch.Tensor:
    """``x`` (fp32) rounded to ``fmt`` with the fastest path that gives the reference's bits:
    ``bertsilicon.ops.round_to`` (C++/Triton) for bf16/fp16/fp8 nearest/stochastic, the integer fast
    path above for int formats, :func:`bertsilicon.formats.round_to` for everything else."""
    f = formats.get_format(fmt)
    if isinstance(f, formats.FloatFormat) and f.name == "fp32":
        return x
    xc = x.float().contiguous()
    if isinstance(f, formats.IntFormat):
        scale = formats.compute_scale(xc, f, granularity)
        q = _round_int_codes(xc / scale, rounding, seed).clamp(-f.qmax, f.qmax)
        return torch.where(torch.isnan(xc), xc, q * scale)
    scale = None
    if fp8_scaling and isinstance(f, formats.FloatFormat) and f.ebits + f.mbits <= 7:
        amax = xc.abs().amax()
        scale = torch.where(amax > 0, f.max_finite / amax, torch.ones_like(amax))
        xc = xc * scale
    if f.name in _OPS_FORMATS and rounding in ("nearest", "stochastic"):
        y = ops.round_to(xc, f.name, rounding, seed)
    else:
        y = formats.round_to(xc, f, rounding, seed)
    return y if scale is None else y / scale


def linear_modules(model) -> list[tuple[str, torch.nn.Linear]]:
    """The encoder's ``nn.Linear`` layers (the pooler/heads are left alone), in order."""
    root = getattr(model, "encoder", None) or getattr(getattr(model, "base_model", model), "encoder", None) \
        or getattr(getattr(model, "base_model", model), "transformer", None) or model
    return [(n, m) for n, m in root.named_modules() if isinstance(m, torch.nn.Linear)]


@contextlib.contextmanager
def emulate(model, fmt, rounding: str = "nearest", where: Sequence[str] | str = ("weights",), seed: int = 0,
            fp8_scaling: bool = True) -> Iterator[None]:
    """Context manager: inside it ``model`` computes with ``fmt`` at the places in ``where`` (see the
    module docstring); everything is restored on exit, also after an exception."""
    places = parse_where(where)
    f = formats.get_format(fmt)
    if rounding not in formats.ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is unknown; expected one of {formats.ROUNDINGS}")
    if rounding == "stochastic" and not isinstance(seed, int):
        raise ValueError(f"rounding='stochastic' needs an integer seed, got {seed!r}")
    mods = linear_modules(model)
    if not mods:
        raise ValueError("the model has no nn.Linear layers to emulate a format on")
    saved_weights, handles, saved_forwards = [], [], []
    calls = {"n": 0}

    def rnd(t, i, role, gran):
        calls["n"] += 1
        return round_tensor(t, f, rounding, _seed_for(seed, i, role, calls["n"]) if rounding == "stochastic" else None,
                            gran, fp8_scaling)

    try:
        with torch.no_grad():
            for i, (_, m) in enumerate(mods):
                if "weights" in places:
                    saved_weights.append((m, m.weight.data))
                    m.weight.data = rnd(m.weight.data, i, "weights", "per_channel").to(m.weight.dtype)
                if "activations" in places:
                    handles.append(m.register_forward_pre_hook(
                        lambda mod, args, i=i: (rnd(args[0], i, "activations", "per_token").to(args[0].dtype),) + args[1:]))
                if "accumulation" in places:
                    saved_forwards.append((m, m.__dict__.get("forward")))

                    def forward(x, m=m, i=i):
                        y = rnd(F.linear(x, m.weight), i, "accumulation", "per_token").to(x.dtype)
                        return y if m.bias is None else y + m.bias

                    m.forward = forward
        yield
    finally:
        for h in handles:
            h.remove()
        for m, fwd in saved_forwards:
            if fwd is None:
                del m.forward
            else:
                m.forward = fwd
        for m, w in saved_weights:
            m.weight.data = w
