"""Shared pieces of the per-kernel benchmarks (pytest-benchmark): BERT-student shapes, analytic byte and
FLOP counts, and a results table merged into ``bench/results/cpu/kernels.{json,md}``.

Each benchmark times one *provider* (``"bertsilicon"`` or a peer such as ``"torch"``) on one *case*
(op + shape + dtype) and calls :func:`record`; at the end of the pytest run ``conftest.py`` calls
:func:`write_results`, which merges the new rows into the JSON (rows of other ops and of other runs are
kept, so the GEMM and elementwise benchmarks can run separately) and rewrites the Markdown table with
``speedup = peer median / bertsilicon median`` per case, both measured in the same run.

Byte counts are the ideal traffic (every input read once, every output written once); FLOP counts are
the op's arithmetic, stated per op below, the same for every provider of a case.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from bertsilicon.benchmark.machine import describe, machine_info

ROOT = Path(__file__).resolve().parents[2]
# Where the tables go: $BERTSILICON_KERNEL_RESULTS (the recorded ones: bench/results/cpu), else a new folder under
# the current one, so a run never overwrites the recorded tables by default.
RESULTS_ENV = "BERTSILICON_KERNEL_RESULTS"
RESULTS_DIR = Path(os.environ.get(RESULTS_ENV) or Path.cwd() / "bertsilicon-results" / "kernels")
TOKENS = 8 * 128        # batch 8 x sequence 128
HIDDENS = (384, 768)    # MiniLM-L6 / BERT-base widths
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OURS = "bertsilicon"

_ROWS: list[dict] = []
# Which results file each op's rows go to (default "kernels"): the GEMM family keeps its own table.
# Looked up by the op's first word, so "linear (plain op)" is a "linear" row.
RESULT_FILE = {"linear": "gemm", "int8_linear": "gemm", "int8_gemm": "gemm", "quantize": "gemm"}


def result_file(op: str) -> str:
    return RESULT_FILE.get(op.split(" ")[0], "kernels")


# ------------------------------------------------------------------------------------------------ #
# analytic counts                                                                                   #
# ------------------------------------------------------------------------------------------------ #
def elementwise_bytes(numel: int, dtype: torch.dtype, reads: int, writes: int = 1, extra: int = 0) -> int:
    """Ideal traffic of an elementwise op: ``reads`` inputs and ``writes`` outputs of ``numel`` elements,
    plus ``extra`` bytes (per-feature vectors such as LayerNorm's weight and bias)."""
    return numel * dtype.itemsize * (reads + writes) + extra


def attention_flops(B: int, H: int, Lq: int, Lk: int, D: int) -> int:
    """Two matmuls (Q K^T and P V) of B H Lq Lk D multiply-adds each = 4 B H Lq Lk D FLOPs, on the
    padded lengths (what SDPA computes; our kernel skips padded keys, so this overstates its work)."""
    return 4 * B * H * Lq * Lk * D


def attention_bytes(B: int, H: int, Lq: int, Lk: int, D: int, dtype: torch.dtype) -> int:
    """q and out [B, H, Lq, D], k and v [B, H, Lk, D], each touched once."""
    return (2 * Lq + 2 * Lk) * B * H * D * dtype.itemsize


def gemm_flops(M: int, N: int, K: int) -> int:
    """2 M N K (one multiply and one add per multiply-add)."""
    return 2 * M * N * K


# ------------------------------------------------------------------------------------------------ #
# recording                                                                                         #
# ------------------------------------------------------------------------------------------------ #
def record(benchmark, *, op: str, case: str, provider: str, nbytes: Optional[int] = None,
           flops: Optional[int] = None, note: str = "") -> None:
    """Keep the median of a finished ``benchmark(...)`` call with its analytic counts."""
    stats = benchmark.stats.stats
    median = float(stats.median)
    benchmark.extra_info.update(op=op, case=case, provider=provider, bytes=nbytes, flops=flops)
    _ROWS.append({
        "op": op, "case": case, "provider": provider, "median_s": median, "min_s": float(stats.min),
        "iqr_s": float(stats.iqr),
        "rounds": int(stats.rounds), "bytes": nbytes, "flops": flops,
        "GB_per_s": nbytes / median / 1e9 if nbytes else None,
        "GFLOP_per_s": flops / median / 1e9 if flops else None,
        "note": note,
    })


def run(benchmark, fn, *, op: str, case: str, provider: str, nbytes=None, flops=None, note: str = "",
        rounds: Optional[int] = None):
    """Time ``fn`` (warm-up, then ``rounds`` timed calls; medians are what we report) and record it.
    ``rounds`` defaults to ``BERTSILICON_BENCH_ROUNDS`` (100); pass fewer for slow peers."""
    fn()  # warm-up outside the timer: first-call allocations, thread-pool start
    result = benchmark.pedantic(fn, rounds=rounds or _rounds(), iterations=1, warmup_rounds=3 if rounds is None else 1)
    record(benchmark, op=op, case=case, provider=provider, nbytes=nbytes, flops=flops, note=note)
    return result


def _rounds() -> int:
    return int(os.environ.get("BERTSILICON_BENCH_ROUNDS", "100"))


def machine() -> dict:
    """Provenance of this run (``bertsilicon.benchmark.machine``) at torch's thread count."""
    return machine_info(torch.get_num_threads())


def _speedups(rows: list[dict]) -> list[dict]:
    """One line per (op, case): our median, each peer's, and peer / ours."""
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["op"], r["case"]), {})[r["provider"]] = r
    lines = []
    for (op, case), by in cases.items():
        ours = by.get(OURS)
        for provider, peer in by.items():
            if provider == OURS:
                continue
            lines.append({"op": op, "case": case, "peer": provider,
                          "ours_ms": ours["median_s"] * 1e3 if ours else None,
                          "peer_ms": peer["median_s"] * 1e3,
                          "speedup": peer["median_s"] / ours["median_s"] if ours else None,
                          "speedup_best": (peer["min_s"] / ours["min_s"]
                                           if ours and ours.get("min_s") and peer.get("min_s") else None),
                          "ours_GBps": ours["GB_per_s"] if ours else None,
                          "ours_GFLOPps": ours["GFLOP_per_s"] if ours else None,
                          "peer_GBps": peer["GB_per_s"], "peer_GFLOPps": peer["GFLOP_per_s"],
                          "note": (ours or {}).get("note", "")})
    return lines


