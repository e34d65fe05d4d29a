"""Measure this machine (``bertsilicon profile --calibrate``) so ``hardware="local"`` predicts from
measurements, not a datasheet.

What is measured (PyTorch eager, ``torch.get_num_threads()`` threads, medians of timed repeats):

* GEMM rate curves, FLOP/s against GEMM size, per precision: ``fp32`` and ``bf16`` with
  ``F.linear`` (weight ``[N, K]``, bias) and ``int8`` with ``torch._int_mm`` (int8 x int8 -> int32;
  PyTorch's dynamic int8 linear where the build lacks it);
  shapes are the GEMMs of BERT students (K, N in 128..3072; M = tokens in 64..4096).
* the batched attention products (``[b, S, d] @ [b, d, S]``, fp32) and the fused attention
  ``F.scaled_dot_product_attention`` (what HF runs with ``attn_implementation="sdpa"``),
* element-wise throughput (add, GELU, softmax, LayerNorm, ReLU) at activation sizes from 24k to 12.6M
  elements, as FLOP/s in the counting convention of :data:`.counts.FLOPS_PER_ELEMENT`,
* memory bandwidth from ``c = a + b`` on tensors far larger than the caches (3 x 4 bytes per element),
* the per-op overhead: the time of an ``nn.Linear`` call on a 1 x 8 input (module call + dispatch).

The record is stored as JSON in ``$BERTSILICON_CALIBRATION`` or ``~/.cache/bertsilicon/calibration.json``
(``$XDG_CACHE_HOME`` respected), keyed by ``cpu:<threads>``.
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
VERSION = 2  # records of another version are measured again

_GEMMS_FULL = [(64, 128, 128), (128, 312, 312), (128, 384, 384), (128, 384, 1536), (128, 768, 768),
               (512, 768, 768), (1024, 384, 1536), (1024, 768, 3072), (4096, 384, 1536), (4096, 768, 3072)]
_GEMMS_QUICK = [(64, 128, 128), (256, 256, 256), (512, 384, 512)]
_ATTN_FULL = [(12, 128, 26), (12, 128, 32), (12, 128, 64), (96, 128, 32), (384, 128, 32), (384, 128, 64)]
_ATTN_QUICK = [(4, 64, 32), (12, 128, 32)]
_SDPA_FULL = [(1, 12, 128, 26), (1, 12, 128, 32), (1, 12, 128, 64), (8, 12, 128, 32), (32, 12, 128, 64)]
_SDPA_QUICK = [(1, 4, 64, 32), (2, 12, 128, 32)]
_EW_FULL = [3 << 13, 3 << 16, 3 << 19, 3 << 22]  # elements: 24k .. 12.6M (multiples of 384)
_EW_QUICK = [3 << 10, 3 << 16]


def calibration_path() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bertsilicon" / "calibration.json"


def _key(threads: int) -> str:
    return f"cpu:{threads}"


def _time(fn: Callable[[], object], min_time: float, repeats: int) -> float:
    """Median seconds per call over ``repeats`` timed groups, each at least ``min_time`` long."""
    fn()
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _int8_gemm(M: int, K: int, N: int, gen) -> Callable[[], object]:
    """An int8 GEMM ``[M, K] x [K, N] -> int32``: ``torch._int_mm``, or where this torch build has no CPU
    kernel for it, PyTorch's dynamic int8 linear (which also quantises the activations per call)."""
    import torch

    xi = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=gen)
    wi = torch.randint(-127, 128, (K, N), dtype=torch.int8, generator=gen)
    try:
        torch._int_mm(xi, wi)
        return lambda: torch._int_mm(xi, wi)
    except (RuntimeError, AttributeError, NotImplementedError):
        lin = torch.ao.nn.quantized.dynamic.Linear(K, N, dtype=torch.qint8)
        x = torch.randn(M, K, generator=gen)
        return lambda: lin(x)


