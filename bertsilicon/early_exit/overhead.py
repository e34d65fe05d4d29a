"""What early exit costs beyond the layers and the classifiers, measured, for the profiler's expected cost
(:func:`bertsilicon.profiler.early_exit.early_exit_cost`, ``overhead=``):

* ``setup``: once per batch, :func:`~.inference.classify`'s entry (the model's forward stopped at its encoder,
  the stream built) against the plain model's forward;
* ``check``: per layer at which samples may leave, the exit check and compaction (first tokens gathered,
  normalized entropy, the decision, the outputs scattered, the stream compacted), the branch classifier excluded.

Each is a line in the batch's sample count ``n``, ``fixed_s + per_sample_s * n``, through two batch sizes:

    overhead = exit_overhead_fit(ee, tokenizer, texts, batch_sizes=(1, 32))
    early_exit_cost(ee.model, counts, batch_size=32, overhead=overhead)

One batch is timed four ways, interleaved, each its fastest of ``calls`` (other work on a shared machine can
only raise a floor): the plain model; ``classify`` at speed 0 (no check before the last layer); ``classify`` at
a speed no sample meets (every layer but the last checks every sample and keeps them all, so compaction copies
the whole stream); one branch classifier on the batch's first tokens. Then ``setup = speed0 - plain`` and
``check = (checked - speed0) / (layers - 1) - branch``, each at least 0.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ..profiler.kernel_rates import fastest_calls
from .branches import EarlyExitModel
from .inference import classify

NO_EXIT_SPEED = 1e-45  # > 0, so every layer checks; as float32 the smallest positive number: only an entropy of 0 is below


@torch.no_grad()
def exit_overhead_seconds(ee: EarlyExitModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          calls: int = 30) -> dict:
    """``{"setup_s", "check_s"}`` of this batch (module docstring)."""
    if ee.num_layers < 2:
        raise ValueError("ee: a model of one layer has no exit check to measure")
    out = classify(ee, input_ids, attention_mask, speed=NO_EXIT_SPEED)
    if not bool((out.exit_layer == ee.num_layers).all()):
        raise ValueError("input_ids: some sample's classifier is certain (normalized entropy 0) before the last "
                         "layer, so it leaves at any speed; measure on other texts")
    first = torch.randn(len(input_ids), ee.head.dense.in_features, generator=torch.Generator().manual_seed(0))
    plain, speed0, checked, branch = fastest_calls(
        lambda: ee.model(input_ids=input_ids, attention_mask=attention_mask),
        lambda: classify(ee, input_ids, attention_mask, speed=0.0),
        lambda: classify(ee, input_ids, attention_mask, speed=NO_EXIT_SPEED),
        lambda: ee.branches[0](first), calls=calls)
    return {"setup_s": max(0.0, speed0 - plain),
            "check_s": max(0.0, (checked - speed0) / (ee.num_layers - 1) - branch)}


def exit_overhead_fit(ee: EarlyExitModel, tokenizer, texts: Sequence[str], batch_sizes: Tuple[int, int] = (1, 32),
                      max_length: int = 128, calls: int = 30) -> dict:
    """The overheads measured on the first ``b`` of ``texts`` for each of the two ``batch_sizes``, and the lines
    through them: ``{"seconds": {b: {"setup_s", "check_s"}}, "setup": (fixed_s, per_sample_s), "check": (...)}``
    (every term >= 0)."""
    small, large = batch_sizes
    if not (isinstance(small, int) and isinstance(large, int) and 1 <= small < large <= len(texts)):
        raise ValueError(f"batch_sizes must be two ints 1 <= a < b <= len(texts) = {len(texts)}; got {batch_sizes}")
    seconds = {}
    for b in (small, large):
        enc = tokenizer(list(texts[:b]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        seconds[b] = exit_overhead_seconds(ee, enc["input_ids"], enc["attention_mask"], calls=calls)
    fit = {"seconds": seconds}
    for part in ("setup", "check"):
        lo, hi = seconds[small][f"{part}_s"], seconds[large][f"{part}_s"]
        per_sample = max(0.0, (hi - lo) / (large - small))
        fit[part] = (max(0.0, lo - small * per_sample), per_sample)
    return fit


__all__ = ["exit_overhead_seconds", "exit_overhead_fit", "NO_EXIT_SPEED"]
