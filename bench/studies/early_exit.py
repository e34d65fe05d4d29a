"""Early exit (FastBERT) on the docstring-module task: accuracy, exit-layer histogram and FLOPs against the full
model at many speeds (dev and test splits, no timing), then the speed-up at a few speeds chosen on dev, batch 1
and batch 32, compaction against masking only, and the profiler's predicted speed-up against the measured one.
Writes OUT/early_exit.{json,md,png}.

    python bench/studies/early_exit.py --out bench/results/early_exit --skip-train   # reuses OUT/train/model
    python bench/studies/early_exit.py --out /tmp/ee --model DIR --quick             # a check: 64 texts

The model: --model (an early-exit model folder: `bertsilicon early-exit train --out X` writes X/model), else
OUT/train/model, trained there if missing (resumable; the `early-exit train` recipe: MiniLM fine-tuned, then
the branches self-distilled); --skip-train: fail instead of training. It is optimized at --precision and run on
the fused kernels.

Accuracy side: every classifier's logits of every text (batches of 32, the split's order), so every speed of
the grid costs nothing more; exit layer, accuracy, FLOPs ratio (the profiler's, from the histogram; exact).
Timed speeds: for each budget of dev accuracy lost (TIMED_BUDGETS points), the largest grid speed within it.
Timing: each configuration runs the whole test split once per repeat, the configurations interleaved within a
repeat (full model, each speed with compaction, with masking only at batch > 1); medians over repeats.
Predicted: the profiler on --hardware (default "local": this CPU as calibrated) from the measured exit
histogram, plus the exit overhead measured on the model (per-batch setup, per-layer check and compaction;
`bertsilicon.early_exit.overhead`).
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
from bertsilicon.early_exit.inference import exit_layers, layer_logits
from bertsilicon.early_exit.overhead import exit_overhead_fit
from bertsilicon.profiler.early_exit import early_exit_cost
from bertsilicon.tasks import task

GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TIMED_BUDGETS = (0.5, 1.0, 3.0, 10.0)  # points of dev accuracy lost


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for early_exit.{json,md,png} (and train/ without --model)")
    p.add_argument("--model", default=None, help="an early-exit model folder (default: OUT/train/model)")
    p.add_argument("--skip-train", action="store_true", help="never train: fail if the model is not there")
    p.add_argument("--precision", default="int8", choices=("fp32", "bf16", "int8"), help="optimize precision")
    p.add_argument("--speeds", type=float, nargs="+", default=None,
                   help="timed speeds (default: chosen on dev, see TIMED_BUDGETS)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians over them)")
    p.add_argument("--max-length", type=int, default=48, help="tokens per text at most")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--hardware", default="local", help="the profiler's hardware for the prediction")
    p.add_argument("--label", default="", help="a note on the run (e.g. the machine's load) for the Markdown")
    p.add_argument("--quick", action="store_true", help="a check: 64 texts per split, 2 timed speeds, 2 repeats")
    return p.parse_args(argv)


def model_dir(a) -> Path:
    if a.model is not None:
        path = Path(a.model)
    else:
        path = Path(a.out) / "train" / "model"
        if not (path / early_exit.artifact.BRANCH_MANIFEST).is_file():
            if a.skip_train:
                raise SystemExit(f"--skip-train: no trained model at {path}; train it (drop --skip-train) or "
                                 "give --model")
            from bertsilicon.early_exit.train import train_task_model
            train_task_model(path.parent, max_length=a.max_length)
    if not (path / early_exit.artifact.BRANCH_MANIFEST).is_file():
        raise SystemExit(f"--model {path}: no {early_exit.artifact.BRANCH_MANIFEST} there; expected an early-exit "
                         "model folder (`bertsilicon early-exit train --out X` writes X/model)")
    return path


def batches(tok, texts, size, max_length):
    out = []
    for c in range(0, len(texts), size):
        b = tok(texts[c:c + size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append((b["input_ids"], b["attention_mask"]))
    return out


def accuracy_side(ee, tok, split, labels, a) -> list:
    """One row per grid speed (and speed 0): accuracy, mean exit layer, histogram, FLOPs ratio."""
    logits = torch.cat([layer_logits(ee, i, m) for i, m in batches(tok, split, 32, a.max_length)])
    uncertainty = early_exit.normalized_entropy(logits)
    mean_tokens = sum(len(x) for x in tok(split, truncation=True, max_length=a.max_length)["input_ids"]) / len(split)
    rows = []
    for speed in (0.0, *GRID):
        layer = exit_layers(uncertainty, speed)
        pred = logits[torch.arange(len(split)), layer - 1].argmax(-1)
        counts = torch.bincount(layer - 1, minlength=ee.num_layers).tolist()
        cost = early_exit_cost(ee.model, counts, batch_size=1, seq_len=round(mean_tokens), precision=a.precision,
                               hardware=a.hardware)  # FLOPs are linear in the samples: batch 1 is exact
        rows.append({"speed": speed, "accuracy": float((pred == labels).double().mean()),
                     "mean_exit_layer": float(layer.double().mean()), "exit_counts": counts,
                     "flops_ratio": cost["expected_flops"] / cost["full_flops"]})
    per_layer = (logits.argmax(-1) == labels[:, None]).double().mean(0).tolist()
    return rows, per_layer, mean_tokens


def timed_speeds(dev_rows) -> list:
    """For each budget of TIMED_BUDGETS, the largest grid speed losing at most that many points on dev."""
    base = dev_rows[0]["accuracy"]
    chosen = []
    for budget in TIMED_BUDGETS:
        within = [r["speed"] for r in dev_rows[1:] if 100 * (base - r["accuracy"]) <= budget]
        if within and max(within) not in chosen:
            chosen.append(max(within))
    return chosen


def timed_pass(fn, data):
    """Seconds to run ``fn`` over every batch, and its outputs."""
    outs = []
    t0 = time.perf_counter()
    for ids, mask in data:
        outs.append(fn(ids, mask))
    return time.perf_counter() - t0, outs


def measure(ee, data, speeds, repeats, masking):
    """Median pass time (s) of the full model and of each (mode, speed); the exit layers of each."""
    configs = [("full", None)] + [("compact", s) for s in speeds] + [("masked", s) for s in speeds if masking]
    runs = {c: [] for c in configs}
    layers = {}
    for _ in range(repeats):
        for mode, speed in configs:
            if mode == "full":
                t, _ = timed_pass(lambda i, m: ee.model(input_ids=i, attention_mask=m).logits, data)
            else:
                t, outs = timed_pass(lambda i, m: early_exit.classify(ee, i, m, speed=speed,
                                                                       compact=mode == "compact"), data)
                layers[(mode, speed)] = torch.cat([o.exit_layer for o in outs])
            runs[(mode, speed)].append(t)
    return {c: statistics.median(v) for c, v in runs.items()}, layers


def timing_side(ee, tok, texts, speeds, overhead, mean_tokens, a, repeats) -> list:
    rows = []
    for size in a.batch_sizes:
        times, layers = measure(ee, batches(tok, texts, size, a.max_length), speeds, repeats, masking=size > 1)
        full_ms = times[("full", None)] * 1e3 / len(texts)
        rows.append({"batch_size": size, "mode": "full", "speed": 0.0, "ms_per_text": full_ms, "speedup": 1.0})
        for (mode, speed), seconds in times.items():
            if mode == "full":
                continue
            counts = torch.bincount(layers[(mode, speed)] - 1, minlength=ee.num_layers).tolist()
            predicted = early_exit_cost(ee.model, counts, batch_size=size, seq_len=round(mean_tokens),
                                        precision=a.precision, hardware=a.hardware, overhead=overhead)
            rows.append({"batch_size": size, "mode": mode, "speed": speed, "ms_per_text": seconds * 1e3 / len(texts),
                         "speedup": times[("full", None)] / seconds, "exit_counts": counts,
                         "mean_exit_layer": float(layers[(mode, speed)].double().mean()),
                         "predicted_speedup": predicted["latency_speedup"],
                         "predicted_ms_per_text": full_ms / predicted["latency_speedup"]})
    return rows


def run(a) -> dict:
    torch.set_num_threads(a.threads)
    info = machine_info(a.threads)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = model_dir(a)
    ee = early_exit.load(path)
    bs.optimize(ee.model, a.precision)
    t, tok = task("docstring-module"), bs.load_tokenizer()
    limit = 64 if a.quick else None
    splits = {name: (list(t.split(name).texts)[:limit], torch.tensor(t.split(name).labels[:limit]))
              for name in ("dev", "test")}
    accuracy, per_layer = {}, {}
    for name, (texts, labels) in splits.items():
        accuracy[name], per_layer[name], mean_tokens = accuracy_side(ee, tok, texts, labels, a)
    speeds = a.speeds or timed_speeds(accuracy["dev"])[:2 if a.quick else None]
    texts = splits["test"][0]
    overhead = exit_overhead_fit(ee, tok, texts, batch_sizes=(1, 32), max_length=a.max_length)
    rows = timing_side(ee, tok, texts, speeds, overhead, mean_tokens, a, 2 if a.quick else a.repeats)
    info["load_average_end"] = load_average()
    return {"task": "docstring-module", "precision": a.precision, "layers": ee.num_layers, "model_dir": str(path),
            "texts": {k: len(v[0]) for k, v in splits.items()}, "mean_tokens_test": mean_tokens,
            "repeats": 2 if a.quick else a.repeats, "quick": a.quick, "hardware": a.hardware, "label": a.label,
            "machine": info, "model_name": f"{ee.model.config.model_type} {ee.num_layers} layers, "
                                           f"hidden {ee.model.config.hidden_size}",
            "per_layer_accuracy": per_layer, "accuracy": accuracy, "timed_speeds": speeds,
            "overhead": {"setup": overhead["setup"], "check": overhead["check"],
                         "seconds": {str(k): v for k, v in overhead["seconds"].items()}}, "rows": rows}


def claim(rows) -> str:
    """Does a speed lose <= 1 point at mean exit layer <= L/2 (what 2x needs)? One sentence, from ``rows``."""
    base = rows[0]["accuracy"]
    ok = [r for r in rows[1:] if 100 * (base - r["accuracy"]) <= 1.0]
    if not ok:
        return "No speed of the grid loses at most 1 point."
    best = min(ok, key=lambda r: r["mean_exit_layer"])
    return (f"Within 1 point lost, the lowest mean exit layer is {best['mean_exit_layer']:.2f} (speed {best['speed']:g}, "
            f"{100 * (best['accuracy'] - base):+.1f} points, FLOPs {best['flops_ratio']:.3f} of the full model).")


def markdown(r: dict) -> str:
    L = r["layers"]
    lines = [f"# Early exit (FastBERT): {r['model_name']} on {r['task']}, {r['precision']}", "", describe(r["machine"]), ""]
    if r["label"]:
        lines += [f"Run: {r['label']}", ""]
    for name in ("dev", "test"):
        rows = r["accuracy"][name]
        base = rows[0]["accuracy"]
        lines += [f"## Accuracy side, {name} split ({r['texts'][name]} texts; no timing)", "",
                  "Accuracy of each classifier alone (layer 1 .. L): "
                  + ", ".join(f"{x:.3f}" for x in r["per_layer_accuracy"][name]) + ". " + claim(rows), "",
                  "| speed | accuracy | Δ acc (pt) | mean exit layer | exits at layer " + " / ".join(map(str, range(1, L + 1)))
                  + " | FLOPs ratio |", "|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['speed']:g} | {row['accuracy']:.4f} | {100 * (row['accuracy'] - base):+.1f} | "
                         f"{row['mean_exit_layer']:.2f} | {' / '.join(map(str, row['exit_counts']))} | "
                         f"{row['flops_ratio']:.3f} |")
        lines.append("")
    o = r["overhead"]
    lines += ["## Speed, test split", "",
              f"Timed speeds {', '.join(f'{s:g}' for s in r['timed_speeds'])} (for each of {TIMED_BUDGETS} points "
              f"of dev accuracy lost, the largest grid speed within it). Medians of {r['repeats']} interleaved passes; "
              "speed-up: the full model's time over this configuration's, same batches, same run. Predicted: the "
              f"profiler ('{r['hardware']}') on the measured exit histogram plus the measured exit overhead: setup "
              f"{o['setup'][0] * 1e6:.0f} us + {o['setup'][1] * 1e6:.1f} us/sample per batch, check and compaction "
              f"{o['check'][0] * 1e6:.0f} us + {o['check'][1] * 1e6:.1f} us/sample per layer; predicted ms = "
              "measured full-model ms / predicted speed-up.", "",
              "| batch | mode | speed | mean exit layer | ms/text | speed-up | predicted speed-up | predicted ms/text |",
              "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        pred = (f"{row['predicted_speedup']:.2f}x | {row['predicted_ms_per_text']:.3f} |" if "predicted_speedup" in row
                else "- | - |")
        lines.append(f"| {row['batch_size']} | {row['mode']} | {row['speed']:g} | {row.get('mean_exit_layer', L):.2f} | "
                     f"{row['ms_per_text']:.3f} | {row['speedup']:.2f}x | {pred}")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("dev", "x--"), ("test", "o-")):
        rows = r["accuracy"][name]
        ax.plot([1 / x["flops_ratio"] for x in rows], [x["accuracy"] for x in rows], style, label=name)
    ax.set_xlabel("FLOPs speed-up over the full model (exit histogram)")
    ax.set_ylabel("accuracy")
    ax.legend()
    for size in sorted({row["batch_size"] for row in r["rows"]}):
        pairs = [(row["predicted_speedup"], row["speedup"]) for row in r["rows"]
                 if row["batch_size"] == size and row["mode"] == "compact"]
        if pairs:
            bx.plot(*zip(*pairs), "o", label=f"batch {size}")
    lim = max([row["speedup"] for row in r["rows"]] + [row.get("predicted_speedup", 1) for row in r["rows"]]) * 1.05
    bx.plot([0, lim], [0, lim], "k:", lw=1)
    bx.set_xlabel("predicted speed-up (profiler + measured overhead)")
    bx.set_ylabel("measured speed-up (compaction)")
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