def write_results(name: str = "kernels", targets: Optional[dict] = None, preliminary: bool = True) -> Optional[Path]:
    """Merge this pytest run's rows of the ops that belong to ``name`` (``RESULT_FILE``) into
    ``bench/results/cpu/<name>.json`` and rewrite ``<name>.md``; other rows wait for their own file."""
    mine = [r for r in _ROWS if result_file(r["op"]) == name]
    if not mine:
        return None
    _ROWS[:] = [r for r in _ROWS if result_file(r["op"]) != name]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    fresh = {(r["op"], r["case"], r["provider"]) for r in mine}
    rows = [r for r in old.get("rows", []) if (r["op"], r["case"], r["provider"]) not in fresh
            and result_file(r["op"]) == name] + mine
    runs = {op: m for op, m in old.get("machines", {}).items() if result_file(op) == name}
    info = machine()
    for op in {r["op"] for r in mine}:
        runs[op] = info
    doc = {"what": "per-kernel CPU benchmarks: pytest-benchmark medians, speedup = peer / bertsilicon",
           "preliminary": preliminary, "targets": {**old.get("targets", {}), **(targets or {})},
           "machines": runs, "rows": rows, "speedups": _speedups(rows)}
    path.write_text(json.dumps(doc, indent=1))
    (RESULTS_DIR / f"{name}.md").write_text(_markdown(doc))
    _plot(doc, RESULTS_DIR / f"{name}.png")
    return path


def _plot(doc: dict, path: Path) -> None:
    """Horizontal bars: speedup over each peer per case, with the op's target as a tick."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    lines = sorted((s for s in doc["speedups"] if s["speedup"]), key=lambda s: (s["op"], s["case"], s["peer"]))
    if not lines:
        return
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(lines) + 1.2))
    ys = range(len(lines))
    ax.barh(ys, [s["speedup"] for s in lines], color=["tab:green" if s["speedup"] >= 1 else "tab:red" for s in lines])
    for y, s in zip(ys, lines):
        target = doc.get("targets", {}).get(f'{s["op"]}/{s["peer"]}')
        if target:
            ax.plot([target, target], [y - 0.4, y + 0.4], color="black", lw=1.5)
    ax.set_yticks(list(ys), [f'{s["op"]} {s["case"]} vs {s["peer"]}' for s in lines], fontsize=7)
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("speedup = peer median / bertsilicon median (black tick: target)")
    ax.set_title("CPU kernels" + (" (preliminary: shared machine)" if doc.get("preliminary") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _markdown(doc: dict) -> str:
    out = ["# CPU kernel benchmarks", ""]
    if doc.get("preliminary"):
        out += ["**Preliminary**: measured on a shared machine while other jobs ran; re-run on a quiet machine "
                "(command below) for final figures.", ""]
    out += ["speedup = peer median / bertsilicon median (same inputs, same run, same thread count). "
            "GB/s and GFLOP/s come from analytic counts (bench/kernels/harness.py). "
            "best-of = the same ratio on the fastest round of each (robust to a loaded machine's scheduler).", "",
            "| op | case | peer | bertsilicon ms | peer ms | speedup | best-of | target | ours GB/s | ours GFLOP/s | peer GB/s | peer GFLOP/s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    targets = doc.get("targets", {})
    for s in sorted(doc["speedups"], key=lambda s: (s["op"], s["case"], s["peer"])):
        target = targets.get(f'{s["op"]}/{s["peer"]}')
        out.append(f'| {s["op"]} | {s["case"]} | {s["peer"]} | {_fmt(s["ours_ms"], ".3f")} | {_fmt(s["peer_ms"], ".3f")} '
                   f'| {_fmt(s["speedup"], ".2f")}x | {_fmt(s.get("speedup_best"), ".2f")}x '
                   f'| {"" if target is None else f">= {target}x"} '
                   f'| {_fmt(s["ours_GBps"], ".1f")} | {_fmt(s["ours_GFLOPps"], ".1f")} '
                   f'| {_fmt(s["peer_GBps"], ".1f")} | {_fmt(s["peer_GFLOPps"], ".1f")} |')
    out += ["", "## Machines", ""]
    for op, m in sorted(doc["machines"].items()):
        out.append(f'- **{op}**: {describe(m)} Kernel path '
                   f'{(m["cpu"].get("bertsilicon_cpu_features") or {}).get("active_isa")}.')
    out += ["", "Re-run: `.venv/bin/pytest bench/kernels --benchmark-only -q` (all kernels) or one file, "
            "e.g. `.venv/bin/pytest bench/kernels/bench_attention.py --benchmark-only -q`.", ""]
    return "\n".join(out)
