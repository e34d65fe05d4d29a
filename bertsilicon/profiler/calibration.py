"""Measure this machine (``bertsilicon profile --calibrate``) so ``hardware="local"`` predicts from
measurements, not a datasheet. About 30-60 s on 2 cores; ``--quick``: small shapes and short timings, a few
seconds (for tests; the curves then stop at small GEMMs and are noisy).

Two sets of kernels are measured (``torch.get_num_threads()`` threads, medians of timed repeats):

* what a plain Hugging Face model runs (PyTorch eager): GEMM rate curves (FLOP/s against GEMM size) with
  ``F.linear`` at ``fp32`` and ``bf16``; the batched attention products (``[b, S, d] @ [b, d, S]``, fp32)
  and ``F.scaled_dot_product_attention`` (HF's ``attn_implementation="sdpa"``); element-wise throughput (add,
  GELU, softmax, LayerNorm, ReLU, in the counting convention of :data:`.counts.FLOPS_PER_ELEMENT`); memory
  bandwidth (``c = a + b`` far beyond the caches); the per-op overhead (an ``nn.Linear`` call on 1 x 8).
  HF has no int8 path: the ``int8`` GEMM curve is bertsilicon's int8 GEMM.
* what a model returned by ``bertsilicon.optimize`` runs, on this CPU's kernel path: our fp32 / bf16 / int8
  GEMMs, padding-free attention, add+LayerNorm and the per-layer-call overhead (:mod:`.kernel_rates`).

GEMM shapes are those of BERT students (K, N in 128..3072; M = tokens in 64..1024), each timed round-robin over
distinct weights filling 64 MiB (a forward reads every weight once, from beyond the caches); a size whose single
call would take over a second (an emulated precision) is skipped and the curve is clamped at the last one.

The record is stored as JSON in ``$BERTSILICON_CALIBRATION`` or ``~/.cache/bertsilicon/calibration.json``
(``$XDG_CACHE_HOME`` respected), keyed by ``cpu:<threads>:<kernel path>``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

from .counts import FLOPS_PER_ELEMENT
from .hardware import Hardware


ENV = "BERTSILICON_CALIBRATION"
VERSION = 4  # records of another version are measured again (3: our kernels' rates, per kernel path;
#              4: GEMMs timed over distinct weights, as in a forward)

_GEMMS_FULL = [(64, 128, 128), (128, 312, 312), (128, 384, 384), (128, 384, 1536), (128, 768, 768),
               (512, 768, 768), (1024, 384, 1536), (1024, 768, 3072)]
_GEMMS_QUICK = [(64, 128, 128), (256, 256, 256), (512, 384, 512)]
_ATTN_FULL = [(12, 128, 26), (12, 128, 32), (12, 128, 64), (96, 128, 32), (384, 128, 64)]
_ATTN_QUICK = [(4, 64, 32), (12, 128, 32)]
_SDPA_FULL = [(1, 12, 128, 26), (1, 12, 128, 32), (1, 12, 128, 64), (8, 12, 128, 32), (32, 12, 128, 64)]
_SDPA_QUICK = [(1, 4, 64, 32), (2, 12, 128, 32)]
_EW_FULL = [3 << 13, 3 << 16, 3 << 19, 3 << 22]  # elements: 24k .. 12.6M (multiples of 384)
_EW_QUICK = [3 << 10, 3 << 16]
_SLOW_CALL_S = 1.0  # a GEMM size whose one call takes longer is not timed (nor any larger one)
# Seconds per calibration step assumed before one was measured (2 cores); only the first estimate uses it.
_PRIOR_S_PER_STEP = {False: 0.5, True: 0.05}


def calibration_path() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bertsilicon" / "calibration.json"


def _kernel_path() -> str:
    """The kernel path of the C++ extension (``avx512``, ``avx2``, ...); ``none`` when it is not built."""
    try:
        from ..backends.cpu import runtime
    except ImportError:
        return "none"
    return runtime.kernel_path()


def _key(threads: int) -> str:
    return f"cpu:{threads}:{_kernel_path()}"


def _timer(min_time: float, repeats: int) -> Callable[[Callable[[], object]], float]:
    """Median seconds per call over ``repeats`` timed groups, each at least ``min_time`` long (one call
    that alone takes longer than ``min_time`` is its own group)."""
    def timed(fn: Callable[[], object]) -> float:
        fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        inner = max(1, int(min_time / one))
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
        return statistics.median(samples)
    return timed


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_gemm_curves(gemms, timer, gen, tick) -> dict:
    """``F.linear`` FLOP/s per size at fp32 and bf16, round-robin over distinct weights
    (:func:`.kernel_rates.weight_copies`); a size predicted (from the last rate) to take over
    :data:`_SLOW_CALL_S` per call ends that precision's curve."""
    import torch
    import torch.nn.functional as F

    from .kernel_rates import round_robin, weight_copies

    curves = {"fp32": [], "bf16": []}
    for M, K, N in gemms:
        flops = 2.0 * M * K * N
        x, w, b = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
        for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            curve = curves[prec]
            if not curve or flops / curve[-1][1] <= _SLOW_CALL_S:
                xd, bd = x.to(dtype), b.to(dtype)
                weights = [w.to(dtype, copy=True) for _ in range(weight_copies(w.nbytes))]
                call = round_robin([lambda wd=wd: F.linear(xd, wd, bd) for wd in weights])
                curve.append((flops, flops / timer(call)))
                del weights, call
            tick()
    return curves


