"""Precision experiments: run a model in number formats x rounding modes x places and measure drift.

* :func:`emulate` — context manager rounding an HF model's ``nn.Linear`` weights, activations and/or
  GEMM outputs to a format (:mod:`bertsilicon.precision.emulate` says what is and is not emulated).
* :func:`run_experiment` / :func:`write_report` — per-layer SQNR, pooled-embedding cosine, top-10
  retrieval overlap and kNN module accuracy on real text, with bootstrap intervals and seed bands;
  JSON + Markdown + PNG heat map. CLI: ``bertsilicon precision``.
"""
from .emulate import WHERE, emulate, round_tensor
from .experiment import run_experiment, write_report

__all__ = ["WHERE", "emulate", "round_tensor", "run_experiment", "write_report"]
