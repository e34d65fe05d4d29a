"""GPU kernel benchmark: every Triton kernel of ``bertsilicon.kernels`` against torch eager, torch SDPA and
``torch.compile`` at BERT-student shapes (attention B16 H12 L128/512 D26-64 ragged; add_layernorm, GEMM and
int8 GEMM at 4096 tokens x BERT widths; bias_gelu, quantize, round_to at 4096 x 768-3072).

    python -m bench.kernels.gpu                 # full run on a CUDA GPU (< 10 min) -> bench/results/gpu/<device>/
    python -m bench.kernels.gpu --no-compile    # skip the torch.compile peers (saves their compile time)
    python -m bench.kernels.gpu --dry-run       # tiny shapes on CPU under the Triton interpreter: checks the script
    python -m bench.kernels.gpu --warm --only attention   # compile every kernel variant once, time nothing, write nothing

``python -m bench.gpu`` runs it as its ``kernels`` stage. Method (floors and predictions:
bench/results/gpu/NOTES.md): ceilings measured first (a 1 GiB device-to-device copy, a cuBLAS fp16 GEMM); every
case checked for correctness against its peer before it is timed; fresh random inputs, never zeros;
``triton.testing.do_bench`` medians (CUDA events, the L2 flushed before every repetition); each case reports its
FLOP and byte floors, the achieved rate and the ratio ``peer time / our time`` (> 1: ours is faster). Output:
``kernels.json`` (everything) and ``kernels.md`` (a table headed by the device, versions and commit measured);
:func:`target_summary` reads the JSON against :data:`TARGETS`.

Budget: ``--budget-s`` stops starting torch.compile peers, ``--time-limit-s`` stops starting cases (the rest
are listed as not run); SIGTERM (``timeout``) stops after the case in flight; results are written either way.
``--warm`` fills Triton's (and inductor's) on-disk caches for a later timed run: every autotuning config is
compiled and run once instead of benchmarked (:func:`compile_only_autotuning`), so several warm processes
can compile side by side on a many-core machine (``python -m bench.gpu`` does) while the timed run
still autotunes properly, only without compiling.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
# Speed targets: (op, ours, peer, minimum speed-up = peer time / our time); predictions in bench/results/gpu/NOTES.md
TARGETS = (
    ("attention", "triton masked", "torch SDPA (mask)", 0.9),
    ("attention", "triton varlen", "torch SDPA (mask)", 0.9),
    ("add_layernorm", "triton", "torch eager", 1.5),
    ("add_layernorm", "triton", "torch.compile", 1.0),
    ("linear+bias+gelu", "triton", "torch eager (cuBLAS + gelu)", 1.0),
    ("int8_linear+bias+gelu", "triton int8", "triton fp16 linear", 1.3),
)


def default_out(device: str | None) -> Path:
    """Where a GPU benchmark writes by default: bench/results/gpu/<device, lower case, dashes>/; a dry run
    (``device`` None) writes to out/gpu-dry-run/ (git-ignored)."""
    if device is None:
        return ROOT / "out" / "gpu-dry-run"
    return ROOT / "bench" / "results" / "gpu" / device.lower().replace(" ", "-")


@dataclass
class Case:
    op: str
    shape: str
    dtype: str
    flops: float
    bytes: float
    ours: dict = field(default_factory=dict)          # variant -> ms
    peers: dict = field(default_factory=dict)         # peer -> ms
    speedup: dict = field(default_factory=dict)       # "<ours> vs <peer>" -> peer_ms / ours_ms
    check: str = ""                                    # max relative difference to the first peer
    floor_ms: float = 0.0
    note: str = ""


class Stop(BaseException):
    """Raised in the main thread by SIGTERM (see :func:`stop_on_sigterm`); a BaseException, so the
    ``except Exception`` around each peer and case does not swallow it."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM (what ``timeout`` sends first) into :class:`Stop`, so a run stopped at its limit still
    writes the results it has."""
    import signal

    def handler(signum, frame):
        raise Stop("SIGTERM")

    signal.signal(signal.SIGTERM, handler)


def compile_only_autotuning() -> None:
    """Make Triton's autotuner compile and run each config once and call them all equally fast (it then
    keeps the first). For warm-up processes only: the compiled kernels land in Triton's on-disk cache, the
    timings are thrown away with the process. (The autotuner benchmarks through ``triton.testing.do_bench``.)"""
    import triton.testing

    def run_once(fn, *args, quantiles=None, return_mode="mean", **kwargs):
        fn()
        return [1.0] * len(quantiles) if quantiles else 1.0

    triton.testing.do_bench = run_once


def short_autotune_benchmarks(warmup_ms: float = 5.0, rep_ms: float = 20.0) -> None:
    """Let Triton's autotuner time each config for ``rep_ms`` (after ``warmup_ms``) instead of its default
    100 (+ 25) ms. Only calls that name no ``warmup`` / ``rep`` are changed (the autotuner's); this script's own
    timings pass theirs. At ~10-100 us per launch 20 ms is still hundreds of launches per config, and the
    end-to-end run tunes ~700 (kernel, shape, config) triples: 100 ms each would be most of its budget."""
    import triton.testing

    full = triton.testing.do_bench

    def tuned(fn, warmup=None, rep=None, *args, **kwargs):
        return full(fn, warmup_ms if warmup is None else warmup, rep_ms if rep is None else rep, *args, **kwargs)

    triton.testing.do_bench = tuned


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="results folder (default bench/results/gpu/<device>; dry run: "
                   "out/gpu-dry-run)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    p.add_argument("--only", default=None, help="comma-separated ops to run (attention,add_layernorm,...)")
    p.add_argument("--budget-s", type=float, default=480.0, help="stop starting torch.compile peers after this")
    p.add_argument("--time-limit-s", type=float, default=None, help="stop starting cases after this (seconds)")
    p.add_argument("--warm", action="store_true", help="compile and run every case once; time and write nothing")
    p.add_argument("--autotune-rep-ms", type=float, default=20.0,
                   help="Triton's autotuner times each config this long (its default: 100)")
    args = p.parse_args(argv)

    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    stop_on_sigterm()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: `python -m bench.kernels.gpu --dry-run` checks the script on CPU")
        return 2
    import triton
    from tqdm import tqdm

    from bertsilicon import formats, ops
    from bertsilicon import reference as R
    from bertsilicon.benchmark.machine import machine_info

    dev = "cpu" if args.dry_run else "cuda"
    machine = machine_info(torch.get_num_threads())
    started = time.perf_counter()
    g = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, dtype=torch.float16, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dtype)

    if args.warm and dev == "cuda":
        compile_only_autotuning()
    elif dev == "cuda":
        short_autotune_benchmarks(rep_ms=args.autotune_rep_ms)

    def bench(fn: Callable) -> float:
        if args.warm:
            fn()
            return float("nan")
        if dev == "cuda":
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(ts)[1]

    compiled_ok = not args.no_compile and not args.dry_run

    def compiled(fn: Callable) -> Optional[Callable]:
        if not compiled_ok or time.perf_counter() - started > args.budget_s:
            return None
        return torch.compile(fn, dynamic=False)

    def rel_diff(a, b) -> float:
        a, b = a.double(), b.double()
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    # ---------------------------------------------------------------- ceilings: two numbers first
    ceilings = {}
    if dev == "cuda" and not args.warm:
        big = torch.empty(1 << 28, dtype=torch.float32, device=dev).normal_()  # 1 GiB
        dst = torch.empty_like(big)
        ms = bench(lambda: dst.copy_(big))
        ceilings["copy_TBps"] = 2 * big.numel() * 4 / ms / 1e9
        a, b = rand(8192, 8192), rand(8192, 8192)
        ms = bench(lambda: a @ b)
        ceilings["cublas_fp16_TFLOPs"] = 2 * 8192 ** 3 / ms / 1e9
        del big, dst, a, b
    bw = ceilings.get("copy_TBps", 1.0) * 1e12
    mm = ceilings.get("cublas_fp16_TFLOPs", 100.0) * 1e12

    cases: list[Case] = []
    want = set(args.only.split(",")) if args.only else None
    small = args.dry_run

    def run_case(case: Case, ours: dict, peers: dict, views: Optional[dict] = None, int8: bool = False):
        """ours/peers: name -> zero-argument callable returning the output. The first peer is the
        correctness reference for every one of ours (``views[name]`` maps an output of ours onto the
        peer's layout for that check only; it is not timed)."""
        views = views or {}
        first_peer = next(iter(peers.values()))
        ref = first_peer()
        checks = []
        for name, fn in ours.items():
            out = views.get(name, lambda o: o)(fn())
            checks.append(f"{name}: {rel_diff(out, ref):.1e}")
        case.check = "; ".join(checks)
        for name, fn in ours.items():
            case.ours[name] = bench(fn)
        for name, fn in peers.items():
            if fn is None:
                continue
            try:
                case.peers[name] = bench(fn)
            except Exception as exc:  # a peer that cannot run this case (e.g. a compile failure)
                case.note += f"{name} failed: {type(exc).__name__}: {str(exc)[:80]}. "
        for o, ot in case.ours.items():
            for pn, pt in case.peers.items():
                case.speedup[f"{o} vs {pn}"] = pt / ot
        case.floor_ms = max(case.flops / (2 * mm if int8 else mm), case.bytes / bw) * 1e3  # int8: 2x fp16 peak
        cases.append(case)

    jobs = []

    # ---------------------------------------------------------------- attention (padded + packed)
    def attention_jobs():
        B = 2 if small else 16
        fp16, both = [torch.float16], [torch.float16, torch.bfloat16]
        shapes = ([(77, 2, 26, fp16)] if small else
                  [(128, 12, 64, both), (512, 12, 64, both), (128, 12, 32, fp16), (128, 12, 26, fp16)])
        for L, H, D, dtypes in shapes:
            for dtype in dtypes:
                def job(L=L, H=H, D=D, dtype=dtype):
                    qkv = rand(B, L, 3, H, D, dtype=dtype)
                    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # the wrapper's views
                    lengths = torch.randint(L // 2, L + 1, (B,), generator=g, device=dev)
                    lengths[0] = L
                    mask = (torch.arange(L, device=dev)[None] < lengths[:, None]).to(torch.int64)
                    keep = mask.bool()
                    T = int(mask.sum())
                    packed = [t.transpose(1, 2)[keep] for t in (q, k, v)]
                    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32)
                    additive = torch.zeros(B, 1, 1, L, dtype=dtype, device=dev).masked_fill(~keep[:, None, None], float("-inf"))
                    real_pairs = float((lengths.double() ** 2).sum())
                    case = Case("attention", f"B{B} H{H} L{L} D{D} ragged (T={T})", str(dtype).split(".")[-1],
                                flops=4 * H * D * real_pairs, bytes=4 * T * H * D * qkv.element_size())
                    eager = lambda: torch.softmax((q @ k.transpose(-1, -2)) * D ** -0.5 + additive, -1) @ v  # noqa: E731
                    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=additive)  # noqa: E731
                    ours = {"triton masked": lambda: ops.attention(q, k, v, mask, backend="triton"),
                            "triton varlen": lambda: ops.attention_varlen(*packed, cu, L, backend="triton")}
                    peers = {"torch SDPA (mask)": sdpa, "torch eager": eager}
                    if dev == "cuda":
                        peers["torch SDPA flash (no mask, padded work)"] = (
                            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
                    peers["torch.compile eager"] = compiled(eager)
                    # the varlen output is [T, H, D]: compared on the padded layout (padded rows: the peer's)
                    run_case(case, ours, peers, views={"triton varlen": lambda o: _repad(o, keep, B, L, H, D, sdpa())})
                jobs.append(("attention", job))

    def _repad(packed_out, keep, B, L, H, D, padded_like):
        out = padded_like.transpose(1, 2).clone()
        out[keep] = packed_out
        return out.transpose(1, 2)

    # ---------------------------------------------------------------- add_layernorm
    def layernorm_jobs():
        fp16, both = [torch.float16], [torch.float16, torch.bfloat16]
        for M, N, dtypes in ([(77, 96, fp16)] if small else [(4096, 384, fp16), (4096, 768, both), (16384, 768, fp16)]):
            for dtype in dtypes:
                def job(M=M, N=N, dtype=dtype):
                    x, r = rand(M, N, dtype=dtype, scale=2), rand(M, N, dtype=dtype)
                    w, b = rand(N, dtype=dtype, scale=0.1) + 1, rand(N, dtype=dtype, scale=0.1)
                    case = Case("add_layernorm", f"{M}x{N}", str(dtype).split(".")[-1], flops=8 * M * N,
                                bytes=3 * M * N * x.element_size() + 2 * N * x.element_size())
                    eager = lambda: torch.nn.functional.layer_norm(x + r, (N,), w, b, 1e-12)  # noqa: E731
                    run_case(case, {"triton": lambda: ops.add_layernorm(x, r, w, b, 1e-12, backend="triton")},
                             {"torch eager": eager, "torch.compile": compiled(eager)})
                jobs.append(("add_layernorm", job))

    # ---------------------------------------------------------------- linear + bias + GELU, int8_linear
    def gemm_jobs():
        fp16, both = [torch.float16], [torch.float16, torch.bfloat16]
        shapes = [(77, 64, 96, fp16)] if small else [(4096, 768, 3072, both), (4096, 3072, 768, fp16), (4096, 384, 1536, fp16)]
        for M, K, N, dtypes in shapes:
            for dtype in dtypes:
                def job(M=M, K=K, N=N, dtype=dtype):
                    x, w, b = rand(M, K, dtype=dtype), rand(N, K, dtype=dtype, scale=K ** -0.5), rand(N, dtype=dtype)
                    case = Case("linear+bias+gelu", f"M{M} K{K} N{N}", str(dtype).split(".")[-1], flops=2 * M * N * K,
                                bytes=(M * K + N * K + M * N + N) * x.element_size())
                    eager = lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))  # noqa: E731
                    run_case(case, {"triton": lambda: ops.linear(x, w, b, "gelu", backend="triton")},
                             {"torch eager (cuBLAS + gelu)": eager, "torch.compile": compiled(eager)})
                jobs.append(("linear", job))
        for M, K, N in ([(77, 64, 96)] if small else [(4096, 768, 3072), (4096, 3072, 768)]):
            def job(M=M, K=K, N=N):
                x, w, b = rand(M, K), rand(N, K, scale=K ** -0.5), rand(N)
                x_q, xs = ops.quantize(x, backend="triton")
                w_q, ws = ops.quantize(w, granularity="per_channel", backend="triton")
                case = Case("int8_linear+bias+gelu", f"M{M} K{K} N{N}", "int8->fp16", flops=2 * M * N * K,
                            bytes=M * K + N * K + 2 * M * N + 4 * (M + 2 * N))
                peers = {"triton fp16 linear": lambda: ops.linear(x, w, b, "gelu", backend="triton"),
                         "torch eager fp16 (cuBLAS + gelu)": lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))}
                if dev == "cuda":
                    def int_mm():
                        acc = torch._int_mm(x_q, w_q.t())
                        return torch.nn.functional.gelu((acc.float() * xs * ws.reshape(1, -1) + b.float()).half())
                    peers["torch._int_mm + dequant + gelu"] = int_mm
                run_case(case, {"triton int8": lambda: ops.int8_linear(x_q, xs, w_q, ws, b, "gelu", torch.float16,
                                                                        backend="triton")}, peers, int8=True)
            jobs.append(("int8_linear", job))

    # ---------------------------------------------------------------- bias_gelu, quantize, round_to
    def elementwise_jobs():
        M, N = (77, 96) if small else (4096, 3072)
        for dtype in ([torch.float16] if small else [torch.float16, torch.bfloat16]):
            def job(dtype=dtype):
                x, b = rand(M, N, dtype=dtype, scale=3), rand(N, dtype=dtype)
                case = Case("bias_gelu", f"{M}x{N}", str(dtype).split(".")[-1], flops=20 * M * N,
                            bytes=2 * M * N * x.element_size())
                eager = lambda: torch.nn.functional.gelu(x + b)  # noqa: E731
                run_case(case, {"triton": lambda: ops.bias_gelu(x, b, backend="triton")},
                         {"torch eager": eager, "torch.compile": compiled(eager)})
            jobs.append(("bias_gelu", job))
        Mq, Nq = (77, 96) if small else (4096, 768)

        def quant_job():
            x = rand(Mq, Nq, scale=3)
            case = Case("quantize per_token", f"{Mq}x{Nq}", "fp16->int8", flops=3 * Mq * Nq, bytes=3 * Mq * Nq + 4 * Mq)
            eager = lambda: R.quantize(x, "int8", "per_token")[0]  # noqa: E731
            run_case(case, {"triton": lambda: ops.quantize(x, backend="triton")[0]},
                     {"torch eager (reference)": eager, "torch.compile": compiled(eager)})
        jobs.append(("quantize", quant_job))

        def round_job():
            x = rand(Mq, Nq, dtype=torch.float32)
            case = Case("round_to bf16 stochastic", f"{Mq}x{Nq}", "fp32", flops=0, bytes=8 * Mq * Nq)
            run_case(case, {"triton": lambda: ops.round_to(x, "bf16", "stochastic", seed=1, backend="triton")},
                     {"torch eager (reference)": lambda: formats.round_to(x, "bf16", "stochastic", seed=1)})
        jobs.append(("round_to", round_job))

    attention_jobs()
    layernorm_jobs()
    gemm_jobs()
    elementwise_jobs()
    jobs = [(op, j) for op, j in jobs if want is None or op in want]
    stopped = None
    for i, (op, job) in enumerate(tqdm(jobs, desc="bench.kernels.gpu", unit="case")):
        if args.time_limit_s is not None and time.perf_counter() - started > args.time_limit_s:
            stopped = f"time limit {args.time_limit_s:.0f} s reached"
        if stopped:
            cases.extend(Case(o, "-", "-", 0, 0, note=f"not run: {stopped}") for o, _ in jobs[i:])
            break
        try:
            job()
        except Stop:
            stopped = "stopped by SIGTERM"
            cases.extend(Case(o, "-", "-", 0, 0, note=f"not run: {stopped}") for o, _ in jobs[i:])
            break
        except Exception as exc:
            print(f"{op}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
            cases.append(Case(op, "-", "-", 0, 0, note=f"FAILED {type(exc).__name__}: {str(exc)[:200]}"))
    if args.warm:
        failed = [c for c in cases if c.note.startswith("FAILED")]
        print(f"warm: {len(jobs) - len(failed)} of {len(jobs)} cases compiled and ran in "
              f"{time.perf_counter() - started:.0f} s{'; ' + stopped if stopped else ''}")
        return 1 if failed else 0

    # ---------------------------------------------------------------- write results
    meta = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu (Triton interpreter, dry run)",
        "machine": machine,
        "tf32_for_fp32": os.environ.get("BERTSILICON_TF32", "follows torch.backends.cuda.matmul.allow_tf32"),
        "autotune": f"{os.environ.get('BERTSILICON_AUTOTUNE', 'on')}, each config timed {args.autotune_rep_ms:g} ms",
        "ceilings": ceilings, "seconds": round(time.perf_counter() - started, 1), "stopped": stopped,
        "timing": "triton.testing.do_bench median, warmup 25 ms, rep 100 ms, L2 flushed per repetition"
                  if dev == "cuda" else "perf_counter median of 3 (interpreter: meaningless, plumbing check only)",
    }
    out_dir = Path(args.out) if args.out else default_out(meta["device"] if dev == "cuda" else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels.json").write_text(json.dumps({"meta": meta, "cases": [asdict(c) for c in cases]}, indent=1))
    md = _markdown(meta, cases)
    (out_dir / "kernels.md").write_text(md)
    print(md)
    print(f"wrote {out_dir / 'kernels.json'} and {out_dir / 'kernels.md'}")
    return 0


def target_summary(path: Path) -> dict:
    """Verdicts from a ``kernels.json``: every case's speed-up against each peer named in :data:`TARGETS`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"result": f"no {path.name}"}
    rows, failed = [], []
    for c in data["cases"]:
        if c["note"].startswith(("FAILED", "not run")):
            failed.append(f"{c['op']}: {c['note'][:120]}")
            continue
        for op, ours, peer, target in TARGETS:
            s = c["speedup"].get(f"{ours} vs {peer}")
            if c["op"] == op and s is not None:
                rows.append({"op": op, "shape": c["shape"], "dtype": c["dtype"], "ours": ours, "peer": peer,
                             "speedup": s, "target": target, "verdict": "meets" if s >= target else "misses",
                             "check": c["check"]})
    meets = sum(r["verdict"] == "meets" for r in rows)
    return {"targets": rows, "ceilings": data["meta"].get("ceilings", {}), "cases": len(data["cases"]),
            "failed_cases": failed,
            "result": f"{len(data['cases'])} cases, {len(failed)} failed/not run; targets met {meets}/{len(rows)}"}


def _fmt_ms(ms: Optional[float]) -> str:
    return "-" if ms is None or (isinstance(ms, float) and math.isnan(ms)) else f"{ms:.4f}"


def _markdown(meta: dict, cases: list) -> str:
    from bertsilicon.benchmark.machine import describe

    lines = [f"# Triton kernels vs torch on {meta['device']}", "", describe(meta["machine"]), "",
             f"Ceilings measured here: {', '.join(f'{k} {v:.2f}' for k, v in meta['ceilings'].items()) or 'none (dry run)'}. "
             f"Timing: {meta['timing']}. Speed-up = peer time / our time (> 1: ours is faster). "
             f"Floor = max(FLOPs / cuBLAS rate, bytes / copy bandwidth).", "",
             *([f"**Stopped early ({meta['stopped']}): the cases marked 'not run' were not measured.**", ""]
               if meta.get("stopped") else []),
             "| op | shape | dtype | ours (ms) | floor (ms) | floor / ours | peers (ms) | speed-up | rel diff to 1st peer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        ours = "<br>".join(f"{k}: {_fmt_ms(v)}" for k, v in c.ours.items())
        peers = "<br>".join(f"{k}: {_fmt_ms(v)}" for k, v in c.peers.items())
        sp = "<br>".join(f"{k}: {v:.2f}x" for k, v in c.speedup.items())
        eff = "<br>".join(f"{c.floor_ms / v:.0%}" for v in c.ours.values() if v)
        lines.append(f"| {c.op} | {c.shape} | {c.dtype} | {ours} | {_fmt_ms(c.floor_ms)} | {eff} | {peers} | {sp} | "
                     f"{c.check}{' ' + c.note if c.note else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