def calibrate(quick: bool = False, path=None, threads: Optional[int] = None, progress: bool = True) -> dict:
    """Measure this CPU and store the record; returns it. ``quick``: small shapes and few repeats (a few
    seconds; for tests — the curves then cover only small GEMMs)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if threads is not None:
        torch.set_num_threads(int(threads))
    threads = torch.get_num_threads()
    min_time, repeats = (0.002, 3) if quick else (0.05, 5)
    gemms, attns = (_GEMMS_QUICK, _ATTN_QUICK) if quick else (_GEMMS_FULL, _ATTN_FULL)
    sdpas = _SDPA_QUICK if quick else _SDPA_FULL
    ew_sizes = _EW_QUICK if quick else _EW_FULL
    n_big = 1 << 20 if quick else 1 << 24  # bandwidth: far larger than the caches (3 x 64 MB)
    gen = torch.Generator().manual_seed(0)
    steps = 3 * len(gemms) + len(attns) + len(sdpas) + 5 * len(ew_sizes) + 2
    bar = tqdm(total=steps, desc="calibrating", disable=not progress)
    curves = {"fp32": [], "bf16": [], "int8": []}
    with torch.inference_mode():
        for M, K, N in gemms:
            flops = 2.0 * M * K * N
            x = torch.randn(M, K, generator=gen)
            w = torch.randn(N, K, generator=gen)
            b = torch.randn(N, generator=gen)
            for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                xd, wd, bd = x.to(dtype), w.to(dtype), b.to(dtype)
                curves[prec].append((flops, flops / _time(lambda: F.linear(xd, wd, bd), min_time, repeats)))
                bar.update()
            curves["int8"].append((flops, flops / _time(_int8_gemm(M, K, N, gen), min_time, repeats)))
            bar.update()
        attention = []
        for bsz, S, d in attns:
            q = torch.randn(bsz, S, d, generator=gen)
            k = torch.randn(bsz, d, S, generator=gen)
            flops = 2.0 * bsz * S * S * d
            attention.append((flops, flops / _time(lambda: torch.matmul(q, k), min_time, repeats)))
            bar.update()
        fused_attention = []
        for bsz, heads, S, d in sdpas:
            q, k, v = (torch.randn(bsz, heads, S, d, generator=gen) for _ in range(3))
            flops = 4.0 * bsz * heads * S * S * d  # both matmuls
            fused_attention.append((flops, flops / _time(lambda: F.scaled_dot_product_attention(q, k, v),
                                                         min_time, repeats)))
            bar.update()
        a = torch.randn(n_big, generator=gen)
        b = torch.randn(n_big, generator=gen)
        c = torch.empty_like(a)
        bandwidth = 3 * 4 * n_big / _time(lambda: torch.add(a, b, out=c), min_time, repeats)
        bar.update()
        elementwise = {cls: [] for cls in ("add", "gelu", "softmax", "layernorm", "relu")}
        g, beta = torch.ones(384), torch.zeros(384)
        for n in ew_sizes:  # activation sizes of BERT students: cache-resident to DRAM-sized
            x, y, z = a[:n], b[:n], c[:n]
            rows, h = x.view(-1, 128), x.view(-1, 384)
            for cls, fn in (("add", lambda: torch.add(x, y, out=z)), ("gelu", lambda: F.gelu(x)),
                            ("softmax", lambda: torch.softmax(rows, -1)),
                            ("layernorm", lambda: F.layer_norm(h, (384,), g, beta)), ("relu", lambda: torch.relu(x))):
                flops = n * FLOPS_PER_ELEMENT[cls]
                elementwise[cls].append((flops, flops / _time(fn, min_time, repeats)))
                bar.update()
        tiny = torch.nn.Linear(8, 8)
        xt = torch.randn(1, 8, generator=gen)
        overhead = _time(lambda: tiny(xt), 0.01 if quick else 0.05, repeats)
        bar.update()
    bar.close()
    record = {
        "version": VERSION, "device": "cpu", "threads": threads, "quick": quick, "cpu": _cpu_name(),
        "torch": torch.__version__, "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "gemm_curve": {p: sorted(v) for p, v in curves.items()}, "attention_curve": sorted(attention),
        "fused_attention_curve": sorted(fused_attention),
        "elementwise_curve": {k: sorted(v) for k, v in elementwise.items()}, "bandwidth": bandwidth,
        "launch_overhead_s": overhead,
    }
    path = Path(path) if path else calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    store = _load(path)
    store.setdefault("records", {})[_key(threads)] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1))
    tmp.replace(path)
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
    return Hardware(
        name="local", kind="cpu", peak=peak, vector_flops=max(r for v in elementwise.values() for _, r in v),
        bandwidth=rec["bandwidth"],
        launch_overhead_s=rec["launch_overhead_s"], tdp_w=None, process="unknown",
        source=(f"measured by `bertsilicon profile --calibrate` at {rec['measured_at']} on {rec['cpu']}, "
                f"{rec['threads']} threads, torch {rec['torch']}{' (quick)' if rec.get('quick') else ''}"),
        int8_float="fp32", static_w=0.0, gemm_curve=curves,
        attention_curve=[tuple(x) for x in rec["attention_curve"]],
        fused_attention_curve=[tuple(x) for x in rec["fused_attention_curve"]], elementwise_curve=elementwise)


def local_hardware(threads: Optional[int] = None) -> Hardware:
    """The calibrated local CPU (at the current torch thread count); calibrates now if never done."""
    rec = load_calibration(threads)
    if rec is None:
        warnings.warn(f"no calibration of this machine in {calibration_path()}; measuring now "
                      "(run `bertsilicon profile --calibrate` once to do it ahead)", stacklevel=3)
        rec = calibrate(threads=threads, progress=False)
    return hardware_from_record(rec)