def partial_path(path: Path) -> Path:
    """Where a calibration still running keeps what it measured so far (removed when it completes)."""
    return path.with_name(path.stem + ".partial.json")


def calibrate(quick: bool = False, path=None, threads: Optional[int] = None, progress: bool = True) -> dict:
    """Measure this CPU and store the record; returns it. ``quick``: small shapes and few repeats (a few
    seconds; for tests — the curves then cover only small GEMMs). Prints an estimate of the time first
    (refined after the first section) and writes each section to :func:`partial_path` as it completes."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..runlog import RunClock
    from . import kernel_rates

    if threads is not None:
        torch.set_num_threads(int(threads))
    threads = torch.get_num_threads()
    timer = _timer(*((0.002, 3) if quick else (0.02, 3)))
    gemms, attns = (_GEMMS_QUICK, _ATTN_QUICK) if quick else (_GEMMS_FULL, _ATTN_FULL)
    sdpas = _SDPA_QUICK if quick else _SDPA_FULL
    ew_sizes = _EW_QUICK if quick else _EW_FULL
    n_big = 1 << 20 if quick else 1 << 24  # bandwidth: far larger than the caches (3 x 64 MB)
    gen = torch.Generator().manual_seed(0)
    built = _kernel_path() != "none"
    path = Path(path) if path else calibration_path()
    sections = [2 * len(gemms), len(attns), len(sdpas), 1, 5 * len(ew_sizes), 1] + \
        ([kernel_rates.steps(quick)] if built else [])
    clock = RunClock("calibration", sections, _PRIOR_S_PER_STEP[bool(quick)], unit="section")
    clock.start()
    measured = {"partial": True, "threads": threads, "quick": quick, "cpu": _cpu_name(), "kernel_path": _kernel_path()}

    def section_done(**values):
        measured.update(values)
        clock.finished()
        if clock.done < len(sections):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial_path(path).write_text(json.dumps(measured, indent=1))

    bar = tqdm(total=sum(sections), desc="calibrating", disable=not progress)
    with torch.inference_mode():
        curves = _torch_gemm_curves(gemms, timer, gen, bar.update)
        section_done(gemm_curve=curves)
        attention = []
        for bsz, S, d in attns:
            q = torch.randn(bsz, S, d, generator=gen)
            k = torch.randn(bsz, d, S, generator=gen)
            flops = 2.0 * bsz * S * S * d
            attention.append((flops, flops / timer(lambda: torch.matmul(q, k))))
            bar.update()
        section_done(attention_curve=attention)
        fused_attention = []
        for bsz, heads, S, d in sdpas:
            q, k, v = (torch.randn(bsz, heads, S, d, generator=gen) for _ in range(3))
            flops = 4.0 * bsz * heads * S * S * d  # both matmuls
            fused_attention.append((flops, flops / timer(lambda: F.scaled_dot_product_attention(q, k, v))))
            bar.update()
        section_done(fused_attention_curve=fused_attention)
        a = torch.randn(n_big, generator=gen)
        b = torch.randn(n_big, generator=gen)
        c = torch.empty_like(a)
        bandwidth = 3 * 4 * n_big / timer(lambda: torch.add(a, b, out=c))
        bar.update()
        section_done(bandwidth=bandwidth)
        elementwise = {cls: [] for cls in ("add", "gelu", "softmax", "layernorm", "relu")}
        g, beta = torch.ones(384), torch.zeros(384)
        for n in ew_sizes:  # activation sizes of BERT students: cache-resident to DRAM-sized
            x, y, z = a[:n], b[:n], c[:n]
            rows, h = x.view(-1, 128), x.view(-1, 384)
            for cls, fn in (("add", lambda: torch.add(x, y, out=z)), ("gelu", lambda: F.gelu(x)),
                            ("softmax", lambda: torch.softmax(rows, -1)),
                            ("layernorm", lambda: F.layer_norm(h, (384,), g, beta)), ("relu", lambda: torch.relu(x))):
                flops = n * FLOPS_PER_ELEMENT[cls]
                elementwise[cls].append((flops, flops / timer(fn)))
                bar.update()
        section_done(elementwise_curve=elementwise)
        tiny = torch.nn.Linear(8, 8)
        xt = torch.randn(1, 8, generator=gen)
        overhead = timer(lambda: tiny(xt))
        bar.update()
        section_done(launch_overhead_s=overhead)
    kernels = kernel_rates.measure_kernels(timer, quick, gen, bar.update) if built else None
    if built:
        section_done(kernels=kernels)
    if kernels:  # HF has no int8 GEMM: a plain model priced at int8 is priced on ours
        curves["int8"] = kernels["curves"]["gemm:int8"]
    bar.close()
    record = {
        "version": VERSION, "device": "cpu", "threads": threads, "quick": quick, "cpu": _cpu_name(),
        "kernel_path": _kernel_path(), "torch": torch.__version__,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "gemm_curve": {p: sorted(v) for p, v in curves.items()}, "attention_curve": sorted(attention),
        "fused_attention_curve": sorted(fused_attention),
        "elementwise_curve": {k: sorted(v) for k, v in elementwise.items()}, "bandwidth": bandwidth,
        "launch_overhead_s": overhead, "kernels": kernels,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    store = _load(path)
    store.setdefault("records", {})[_key(threads)] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1))
    tmp.replace(path)
    partial_path(path).unlink(missing_ok=True)
    return record


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_calibration(threads: Optional[int] = None, path=None) -> Optional[dict]:
    import torch

    threads = threads or torch.get_num_threads()
    rec = _load(Path(path) if path else calibration_path()).get("records", {}).get(_key(threads))
    return rec if isinstance(rec, dict) and rec.get("version") == VERSION else None


def hardware_from_record(rec: dict) -> Hardware:
    curves = {p: [tuple(x) for x in v] for p, v in rec["gemm_curve"].items() if v}
    peak = {p: max(r for _, r in v) for p, v in curves.items()}
    peak.setdefault("fp16", 0.0)
    elementwise = {k: [tuple(x) for x in v] for k, v in rec["elementwise_curve"].items()}
    kernels = rec.get("kernels") or {"curves": {}, "layer_call_s": 0.0, "forward_s": 0.0}
    return Hardware(
        name="local", kind="cpu", peak=peak, vector_flops=max(r for v in elementwise.values() for _, r in v),
        bandwidth=rec["bandwidth"],
        launch_overhead_s=rec["launch_overhead_s"], tdp_w=None, process="unknown",
        source=(f"measured by `bertsilicon profile --calibrate` at {rec['measured_at']} on {rec['cpu']}, "
                f"{rec['threads']} threads, {rec['kernel_path']} kernel path, torch {rec['torch']}"
                f"{' (quick)' if rec.get('quick') else ''}"),
        int8_float="fp32", static_w=0.0, gemm_curve=curves,
        attention_curve=[tuple(x) for x in rec["attention_curve"]],
        fused_attention_curve=[tuple(x) for x in rec["fused_attention_curve"]], elementwise_curve=elementwise,
        kernel_curves={k: [tuple(x) for x in v] for k, v in kernels["curves"].items()},
        layer_call_s=kernels["layer_call_s"], forward_s=kernels["forward_s"])


def local_hardware(threads: Optional[int] = None) -> Hardware:
    """The calibrated local CPU (at the current torch thread count); calibrates now if never done."""
    rec = load_calibration(threads)
    if rec is None:
        warnings.warn(f"no calibration of this machine in {calibration_path()}; measuring now "
                      "(run `bertsilicon profile --calibrate` once to do it ahead)", stacklevel=3)
        rec = calibrate(threads=threads, progress=False)
    return hardware_from_record(rec)
