"""Per-layer Python overhead on the cpu backend: the per-op path vs the one-call path of FusedEncoderLayer.

    .venv/bin/python bench/studies/layer_overhead.py [--threads 2] [--rounds 30] [--out bench/results/cpu]

Same process, same optimized model, same real-text batch: each optimized model is timed with every layer's
``one_call = False`` (the per-op path: ~10 Python-level calls per layer) and ``one_call = True`` (one C++
call per layer, csrc/encoder_layer.cpp), in interleaved rounds (the order alternates every round), after
warm-up. Each sample is the mean of ``inner`` back-to-back forwards (>= 20 ms of work). Reported per case:
median and min (best-of) latency of both paths and the ratios per-op / one-call; the two paths' outputs
are checked bit-identical first.

Cases: MiniLM-L6 (the real all-MiniLM-L6-v2, ``load_student("minilm-l6")``) at batch 1 and 8, max length
128, on real text (the e2e benchmark's draw from ``corpus("pydoc")``: batch 1 is the first text of batch 8),
fp32 / bf16 / fp16 / int8 (fp16 on a CPU: fp16 operands on the fp32 kernel; int8: ``smooth=0.5``, calibrated on ``corpus("docstrings-train")[:64]``); TinyBERT4
(``student_config("tinybert4")``, random weights) at batch 1 in the same precisions.
Writes ``layer_overhead.json`` and ``layer_overhead.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

import bertsilicon
from bertsilicon import data
from bertsilicon.benchmark.machine import describe, load_average, machine_info
from bertsilicon.benchmark.runner import BenchConfig, text_pool, tokenize

MODES = ("per-op", "one-call")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _optimize(model, precision: str):
    kwargs = {}
    if precision == "int8":
        kwargs = {"smooth": 0.5, "calibration": list(data.corpus("docstrings-train")[:64])}
    return bertsilicon.optimize(model, precision=precision, **kwargs)


def _set_mode(model, mode: str) -> None:
    for layer in model.encoder.layer:
        layer.one_call = mode == "one-call"


def time_modes(run, modes: dict, rounds: int, min_sample_s: float) -> tuple[dict, dict]:
    """Time ``run()`` under each mode (``{name: setter}``, the setter switches the model to that mode) in
    interleaved rounds (the order alternates every round) after 3 warm-up calls per mode; each sample is the
    mean of ``inner`` back-to-back calls, ``inner`` sized so a sample lasts >= ``min_sample_s``. Returns
    ``({mode: {median_ms, min_ms, n, inner, samples_ms}}, {mode: the last output})``; the model is left in
    the first mode."""
    names = list(modes)
    outs, inner = {}, {}
    with torch.inference_mode():
        for mode in names:
            modes[mode]()
            for _ in range(3):
                outs[mode] = run()
            t = time.perf_counter()
            run()
            inner[mode] = max(1, round(min_sample_s / (time.perf_counter() - t)))
        samples = {m: [] for m in names}
        gc.collect()
        gc.disable()
        try:
            for r in range(rounds):
                for mode in (names if r % 2 == 0 else names[::-1]):
                    modes[mode]()
                    t = time.perf_counter()
                    for _ in range(inner[mode]):
                        run()
                    samples[mode].append((time.perf_counter() - t) / inner[mode])
        finally:
            gc.enable()
    modes[names[0]]()
    return ({m: {"median_ms": statistics.median(s) * 1e3, "min_ms": min(s) * 1e3, "n": len(s), "inner": inner[m],
                 "samples_ms": [round(x * 1e3, 4) for x in s]} for m, s in samples.items()}, outs)


def _time_case(model, batch, rounds: int, min_sample_s: float) -> dict:
    """{mode: seconds per forward samples}, interleaved rounds; raises if the two paths' outputs differ."""
    def run():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state

    res, outs = time_modes(run, {"one-call": lambda: _set_mode(model, "one-call"),
                                 "per-op": lambda: _set_mode(model, "per-op")}, rounds, min_sample_s)
    if not torch.equal(outs["per-op"], outs["one-call"]):
        raise AssertionError("the one-call path's output differs from the per-op path's")
    return {m: res[m] for m in MODES}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--min-sample-s", type=float, default=0.02)
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--out", default="bench/results/cpu")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)  # load average at the start
    tok = bertsilicon.load_tokenizer()
    texts, _ = text_pool(BenchConfig())  # the e2e benchmark's draw: batch 1 (27 tokens) is in batch 8
    batches = {b: tokenize(tok, texts[:b], 128, "longest") for b in (1, 8)}
    precisions = args.precisions.split(",")

    models = {"minilm-l6": (bertsilicon.load_student("minilm-l6"), (1, 8))}
    torch.manual_seed(0)
    models["tinybert4"] = (transformers.BertModel(bertsilicon.student_config("tinybert4")).eval(), (1,))
    rows = []
    for name, (base, sizes) in models.items():
        for precision in precisions:
            model = _optimize(copy.deepcopy(base), precision)
            gemms = sorted({g for r in model.bertsilicon_report.layers for g in r.gemms.values()})
            for b in sizes:
                batch = batches[b]
                res = _time_case(model, batch, args.rounds, args.min_sample_s)
                row = {"model": name, "precision": precision, "gemms": gemms, "batch": b,
                       "layers": len(model.encoder.layer),
                       "length": int(batch.input_ids.shape[1]), "real_tokens": batch.real_tokens, **res,
                       "speedup_median": res["per-op"]["median_ms"] / res["one-call"]["median_ms"],
                       "speedup_min": res["per-op"]["min_ms"] / res["one-call"]["min_ms"]}
                rows.append(row)
                print(f"{name:10s} {precision:5s} b{b}: per-op {res['per-op']['median_ms']:.3f} ms "
                      f"(min {res['per-op']['min_ms']:.3f}), one-call {res['one-call']['median_ms']:.3f} ms "
                      f"(min {res['one-call']['min_ms']:.3f}): {row['speedup_median']:.2f}x median, "
                      f"{row['speedup_min']:.2f}x best-of", flush=True)
    cmd = shlex.join(["python", "bench/studies/layer_overhead.py", *(argv if argv is not None else sys.argv[1:])])
    machine["load_average_end"] = load_average()
    result = {"command": cmd, "note": args.note, "machine": machine, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layer_overhead.json").write_text(json.dumps(result, indent=1))
    (out / "layer_overhead.md").write_text(markdown(result))
    print(f"wrote {out / 'layer_overhead.json'} and {out / 'layer_overhead.md'}")
    return 0


def provenance(result: dict) -> str:
    """The line under a result's title: the command, then ``machine.describe`` (commit, CPU, load...), the note."""
    return (f"`{result['command']}` — {describe(result['machine'])}"
            + (f" **{result['note']}**" if result["note"] else ""))


def markdown(result: dict) -> str:
    lines = ["# Per-layer overhead: per-op path vs one C++ call per layer (cpu backend)", "", provenance(result), "",
             "Latency per forward (ms): median and min (best-of) of interleaved rounds in one process; "
             "speed-up = per-op / one-call. Outputs of both paths checked bit-identical (`torch.equal`). "
             "Real text (`corpus('pydoc')`, the e2e draw), max length 128; TinyBERT4 with random weights.", "",
             "| model | precision | batch | tokens (real/padded) | per-op median | one-call median | speed-up | "
             "per-op min | one-call min | speed-up (best-of) | saved per layer (best-of) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        po, oc = r["per-op"], r["one-call"]
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['real_tokens']}/{r['batch'] * r['length']} "
                     f"| {po['median_ms']:.3f} | {oc['median_ms']:.3f} | {r['speedup_median']:.2f}x "
                     f"| {po['min_ms']:.3f} | {oc['min_ms']:.3f} | {r['speedup_min']:.2f}x "
                     f"| {(po['min_ms'] - oc['min_ms']) * 1e3 / r['layers']:.0f} us |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
