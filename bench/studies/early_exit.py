"""Early exit (FastBERT) on the docstring-module task's test split: accuracy and speed-up against the full model
at several speeds, batch 1 and batch 32; compaction against masking only; the profiler's predicted speed-up
from the exit-layer histogram against the measured one. Writes OUT/early_exit.{json,md,png}.

    python bench/studies/early_exit.py --out bench/results/early_exit            # trains into OUT/train if needed
    python bench/studies/early_exit.py --out /tmp/ee --model DIR --quick         # a check: 64 texts, 3 speeds

--model: an early-exit model folder (`bertsilicon early-exit train --out X` writes X/model); without it the
model is trained into OUT/train (git-ignored; resumable: a rerun reuses what is there): MiniLM fine-tuned 150 steps
x 16 texts (max length 48), then 400 self-distillation steps of the branches. The model is optimized at
--precision and run on the fused kernels. Timing: every configuration runs the whole split once per repeat,
the configurations interleaved within a repeat (full model, each speed, compaction and masking only); the
figures are medians over repeats. Batches are taken in the split's order (as requests arrive), not sorted.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import bertsilicon as bs
from bertsilicon import early_exit
from bertsilicon.benchmark.machine import describe, load_average, machine_info
from bertsilicon.profiler.early_exit import early_exit_cost
from bertsilicon.tasks import task

SPEEDS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)  # 41 classes: a confident prediction still has entropy
QUICK_SPEEDS = (0.0, 0.8, 0.9)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for early_exit.{json,md,png}")
    p.add_argument("--model", default=None, help="an early-exit model folder (default: train into OUT/train)")
    p.add_argument("--precision", default="int8", choices=("fp32", "bf16", "int8"), help="optimize precision")
    p.add_argument("--speeds", type=float, nargs="+", default=None, help=f"thresholds (default {SPEEDS})")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians over them)")
    p.add_argument("--max-length", type=int, default=48, help="tokens per text at most")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--hardware", default="epyc-7763", help="the profiler's hardware table entry for the prediction")
    p.add_argument("--label", default="", help="a note on the run (e.g. the machine's load) for the Markdown")
    p.add_argument("--texts", type=int, default=None, help="only the test split's first N texts (default: all)")
    p.add_argument("--quick", action="store_true", help="a check: 64 test texts, 3 speeds, 2 repeats")
    return p.parse_args(argv)


def batches(tok, texts, size, max_length):
    out = []
    for c in range(0, len(texts), size):
        b = tok(texts[c:c + size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append((b["input_ids"], b["attention_mask"]))
    return out


def timed_pass(fn, data):
    """Seconds to run ``fn`` over every batch, and its outputs."""
    outs = []
    t0 = time.perf_counter()
    for ids, mask in data:
        outs.append(fn(ids, mask))
    return time.perf_counter() - t0, outs


def measure(ee, data, speeds, repeats, masking):
    """Median pass time (s) of the full model and of each (speed, mode); predictions and exit layers."""
    configs = [("full", None)] + [("compact", s) for s in speeds if s > 0] + [("masked", s) for s in speeds
                                                                            if s > 0 and masking]
    runs = {c: [] for c in configs}
    results = {}
    for _ in range(repeats):
        for mode, speed in configs:
            if mode == "full":
                t, outs = timed_pass(lambda i, m: ee.model(input_ids=i, attention_mask=m).logits, data)
                results[(mode, speed)] = (torch.cat(outs), None)
            else:
                t, outs = timed_pass(lambda i, m: early_exit.classify(ee, i, m, speed=speed,
                                                                       compact=mode == "compact"), data)
                results[(mode, speed)] = (torch.cat([o.logits for o in outs]), torch.cat([o.exit_layer for o in outs]))
            runs[(mode, speed)].append(t)
    return {c: statistics.median(v) for c, v in runs.items()}, results


def run(a) -> dict:
    torch.set_num_threads(a.threads)
    info = machine_info(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        from bertsilicon.early_exit.train import train_task_model
        train_task_model(out / "train", max_length=a.max_length)
        a.model = str(out / "train" / "model")
    ee = early_exit.load(a.model)
    bs.optimize(ee.model, a.precision)
    t, tok = task("docstring-module"), bs.load_tokenizer()
    texts, labels = list(t.test.texts), torch.tensor(t.test.labels)
    speeds = a.speeds or (QUICK_SPEEDS if a.quick else SPEEDS)
    repeats = 2 if a.quick else a.repeats
    limit = 64 if a.quick else a.texts
    if limit is not None:
        if limit < 1:
            raise SystemExit(f"--texts must be a positive int, got {limit}")
        texts, labels = texts[:limit], labels[:limit]
    mean_tokens = sum(len(x) for x in tok(texts, truncation=True, max_length=a.max_length)["input_ids"]) / len(texts)
    rows = []
    for size in a.batch_sizes:
        data = batches(tok, texts, size, a.max_length)
        times, results = measure(ee, data, speeds, repeats, masking=size > 1)
        full_logits = results[("full", None)][0]
        full_acc = float((full_logits.argmax(-1) == labels).double().mean())
        rows.append({"batch_size": size, "speed": 0.0, "mode": "full", "accuracy": full_acc,
                     "ms_per_text": times[("full", None)] * 1e3 / len(texts), "speedup": 1.0,
                     "mean_exit_layer": float(ee.num_layers)})
        for (mode, speed), seconds in times.items():
            if mode == "full":
                continue
            logits, layers = results[(mode, speed)]
            counts = torch.bincount(layers - 1, minlength=ee.num_layers).tolist()
            predicted = early_exit_cost(ee.model, counts, batch_size=size, seq_len=round(mean_tokens),
                                        precision=a.precision, hardware=a.hardware)
            speedup = times[("full", None)] / seconds
            rows.append({"batch_size": size, "speed": speed, "mode": mode,
                         "accuracy": float((logits.argmax(-1) == labels).double().mean()),
                         "ms_per_text": seconds * 1e3 / len(texts), "speedup": speedup,
                         "mean_exit_layer": float(layers.double().mean()), "exit_counts": counts,
                         "predicted_speedup": predicted["latency_speedup"],
                         "predicted_flops_ratio": predicted["expected_flops"] / predicted["full_flops"],
                         "predicted_ms_per_text": times[("full", None)] * 1e3 / len(texts) / predicted["latency_speedup"]})
    info["load_average_end"] = load_average()
    return {"task": "docstring-module", "split": "test", "texts": len(texts), "split_texts": len(t.test), "precision": a.precision,
            "layers": ee.num_layers, "mean_tokens": mean_tokens, "repeats": repeats, "quick": a.quick,
            "hardware_table": a.hardware, "label": a.label, "machine": info,
            "model_name": f"{ee.model.config.model_type} {ee.num_layers} layers, hidden {ee.model.config.hidden_size}",
            "rows": rows}


def markdown(r: dict) -> str:
    lines = [f"# Early exit (FastBERT): {r['model_name']} on {r['task']} ({r['split']}, {r['texts']} of {r['split_texts']} texts), {r['precision']}",
             "", describe(r["machine"]), ""]
    if r["label"]:
        lines += [f"Run: {r['label']}", ""]
    lines += [f"Medians of {r['repeats']} interleaved passes over the split; mean {r['mean_tokens']:.1f} tokens per "
              "text. Speed-up: the full model's time over this configuration's, same batches, same run. Predicted: "
              f"the profiler's roofline ('{r['hardware_table']}' table) on the measured exit-layer histogram "
              "(`bertsilicon.profiler.early_exit.early_exit_cost`); predicted ms = measured full-model ms / predicted "
              "speed-up.", "",
              "| batch | mode | speed | accuracy | Δ acc (pt) | mean exit layer | ms/text | speed-up | predicted speed-up "
              "| predicted ms/text | FLOPs ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    full = {row["batch_size"]: row for row in r["rows"] if row["mode"] == "full"}
    for row in r["rows"]:
        base = full[row["batch_size"]]
        lines.append(f"| {row['batch_size']} | {row['mode']} | {row['speed']:g} | {row['accuracy']:.4f} | "
                     f"{100 * (row['accuracy'] - base['accuracy']):+.1f} | {row['mean_exit_layer']:.2f} | "
                     f"{row['ms_per_text']:.2f} | {row['speedup']:.2f}x | "
                     + (f"{row['predicted_speedup']:.2f}x | {row['predicted_ms_per_text']:.2f} | "
                        f"{row['predicted_flops_ratio']:.3f} |" if "predicted_speedup" in row else "- | - | 1.000 |"))
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for size in sorted({row["batch_size"] for row in r["rows"]}):
        for mode, style in (("compact", "o-"), ("masked", "x--")):
            pts = sorted((row["speedup"], row["accuracy"]) for row in r["rows"]
                         if row["batch_size"] == size and row["mode"] in (mode, "full"))
            if any(row["mode"] == mode and row["batch_size"] == size for row in r["rows"]):
                ax.plot(*zip(*pts), style, label=f"batch {size}, {'compaction' if mode == 'compact' else 'masking only'}")
            pairs = [(row["predicted_speedup"], row["speedup"]) for row in r["rows"]
                     if row["batch_size"] == size and row["mode"] == mode]
            if pairs and mode == "compact":
                bx.plot(*zip(*pairs), "o", label=f"batch {size}")
    ax.set_xlabel("speed-up over the full model (measured)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    lim = max([row["speedup"] for row in r["rows"]] + [row.get("predicted_speedup", 1) for row in r["rows"]]) * 1.05
    bx.plot([1, lim], [1, lim], "k:", lw=1)
    bx.set_xlabel("predicted speed-up (profiler, exit histogram)")
    bx.set_ylabel("measured speed-up")
    bx.legend()
    fig.suptitle(f"Early exit, {r['model_name']} {r['precision']} on {r['task']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.perf_counter()
    r = run(a)
    r["wall_s"] = time.perf_counter() - t0
    out = Path(a.out)
    (out / "early_exit.json").write_text(json.dumps(r, indent=1))
    md = markdown(r)
    if not plot(r, out / "early_exit.png"):
        md += "\nNo plot: matplotlib is not installed.\n"
    (out / "early_exit.md").write_text(md + f"\nWall time of the run: {r['wall_s']:.0f} s.\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
