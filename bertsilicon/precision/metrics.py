"""Drift metrics of a model run in an emulated format against its fp32 self, per item (so they can be
bootstrapped over the texts).

* :func:`sqnr_db` — signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - x)^2)``.
* :func:`topk_overlap` — per query, ``|top-k(x) ∩ top-k(ref)| / k`` of cosine neighbours (self excluded).
* :func:`knn_correct` — per item, whether leave-one-out kNN classification is right; the same rule as
  :func:`bertsilicon.models.eval.knn_accuracy` (its mean), which only returns the mean.
* :func:`bootstrap_ci` — percentile bootstrap interval of the mean of per-item values.

Pooled cosines come from :func:`bertsilicon.models.eval.pooled_cosines`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..models.eval import cosine_neighbours, knn_correct, pooled_cosines  # noqa: F401  (one kNN rule, re-exported)


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """``10 log10(sum ref^2 / sum (ref - x)^2)`` in float64; ``inf`` when x == ref."""
    ref, x = ref.double(), x.double()
    noise = float(((ref - x) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def topk_overlap(emb: torch.Tensor, ref_emb: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Per query: the fraction of its ``k`` nearest neighbours under ``ref_emb`` that it keeps under
    ``emb`` (cosine similarity, the query itself excluded). ``[N, H]`` and ``[N, H_ref]`` -> ``[N]`` float64:
    the widths may differ (a student narrower or wider than its teacher), only the neighbours are compared."""
    if emb.dim() != 2 or ref_emb.dim() != 2 or emb.shape[0] != ref_emb.shape[0]:
        raise ValueError(f"emb and ref_emb must be [N, width] with one N, got {tuple(emb.shape)} and "
                         f"{tuple(ref_emb.shape)}")
    if not 1 <= k < emb.shape[0]:
        raise ValueError(f"k must be in [1, N-1] = [1, {emb.shape[0] - 1}], got {k}")
    _, a = cosine_neighbours(emb, k)
    _, b = cosine_neighbours(ref_emb, k)
    return (a[:, :, None] == b[:, None, :]).any(-1).sum(-1).double() / k


def bootstrap_ci(values: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item ``values`` (resampling items)."""
    v = values.double().flatten()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    means = v[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi
