"""Expected cost of an early-exit (FastBERT) model from its exit-layer histogram.

With ``c_l`` samples leaving after layer ``l`` (1-based, ``l = 1 .. L``) out of ``N``, the fraction still in at
layer ``l`` is ``r_l = sum_{k >= l} c_k / N``. Layer ``l`` and the classifier after it run on ``r_l`` of the
samples, so with compaction (the exited samples' rows dropped) a batch of ``B`` runs layer ``l`` on ``B r_l``
samples:

    cost = embeddings(B) + sum_l [ layer_l(B r_l) + classifier_l(B r_l) ]

Each term is priced by :func:`bertsilicon.profile` (the same per-op cost model and hardware table) at the
whole batch sizes around ``B r_l``, linearly interpolated between them (``0`` samples cost nothing); a branch
classifier has the final head's shape (dense ``H x H`` + classifier ``H x C`` on one token per sample) and is
priced as the head is. FLOPs are exact under this model; latency is the roofline's.

``overhead`` adds what the roofline does not see, measured on the model
(:func:`bertsilicon.early_exit.overhead.exit_overhead_fit`): ``setup(B)`` once per batch and ``check(B r_l)`` at
each layer ``l < L`` (the exit check and compaction), each ``fixed_s + per_sample_s * n`` (interpolated like
the layers below one sample):

    latency = roofline above + setup(B) + sum_{l < L} check(B r_l)
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .core import profile

_HEAD_LAYERS = ("pooler", "head")


def _parts(model_or_config, n: int, seq_len: int, precision, hardware, attn_implementation) -> Dict[str, Dict]:
    report = profile(model_or_config, batch_size=n, seq_len=seq_len, precision=precision, hardware=hardware,
                     attn_implementation=attn_implementation)
    return report.per_layer()


def _overhead_lines(overhead: Optional[Mapping]) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """``(setup, check)`` lines ``(fixed_s, per_sample_s)`` of ``overhead`` (None: zeros), checked."""
    if overhead is None:
        return (0.0, 0.0), (0.0, 0.0)
    try:
        lines = tuple(tuple(float(v) for v in overhead[part]) for part in ("setup", "check"))
    except (KeyError, TypeError, ValueError):
        lines = ()
    if len(lines) != 2 or any(len(line) != 2 or not all(math.isfinite(v) and v >= 0 for v in line) for line in lines):
        raise ValueError('overhead must be {"setup": (fixed_s, per_sample_s), "check": (fixed_s, per_sample_s)} '
                         f"of finite seconds >= 0 (bertsilicon.early_exit.overhead.exit_overhead_fit); got {overhead!r}")
    return lines


def _line(line: Tuple[float, float], samples: float) -> float:
    return line[0] + line[1] * samples


def early_exit_cost(model_or_config, exit_counts: Sequence[int], batch_size: int = 1, seq_len: int = 128,
                    precision: Optional[str] = None, hardware="h100",
                    attn_implementation: Optional[str] = None, overhead: Optional[Mapping] = None) -> Dict:
    """Expected FLOPs and latency per batch of an early-exit model whose samples left at the layers of
    ``exit_counts`` (``exit_counts[l - 1]`` samples after layer ``l``; one entry per layer), against the full model
    on the same batch. ``model_or_config``, ``precision``, ``hardware``, ``attn_implementation``: as
    :func:`bertsilicon.profile` (a model with a sequence-classification head prices its head). ``overhead``:
    ``{"setup": (fixed_s, per_sample_s), "check": (fixed_s, per_sample_s)}`` or None (the roofline alone). See
    the module docstring for the model."""
    counts = [int(c) for c in exit_counts]
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"exit_counts must be non-negative sample counts per layer, not all 0; got {list(exit_counts)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    setup, check = _overhead_lines(overhead)
    total = sum(counts)
    reach = [sum(counts[l:]) / total for l in range(len(counts))]
    cache: Dict[int, Dict[str, Dict]] = {}

    def priced(n: int) -> Dict[str, Dict]:
        if n not in cache:
            cache[n] = _parts(model_or_config, n, seq_len, precision, hardware, attn_implementation)
        return cache[n]

    full = priced(batch_size)
    layers = [name for name in full if name not in ("embeddings", *_HEAD_LAYERS)]
    if len(layers) != len(counts):
        raise ValueError(f"exit_counts has {len(counts)} entries; the model has {len(layers)} layers")

    def head(parts):
        return {k: sum(parts[n][k] for n in _HEAD_LAYERS if n in parts) for k in ("flops", "latency_s")}

    def at(samples: float, cost) -> float:
        """``cost(n)`` (``n`` whole samples, ``cost(0) = 0``) at a fractional sample count, interpolated."""
        lo, hi = math.floor(samples), math.ceil(samples)
        v_lo = cost(lo) if lo > 0 else 0.0
        v_hi = cost(hi) if hi > 0 else 0.0
        return v_lo + (samples - lo) * (v_hi - v_lo)

    expected = {"flops": full["embeddings"]["flops"],
                "latency_s": full["embeddings"]["latency_s"] + _line(setup, batch_size)}
    per_layer = []
    for l, name in enumerate(layers):
        n = batch_size * reach[l]
        row = {"layer": l + 1, "reach": reach[l], "samples": n}
        for key in ("flops", "latency_s"):
            layer_cost = at(n, lambda k: priced(k)[name][key])
            classifier_cost = at(n, lambda k: head(priced(k))[key])  # a branch after layers 1 .. L-1, the head after L
            row[key] = layer_cost + classifier_cost
            expected[key] += row[key]
        if l < len(layers) - 1:
            row["check_s"] = at(n, lambda k: _line(check, k))
            expected["latency_s"] += row["check_s"]
        per_layer.append(row)
    full_cost = {k: sum(part[k] for part in full.values()) for k in ("flops", "latency_s")}  # the plain model: no branches
    return {"batch_size": batch_size, "seq_len": seq_len, "exit_counts": counts, "reach": reach,
            "expected_flops": expected["flops"], "full_flops": full_cost["flops"],
            "expected_latency_s": expected["latency_s"], "full_latency_s": full_cost["latency_s"],
            "flops_speedup": full_cost["flops"] / expected["flops"],
            "latency_speedup": full_cost["latency_s"] / expected["latency_s"],
            "mean_exit_layer": sum((l + 1) * c for l, c in enumerate(counts)) / total, "per_layer": per_layer}


__all__ = ["early_exit_cost"]
