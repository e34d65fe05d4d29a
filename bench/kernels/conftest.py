"""pytest configuration of the per-kernel benchmarks: collect ``bench_*.py`` files, make ``harness``
importable, and write ``kernels.{json,md}`` at the end of the pytest run into ``$BERTSILICON_KERNEL_RESULTS``
(the recorded tables: ``bench/results/cpu``), else ``./bertsilicon-results/kernels``.

Run: ``.venv/bin/pytest bench/kernels --benchmark-only -q`` (or one ``bench_*.py`` file).
``BERTSILICON_BENCH_ROUNDS`` sets the timed rounds per benchmark (default 100);
``BERTSILICON_BENCH_FINAL=1`` marks the results as final (taken on a quiet machine);
``BERTSILICON_BENCH_THREADS=n`` fixes torch's (and so our kernels') thread count (default: torch's).
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

TARGETS = {  # speed targets: speedup over the peer, per op/peer
    "add_layernorm/torch": 1.5,
    "bias_gelu/torch": 1.5,
    "attention/torch_sdpa": 1.0,
    # GEMM family (bench_gemm*.py): peers named torch_dynamic_int8, torch_int_mm, torch
    "int8_linear/torch_dynamic_int8": 1.0,
    "int8_gemm/torch_int_mm": 0.7,
    "linear/torch": 0.9,
}


def pytest_sessionstart(session):
    if os.environ.get("BERTSILICON_BENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["BERTSILICON_BENCH_THREADS"]))


def pytest_collect_file(file_path, parent):
    # files named on the command line are collected by pytest itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session, exitstatus):
    path = harness.write_results("kernels", targets=TARGETS,
                                 preliminary=os.environ.get("BERTSILICON_BENCH_FINAL") != "1")
    if path is not None:
        print(f"\nresults: {path} and {path.with_suffix('.md')}")
