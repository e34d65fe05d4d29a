"""fp32 GEMM on the AVX2 path against the strongest fp32 peers, at BERT shapes.

Engines, each in its own worker process (the instruction-set caps are read when a library loads, so they
are set in the worker's environment before torch / ctranslate2 import):

* ``ours avx2``: our fp32 GEMM (``linear_packed``, layout ``f32x16``) with ``BERTSILICON_ISA=avx2``;
* ``torch avx2``: ``torch.nn.functional.linear`` fp32 with ``ONEDNN_MAX_CPU_ISA=AVX2`` and
  ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (oneDNN / MKL, whichever torch dispatches to, held to AVX2);
* ``ours avx512`` and ``torch native``: the same two without caps, so the AVX-512 path's figures are
  checked in the same run;
* ``ct2 avx2``: CTranslate2 float32 (``CT2_FORCE_CPU_ISA=AVX2``) when ``ctranslate2`` is installed. It has
  no bare GEMM, so it runs a one-layer ``Encoder`` (random BERT layer of the hidden size) beside ``ours
  layer avx2`` (the same layer through ``bertsilicon.optimize(..., "fp32")``, AVX2 forced): whole-layer
  time, attention and LayerNorm included, reported as a separate table.

GEMM cases: M (tokens) in 58 / 443 / 1813 (batch 1 / 8 / 32 of real text, padding longest, MiniLM's
tokenizer) x (K, N) in MiniLM's and BERT-base's six linear shapes, fp32, no bias, at each thread count.
Rounds are interleaved (one timing of every engine per case per round, so load hits all alike); each timing
is the mean of enough back-to-back calls to last ~10 ms; the table gives the median over rounds as GFLOP/s
(2 M N K per call) and the ratio ours / best peer. On an AVX-512 CPU the AVX2 rows are AVX2 code on that
CPU (features hidden), not an AVX2 CPU's figures: the tables say which CPU ran them.

    python bench/kernels/avx2_fp32.py --out bench/results/cpu [--rounds 11] [--threads 1 2] [--name avx2_fp32]
    python bench/kernels/avx2_fp32.py --quick --out /tmp/x      # 3 rounds, 3 shapes, 2 threads: a check
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

TOKENS = {"batch 1": 58, "batch 8": 443, "batch 32": 1813}
SHAPES = [(384, 384), (384, 1536), (1536, 384), (768, 768), (768, 3072), (3072, 768)]
LAYERS = {"MiniLM-size layer (384, 12 heads, 1536)": (384, 12, 1536),
          "BERT-base-size layer (768, 12 heads, 3072)": (768, 12, 3072)}
SEQ = {"batch 1": (1, 58), "batch 8": (8, 56), "batch 32": (32, 57)}  # (batch, length): ~the GEMM tokens

# engine -> (environment of its worker, what it runs)
AVX2_LABEL = "AVX2 code"
ENGINES = {
    "ours avx2": ({"BERTSILICON_ISA": "avx2"}, "gemm"),
    "torch avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, "gemm"),
    "ours avx512": ({}, "gemm"),
    "torch native": ({}, "gemm"),
    # --baseline DIR: the same two from another checkout (its bertsilicon and built extension): before / after
    "ours avx2 baseline": ({"BERTSILICON_ISA": "avx2"}, "gemm"),
    "ours avx512 baseline": ({}, "gemm"),
    "ours layer avx2": ({"BERTSILICON_ISA": "avx2"}, "layer"),
    "ct2 avx2": ({"CT2_FORCE_CPU_ISA": "AVX2"}, "layer"),
}
PEERS = {"ours avx2": ("torch avx2",), "ours avx2 baseline": ("torch avx2",), "ours avx512": ("torch native",),
         "ours avx512 baseline": ("torch native",), "ours layer avx2": ("ct2 avx2",)}


# ------------------------------------------------------------------------------------------------ #
# worker: one engine, cases on request                                                              #
# ------------------------------------------------------------------------------------------------ #
def _gemm_runner(engine: str):
    import torch
    import torch.nn.functional as F

    if engine.startswith("torch"):
        return lambda x, w: (lambda: F.linear(x, w))
    from bertsilicon.backends.cpu import gemm as cpu_gemm

    def make(x, w):
        pw = cpu_gemm.pack_linear(w)
        want = "f32x16" if "avx2" in engine else "f32x64"
        if pw.layout != want:
            raise RuntimeError(f"{engine}: packed layout {pw.layout}, expected {want}")
        return lambda: cpu_gemm.linear_packed(x, pw)
    return make


def _bert_layer(hidden: int, heads: int, inter: int):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(hidden)
    cfg = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=1,
                     vocab_size=1000, max_position_embeddings=128)
    return BertModel(cfg, add_pooling_layer=False).eval()


def _layer_runner(engine: str, tmp: Path):
    import torch

    def make(layer_key: str, batch: int, length: int):
        model = _bert_layer(*LAYERS[layer_key])
        ids = torch.randint(5, 1000, (batch, length), generator=torch.Generator().manual_seed(length))
        if engine.startswith("ct2"):
            import ctranslate2
            from ctranslate2.converters import TransformersConverter

            src, dst = tmp / f"hf-{model.config.hidden_size}", tmp / f"ct2-{model.config.hidden_size}"
            if not dst.exists():
                model.config.position_embedding_type = "absolute"  # read by the converter, gone from transformers 5
                model.save_pretrained(src)
                TransformersConverter(str(src)).convert(str(dst), quantization="float32")
            enc = ctranslate2.Encoder(str(dst), device="cpu", compute_type="float32",
                                      intra_threads=torch.get_num_threads())
            tokens = [[str(i) for i in row] for row in ids.tolist()]
            return lambda: enc.forward_batch(tokens)
        import bertsilicon

        fast = bertsilicon.optimize(model, "fp32")
        mask = torch.ones_like(ids)

        def run():
            with torch.no_grad():
                return fast(input_ids=ids, attention_mask=mask)
        return run
    return make


def worker(engine: str) -> None:
    """Answer one JSON line per request: {"case": ..., "threads": t} -> {"s": seconds per call}."""
    import torch

    kind = ENGINES[engine][1]
    tmp = Path(tempfile.mkdtemp(prefix="avx2_fp32_"))
    make = _gemm_runner(engine) if kind == "gemm" else _layer_runner(engine, tmp)
    built: dict = {}
    for line in sys.stdin:
        req = json.loads(line)
        torch.set_num_threads(req["threads"])
        key = json.dumps(req["case"]) + str(req["threads"])
        if key not in built:
            if kind == "gemm":
                M, K, N = req["case"]
                g = torch.Generator().manual_seed(M * 7919 + K * 31 + N)
                fn = make(torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) * K ** -0.5)
            else:
                fn = make(req["case"][0], *SEQ[req["case"][1]])
            fn()
            t0 = time.perf_counter()
            fn()
            built[key] = (fn, max(1, int(0.01 / max(time.perf_counter() - t0, 1e-7))))
        fn, n = built[key]
        clock = time.process_time if req["clock"] == "cpu" else time.perf_counter
        t0 = clock()
        for _ in range(n):
            fn()
        print(json.dumps({"s": (clock() - t0) / n}), flush=True)


# ------------------------------------------------------------------------------------------------ #
# driver                                                                                            #
# ------------------------------------------------------------------------------------------------ #
class Worker:
    def __init__(self, engine: str, baseline: Optional[Path]):
        path = [str(baseline)] if engine.endswith("baseline") else sys.path
        env = {**os.environ, **ENGINES[engine][0], "PYTHONPATH": os.pathsep.join(path)}
        if ENGINES[engine][0].get("BERTSILICON_ISA") is None:
            env.pop("BERTSILICON_ISA", None)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", engine], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def time(self, case, threads: int, clock: str) -> float:
        self.proc.stdin.write(json.dumps({"case": case, "threads": threads, "clock": clock}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[-1]} exited (code {self.proc.wait()})")
        return json.loads(line)["s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def ct2_available() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def measure(engines: list, cases: list, threads: list, rounds: int, baseline: Optional[Path], clock: str) -> dict:
    """{(engine, case, threads): [seconds per call, one per round]} with rounds interleaved."""
    from tqdm import tqdm

    workers = {e: Worker(e, baseline) for e in engines}
    times: dict = {}
    try:
        jobs = [(c, t) for t in threads for c in cases]
        with tqdm(total=rounds * len(jobs) * len(engines), desc="timings") as bar:
            for _ in range(rounds):
                for case, t in jobs:
                    for e in engines:
                        if ENGINES[e][1] == case[0]:
                            time.sleep(0.005)  # the previous worker's OpenMP threads stop spinning
                            times.setdefault((e, json.dumps(case[1]), t), []).append(workers[e].time(case[1], t, clock))
                        bar.update()
    finally:
        for w in workers.values():
            w.close()
    return times


def rows_of(times: dict, flops_of) -> list:
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for (e, case, t), s in med.items():
        peers = [med[(p, case, t)] for p in PEERS.get(e, ()) if (p, case, t) in med]
        rows.append({"engine": e, "case": json.loads(case), "threads": t, "median_s": s,
                     "spread_s": [min(times[(e, case, t)]), max(times[(e, case, t)])],
                     "GFLOP_per_s": flops_of(json.loads(case)) / s / 1e9 if flops_of(json.loads(case)) else None,
                     "vs_best_peer": min(peers) / s if peers else None})
    return rows


def markdown(doc: dict) -> str:
    from bertsilicon.benchmark.machine import describe

    lines = [f"# fp32 GEMM, AVX2 path vs peers ({doc['label']})", "", describe(doc["machine"]), "",
             f"Medians of {doc['rounds']} interleaved rounds, {doc['clock']} clock; GFLOP/s = 2 M N K / median. `avx2` rows are "
             f"{doc['label']}; `ours avx512` / `torch native` are the same CPU unrestricted. Ratio = best peer's "
             "median / ours (> 1: ours faster). " + doc["note"], ""]
    by = {(r["engine"], json.dumps(r["case"]), r["threads"]): r for r in doc["gemm"]}
    engines = [e for e in ENGINES if any(k[0] == e for k in by)]
    ours = [e for e in engines if e in PEERS]
    f = lambda v, spec: "-" if v is None else spec.format(v)  # noqa: E731
    lines += ["GFLOP/s:", "", "| threads | M x K -> N | " + " | ".join(engines) + " | "
              + " | ".join(f"{e} / {PEERS[e][0]}" for e in ours) + " |",
              "|---:|---|" + "---:|" * (len(engines) + len(ours))]
    for t in doc["threads"]:
        for M, K, N in doc["gemm_cases"]:
            row = [by.get((e, json.dumps([M, K, N]), t), {}) for e in engines + ours]
            lines.append(f"| {t} | {M} x {K} -> {N} | "
                         + " | ".join(f(r.get("GFLOP_per_s"), "{:.0f}") for r in row[:len(engines)]) + " | "
                         + " | ".join(f(r.get("vs_best_peer"), "{:.2f}x") for r in row[len(engines):]) + " |")
        for e in ours:  # geometric mean of the ratios over the cases
            rs = [by.get((e, json.dumps(c), t), {}).get("vs_best_peer") for c in doc["gemm_cases"]]
            rs = [r for r in rs if r is not None]
            if rs:
                lines.append(f"\n{t} thread(s), {e} / {PEERS[e][0]}: geometric mean {statistics.geometric_mean(rs):.2f}x, "
                             f"min {min(rs):.2f}x over {len(rs)} shapes.\n")
    if doc["layer"]:
        lines += ["", "One BERT layer (random weights, fp32), whole-layer median ms: ours (`optimize(..., \"fp32\")`, "
                  "AVX2 forced) vs CTranslate2 `Encoder` float32 (`CT2_FORCE_CPU_ISA=AVX2`):", "",
                  "| threads | layer | batch x length | ours ms | CTranslate2 ms | CT2 / ours |", "|---:|---|---|---:|---:|---:|"]
        byl = {(r["engine"], json.dumps(r["case"]), r["threads"]): r for r in doc["layer"]}
        for t in doc["threads"]:
            for case in doc["layer_cases"]:
                c = json.dumps(case)
                o, p = byl.get(("ours layer avx2", c, t)), byl.get(("ct2 avx2", c, t))
                if o and p:
                    b, n = SEQ[case[1]]
                    lines.append(f"| {t} | {case[0]} | {b} x {n} | {o['median_s'] * 1e3:.2f} | {p['median_s'] * 1e3:.2f} "
                                 f"| {o['vs_best_peer']:.2f}x |")
    else:
        lines += ["", "CTranslate2: " + doc["ct2_note"]]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(doc["threads"]), figsize=(7 * len(doc["threads"]), 4.5), squeeze=False)
    by = {(r["engine"], json.dumps(r["case"]), r["threads"]): r["GFLOP_per_s"] for r in doc["gemm"]}
    labels = [f"{M}x{K}->{N}" for M, K, N in doc["gemm_cases"]]
    engines = [e for e in ENGINES if ENGINES[e][1] == "gemm" and any(r["engine"] == e for r in doc["gemm"])]
    for ax, t in zip(axes[0], doc["threads"]):
        width = 0.8 / len(engines)
        for i, e in enumerate(engines):
            ys = [by.get((e, json.dumps(c), t), 0) for c in doc["gemm_cases"]]
            ax.bar([j + i * width for j in range(len(labels))], ys, width, label=e)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=60, fontsize=7)
        ax.set_ylabel("GFLOP/s (median)")
        ax.set_title(f"fp32 GEMM, {t} thread(s); avx2 = {doc['label']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="folder for <name>.json / .md / .png (required)")
    p.add_argument("--name", default="avx2_fp32", help="file stem of the results")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true", help="3 rounds, 3 shapes, 2 threads, no layer table: a check")
    p.add_argument("--no-layer", action="store_true", help="skip the one-layer CTranslate2 comparison")
    p.add_argument("--baseline", type=Path, help="another checkout (built) to time as 'ours ... baseline' too")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (an idle machine); cpu: the worker's CPU time, which other processes on "
                        "the cores do not inflate (use with --threads 1 on a shared machine)")
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), help="only these engines (default: all that apply)")
    p.add_argument("--note", default="", help="free text for the Markdown header (e.g. the machine's load)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.out is None:
        p.error("--out DIR is required (the folder for the results)")
    if args.rounds < 1 or any(t < 1 for t in args.threads):
        p.error("--rounds and --threads must be >= 1")
    from bertsilicon.benchmark.machine import load_average, machine_info

    rounds, threads = (3, [2]) if args.quick else (args.rounds, args.threads)
    shapes = SHAPES[:3] if args.quick else SHAPES
    gemm_cases = [[M, K, N] for M in TOKENS.values() for K, N in shapes]
    layer = ct2_available() and not (args.quick or args.no_layer)
    layer_cases = [[k, b] for k in LAYERS for b in TOKENS] if layer else []
    if args.baseline and not list(args.baseline.glob("bertsilicon/_C*.so")):
        p.error(f"--baseline {args.baseline}: no built extension (bertsilicon/_C*.so) there")
    engines = [e for e in ENGINES if (ENGINES[e][1] == "gemm" or layer)
               and (args.baseline or not e.endswith("baseline")) and (not args.engines or e in args.engines)]
    info = machine_info(max(threads))
    from bertsilicon.backends.cpu.runtime import cpu_features

    avx512 = bool(cpu_features().get("avx512f"))
    label = "AVX2 code on an AVX-512 CPU (features hidden)" if avx512 else "AVX2 CPU"
    cases = [("gemm", c) for c in gemm_cases] + [("layer", c) for c in layer_cases]
    t0 = time.perf_counter()
    times = measure(engines, cases, threads, rounds, args.baseline, args.clock)
    gemm_t = {k: v for k, v in times.items() if ENGINES[k[0]][1] == "gemm"}
    layer_t = {k: v for k, v in times.items() if ENGINES[k[0]][1] == "layer"}
    info["load_average_end"] = load_average()
    doc = {"what": "fp32 GEMM: our AVX2 path vs torch (oneDNN/MKL) held to AVX2; AVX-512 path vs torch unrestricted; "
                   "one BERT layer vs CTranslate2 float32 (AVX2)",
           "label": label, "note": args.note, "clock": args.clock, "rounds": rounds, "threads": threads, "machine": info,
           "gemm_cases": gemm_cases, "layer_cases": layer_cases,
           "gemm": rows_of(gemm_t, lambda c: 2 * c[0] * c[1] * c[2]), "layer": rows_of(layer_t, lambda c: None),
           "ct2_note": "included" if layer else ("not installed (pip install ctranslate2)" if not ct2_available()
                                                  else "skipped (--quick / --no-layer)"),
           "wall_s": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(doc))
    plot(doc, args.out / f"{args.name}.png")
    print(f"wrote {args.out / args.name}.{{json,md,png}} in {doc['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
