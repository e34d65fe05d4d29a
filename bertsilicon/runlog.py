"""Long runs say how long they will take, and refine it once they know.

A run is a list of configurations, each with a relative cost ``weight`` (its work: e.g. batch x length x
timed rounds x providers). Before the first starts, :meth:`RunClock.start` prints an estimate from a prior cost per
unit of weight (a rough rate, stated as such); after the first configuration, :meth:`RunClock.finished` prints
the estimate from its measured seconds per unit of weight, applied to the weight still to run.

Lines go to stderr, one each, so they never mix with a command's table on stdout. A file a run resumes from is
written with :func:`atomic_write`, so a kill leaves the old file or the new one, never a part.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class RunClock:
    """Estimates for a run of configurations of relative cost ``weights`` (see the module docstring).

    ``prior_s_per_weight``: the seconds one unit of weight is assumed to take before any was measured; ``unit``:
    what one entry of ``weights`` is called in the lines printed."""

    def __init__(self, label: str, weights: Sequence[float], prior_s_per_weight: float, stream=None,
                 unit: str = "configuration", prior: str = "a rough prior"):
        if not weights or any(w <= 0 for w in weights):
            raise ValueError(f"weights: expected positive relative costs, got {list(weights)!r}")
        self.label, self.weights, self.prior = label, [float(w) for w in weights], float(prior_s_per_weight)
        self.stream = stream if stream is not None else sys.stderr
        self.unit, self.prior_name = unit, prior
        self.done, self.started = 0, None
        self.lines: list[str] = []  # what was printed (a report may quote it)

    def _say(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def estimate_s(self, s_per_weight: Optional[float] = None) -> float:
        """Seconds still to run: the remaining weight at ``s_per_weight`` (default: the prior)."""
        return sum(self.weights[self.done:]) * (self.prior if s_per_weight is None else s_per_weight)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._say(f"{self.label}: {len(self.weights)} {self.unit}(s); estimated time ~{duration(self.estimate_s())} "
                  f"({self.prior_name}; refined after the first {self.unit})")

    def finished(self) -> None:
        """One more configuration is done (call in order); after the first, print the measured estimate."""
        if self.started is None:
            raise RuntimeError("RunClock.finished() before start()")
        self.done += 1
        elapsed = time.perf_counter() - self.started
        if self.done == 1 and self.done < len(self.weights):
            rate = elapsed / self.weights[0]
            self._say(f"{self.label}: the first {self.unit} took {duration(elapsed)}; about "
                      f"{duration(self.estimate_s(rate))} more for the other {len(self.weights) - 1}")


def atomic_write(target, write: Callable) -> None:
    """``write(file)`` (a binary file object) into a temporary sibling of ``target``, fsync, rename over it, fsync
    the folder: ``target`` is then either its old content or the whole new one."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
