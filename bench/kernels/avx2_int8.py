"""int8 on the AVX2 path: the 7-bit-weight kernel (``u8s7x16``, vpmaddubsw) against our fp32 kernel
(``f32x16``), the exact 8-bit-weight kernel (``s16x16``, vpmaddwd) and torch fp32 (oneDNN / MKL held to
AVX2 through ``ONEDNN_MAX_CPU_ISA`` / ``MKL_ENABLE_INSTRUCTIONS``, set here before torch loads), at the
MiniLM layer shapes and token counts of batch 1 / 8 / 32 of real text; then the real MiniLM end to end
(fp32, int8 as calibrated, int8 with every GEMM on 7-bit weights) with each one's worst mean-pooled
cosine against HF fp32.

Rounds are interleaved (every provider of a case once per round, so load hits all alike); medians.
The AVX2 code runs on any AVX2 CPU; on a wider one it is forced (``set_isa("avx2")``), so say which CPU
the figures come from (``machine`` in the JSON). Writes ``<out>/<name>.{json,md}`` (``--out``, default
``./bertsilicon-results/kernels``; the recorded ones: ``--out bench/results/cpu``).

    .venv/bin/python bench/kernels/avx2_int8.py [--rounds 15] [--threads 2] [--name avx2_int8]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", "AVX2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
import bertsilicon  # noqa: E402
from bertsilicon import quant  # noqa: E402
from bertsilicon.backends import cpu as _cpu  # noqa: E402
from bertsilicon.backends.cpu import gemm as _cpu_gemm  # noqa: E402
from bertsilicon.benchmark.machine import describe, load_average  # noqa: E402
from bertsilicon.models.eval import embed, pooled_cosines  # noqa: E402

H = 384
SHAPES = [("qkv", H, 3 * H), ("o", H, H), ("up+gelu", H, 4 * H), ("down", 4 * H, H)]
BATCHES = (1, 8, 32)


def medians(fns: dict, rounds: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up (packs, caches)
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def texts(batch: int) -> list:
    return bertsilicon.data.corpus("pydoc").subset(batch, seed=5).texts


def gemm_cases(tokens: dict):
    for batch, M in tokens.items():
        for name, K, N in SHAPES:
            g = torch.Generator().manual_seed(K * N + M)
            x = torch.randn(M, K, generator=g)
            w = torch.randn(N, K, generator=g) * K ** -0.5
            act = "gelu" if "gelu" in name else None
            pf = _cpu_gemm.pack_linear(w)
            w8, s8 = quant.quantize_rows(w, 127)
            w7, s7 = quant.quantize_rows(w, 63)
            p8, p7 = _cpu_gemm.pack_int8(w8), _cpu_gemm.pack_int8(w7)
            assert (pf.layout, p8.layout, p7.layout) == ("f32x16", "s16x16", "u8s7x16")
            yield f"batch {batch} ({M} tok) {name} {M}x{K}->{N}", 2 * M * N * K, {
                "torch fp32 (oneDNN/MKL, AVX2)": lambda x=x, w=w, act=act: (F.gelu(F.linear(x, w)) if act
                                                                            else F.linear(x, w)),
                "ours fp32 (f32x16)": lambda x=x, pf=pf, act=act: _cpu_gemm.linear_packed(x, pf, None, act),
                "ours int8 8-bit w (s16x16)": lambda x=x, p=p8, s=s8, act=act: _cpu_gemm.int8_linear_dynamic(
                    x, p, s, None, act),
                "ours int8 7-bit w (u8s7x16)": lambda x=x, p=p7, s=s7, act=act: _cpu_gemm.int8_linear_dynamic(
                    x, p, s, None, act),
            }


def end_to_end(rounds: int) -> list:
    tok = bertsilicon.load_tokenizer()
    calib = bertsilicon.data.corpus("pydoc").subset(8, seed=11).texts
    load = lambda: bertsilicon.load_student("minilm-l6")  # noqa: E731
    models = {"fp32": bertsilicon.optimize(load(), "fp32"),
              "int8 (calibrated: 7/8-bit weights per GEMM)": bertsilicon.optimize(load(), "int8", smooth=0.5,
                                                                                   calibration=calib),
              "int8 (every GEMM 7-bit weights, no budget)": bertsilicon.optimize(load(), "int8", smooth=0.5,
                                                                                  calibration=calib, error_budget=1e9)}
    sample = texts(32)
    ref = embed(load(), tok, sample)
    cos = {k: float(pooled_cosines(embed(m, tok, sample), ref).min()) for k, m in models.items()}
    narrow = {k: sum(getattr(g, "weight_max", 0) == 63 for g in m.modules() if type(g).__name__ == "PreparedLinear")
              for k, m in models.items()}
    rows = []
    for batch in tqdm(BATCHES, desc="MiniLM end to end"):
        enc = tok(texts(batch), padding="longest", truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            med = medians({k: (lambda m=m: m(**enc)) for k, m in models.items()}, rounds)
        for k, t in med.items():
            rows.append({"batch": batch, "tokens": int(enc["attention_mask"].sum()), "model": k, "median_s": t,
                         "vs_fp32": med["fp32"] / t, "cos_min_vs_hf_fp32": cos[k], "gemms_on_7bit_weights": narrow[k]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="avx2_int8", help="results file stem")
    p.add_argument("--out", default=str(harness.RESULTS_DIR), help="results folder (the recorded ones: "
                   "bench/results/cpu)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _cpu.set_isa("avx2")
    info = harness.machine()
    tok = bertsilicon.load_tokenizer()
    tokens = {b: int(tok(texts(b), padding="longest", truncation=True, max_length=128,
                         return_tensors="pt")["attention_mask"].sum()) for b in BATCHES}
    gemm_rows = []
    for case, flops, fns in tqdm(list(gemm_cases(tokens)), desc="GEMMs"):
        med = medians(fns, args.rounds)
        ours32 = med["ours fp32 (f32x16)"]
        for k, t in med.items():
            gemm_rows.append({"case": case, "provider": k, "median_s": t, "GFLOP_per_s": flops / t / 1e9,
                              "vs_our_fp32": ours32 / t})
    e2e = end_to_end(args.rounds)
    info["load_average_end"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"what": "AVX2 path (forced): int8 7-bit / 8-bit weight kernels vs fp32, GEMMs and MiniLM end to end",
           "rounds": args.rounds, "machine": info, "gemm": gemm_rows, "end_to_end": e2e}
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=1))
    lines = ["# int8 on the AVX2 path", "", describe(info), "",
             f"AVX2 code paths (`set_isa(\"avx2\")`), median of {args.rounds} interleaved rounds, {args.threads} threads; "
             "torch held to AVX2 (`ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`). int8 rows include the "
             "per-token quantization of the fp32 input (fused into the GEMM's operand).", "",
             "| case | provider | median ms | GFLOP/s | vs our fp32 |", "|---|---|---:|---:|---:|"]
    lines += [f'| {r["case"]} | {r["provider"]} | {r["median_s"] * 1e3:.3f} | {r["GFLOP_per_s"]:.0f} '
              f'| {r["vs_our_fp32"]:.2f}x |' for r in gemm_rows]
    lines += ["", "Real MiniLM-L6, real text (Python docs), padding longest:", "",
              "| batch (tokens) | model | median ms | vs fp32 | cos min vs HF fp32 | GEMMs on 7-bit weights |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f'| {r["batch"]} ({r["tokens"]}) | {r["model"]} | {r["median_s"] * 1e3:.1f} | {r["vs_fp32"]:.2f}x '
              f'| {r["cos_min_vs_hf_fp32"]:.5f} | {r["gemms_on_7bit_weights"]} of 24 |' for r in e2e]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
