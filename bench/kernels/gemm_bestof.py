"""Best-of-N, interleaved timings of the GEMM family against its torch peers: a cross-check of the
pytest-benchmark medians (bench_linear.py, bench_int8.py) that holds up on a shared, loaded machine.

Each round runs every provider of a case once, one after the other, so load spikes hit all of them;
the minimum over rounds is the closest a loaded machine gets to the uncontended time. Writes
``bench/results/cpu/gemm_bestof.{json,md}``.

    .venv/bin/python bench/kernels/gemm_bestof.py [--rounds 30] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
from bench_linear import SHAPES  # noqa: E402
from bertsilicon import ops  # noqa: E402
from bertsilicon import reference as ref  # noqa: E402
from bertsilicon.backends.cpu import gemm as _cpu_gemm  # noqa: E402


def best_of(fns: dict, rounds: int) -> dict:
    best = {k: float("inf") for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def cases():
    M = harness.TOKENS
    for name, K, N, act in SHAPES:
        for dtype, dt in harness.DTYPES.items():
            g = torch.Generator().manual_seed(K * N)
            x = torch.randn(M, K, generator=g).to(dt)
            w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dt)
            b = (0.1 * torch.randn(N, generator=g)).to(dt)
            pw = _cpu_gemm.pack_linear(w)
            yield ("linear", f"{name} {dtype}", 2 * M * N * K, {
                "torch": lambda x=x, w=w, b=b, act=act: ref.activate(F.linear(x, w, b), act),
                "ours (packed)": lambda x=x, pw=pw, b=b, act=act: _cpu_gemm.linear_packed(x, pw, b, act),
                "ours (plain op)": lambda x=x, w=w, b=b, act=act: ops.linear(x, w, b, act, backend="cpu"),
                "torch GEMM + our epilogue": lambda x=x, w=w, b=b, act=act: _cpu_gemm.linear_torch_gemm(x, w, b, act),
            })
        g = torch.Generator().manual_seed(K + N)
        xq = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
        wq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
        wt, pq = wq.t().contiguous(), _cpu_gemm.pack_int8(wq)
        yield ("int8_gemm", name, 2 * M * N * K, {
            "torch._int_mm": lambda xq=xq, wt=wt: torch._int_mm(xq, wt),
            "ours": lambda xq=xq, pq=pq: _cpu_gemm.int8_matmul(xq, pq),
        })
        x = torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g) * K ** -0.5
        b = 0.1 * torch.randn(N, generator=g)
        w_q, w_s = ops.quantize(w, "int8", "per_channel", backend="cpu")
        pq2 = _cpu_gemm.pack_int8(w_q)
        lin = torch.nn.Linear(K, N)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)

        def ours(x=x, pq2=pq2, w_s=w_s, b=b):
            x_q, x_s = ops.quantize(x, "int8", "per_token", backend="cpu")
            return _cpu_gemm.int8_linear_packed(x_q, x_s, pq2, w_s, b, "gelu")

        yield ("int8_linear+gelu", name, 2 * M * N * K, {
            "torch dynamic int8 + gelu": lambda x=x, qlin=qlin: F.gelu(qlin(x)),
            "ours (quantize + int8_linear)": ours,
            "ours (fused int8_linear_dynamic)": lambda x=x, pq2=pq2, w_s=w_s, b=b: _cpu_gemm.int8_linear_dynamic(
                x, pq2, w_s.reshape(-1), b, "gelu"),
        })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--out", default=str(harness.RESULTS_DIR), help="results folder (the recorded ones: "
                   "bench/results/cpu)")
    args = p.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for op, case, flops, fns in tqdm(list(cases()), desc=f"{threads} thread(s)"):
            for provider, t in best_of(fns, args.rounds).items():
                rows.append({"op": op, "case": case, "threads": threads, "provider": provider,
                             "best_s": t, "GFLOP_per_s": flops / t / 1e9})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"what": "best-of-N interleaved timings (min over rounds), GEMM family vs torch", "rounds": args.rounds,
           "machine": harness.machine(), "rows": rows}
    (out / "gemm_bestof.json").write_text(json.dumps(doc, indent=1))
    lines = ["# GEMM family: best-of-N interleaved timings", "",
             f"min over {args.rounds} rounds, every provider of a case run once per round (load hits all alike). "
             "GFLOP/s (GOP/s for int8) = 2 M N K / time, M = 1024 tokens. Machine: "
             f"{doc['machine'].get('cpu', {}).get('model')}, load average at start "
             f"{doc['machine'].get('load_average_start')}.", "",
             "| op | case | threads | provider | best ms | GFLOP/s | vs first (peer) |", "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        peer = next(q for q in rows if (q["op"], q["case"], q["threads"]) == (r["op"], r["case"], r["threads"]))
        lines.append(f'| {r["op"]} | {r["case"]} | {r["threads"]} | {r["provider"]} | {r["best_s"] * 1e3:.3f} '
                     f'| {r["GFLOP_per_s"]:.0f} | {peer["best_s"] / r["best_s"]:.2f}x |')
    (out / "gemm_bestof.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gemm_bestof.md'}")


if __name__ == "__main__":
    main()
