"""Hard labels for the ``label_ce`` loss, where some texts have none (a transfer set: the teacher labels every
text, hard labels exist for a subset, as in Hinton et al.'s transfer set and Tang et al.'s augmented one).

    labels[i]      a class index (int >= 0), or None / MISSING (-100) for a text without a hard label
    label_ce(z, y) = mean over the rows with a label of  -log softmax(z_r)[y_r]      (0 when a batch has none)

Token-level heads pass ``[B, S]`` labels with MISSING at the positions that carry none (PyTorch's
``ignore_index`` convention); the mean is then over the labelled positions.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

MISSING = -100


def label_tensor(labels: Optional[Sequence], n: int) -> Optional[torch.Tensor]:
    """``labels`` (one per text: int >= 0, None or MISSING) as a long tensor ``[n]`` with MISSING for the
    missing ones; None stays None. Raises ValueError naming ``labels`` for a wrong length or entry."""
    if labels is None:
        return None
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries; expected one per text ({n})")
    bad = [y for y in labels if not (y is None or (isinstance(y, int) and not isinstance(y, bool)
                                                   and (y >= 0 or y == MISSING)))]
    if bad:
        raise ValueError(f"labels must be class indices (int >= 0), or None / {MISSING} for a text without a "
                         f"label, one per text; got {bad[0]!r}")
    return torch.tensor([MISSING if y is None else y for y in labels], dtype=torch.long)


def label_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [..., C]`` against ``labels [...]`` over the labelled rows (float32); a batch
    with no labelled row gives 0 (a graph-connected zero, so the other losses still train)."""
    z, y = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"labels has shape {tuple(labels.shape)}; expected the logits' leading shape "
                         f"{tuple(logits.shape[:-1])}")
    labelled = y != MISSING
    if not bool(labelled.any()):
        return z.sum() * 0.0
    return F.cross_entropy(z[labelled], y[labelled])


__all__ = ["MISSING", "label_tensor", "label_cross_entropy"]
