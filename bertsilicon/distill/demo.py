"""Distil the real MiniLM-L6 into a 3-layer student on CPython's documentation, optimize it, measure it.

    python -m bertsilicon.distill.demo [--steps 100] [--seeds 0 1 2] [--out bench/results/distill]

1. Teacher: all-MiniLM-L6-v2 (real weights). Student: ``bert-L3-H384`` (3 layers of the teacher's width),
   initialised from teacher layers [1, 3, 5] (TinyBERT's uniform map) + the teacher's embeddings.
2. Train text: ``corpus("pydoc")`` (paragraphs of the Python reference) + ``corpus("docstrings-train")``
   (docstrings of ~110 *other* standard-library modules: in-domain text, disjoint from the evaluation's
   modules and texts). Distilled student: sentence-embedding distillation (MSE + cosine between
   mean-pooled student and teacher embeddings) + TinyBERT's hidden-state MSE on the mapped layers, with the
   student's dropout off (a deterministic student chasing a deterministic teacher).
   Undistilled student, the baseline: the SAME init, data, steps, batch, learning rate, schedule and seeds,
   trained with unsupervised SimCSE (a teacher-free sentence-embedding objective; its dropout is its
   augmentation, so it keeps it) — so the only difference is the teacher's signal. The untrained init
   ("truncated teacher") is reported too.
3. Evaluation on ``corpus("docstrings")`` (standard-library docstrings, label = module; never trained on):
   retrieval top-10 overlap with the teacher's neighbours, and leave-one-out kNN module classification.
4. Speed: teacher vs student (plain and ``bertsilicon.optimize``-d) measured on the docstrings, and the
   profiler's predicted speed-up (``bertsilicon.profile``).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Optional
from pathlib import Path

import torch

STUDENT_SPEC = "bert-L3-H384"
DISTILLED = {"sentence_mse": 1.0, "sentence_cosine": 1.0, "hidden_mse": 1.0}
UNDISTILLED = {"simcse": 1.0}
STUDENT_DROPOUT = {"distilled": 0.0, "undistilled": None}  # None: the config's 0.1 (SimCSE's two views)


def train_texts(max_texts=None) -> list:
    """The training text: pydoc paragraphs + other modules' docstrings (the first ``max_texts`` of them)."""
    import bertsilicon as bs

    return (bs.data.corpus("pydoc").texts + bs.data.corpus("docstrings-train").texts)[:max_texts]


# ------------------------------------------------------------------------------------------------ #
# evaluation: embeddings, retrieval overlap, kNN                                                       #
# ------------------------------------------------------------------------------------------------ #
def length_batches(tokenizer, texts, batch_size=64, max_length=128):
    """(order, batches): texts sorted by length and tokenized in batches (little padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [dict(tokenizer([texts[i] for i in order[c:c + batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")) for c in range(0, len(order), batch_size)]
    return order, batches


def embed(model, order, batches) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings [N, D], in the original text order."""
    from ..models.eval import embed_batches

    emb = torch.nn.functional.normalize(embed_batches(model, batches), dim=-1)
    out = torch.empty_like(emb)
    out[torch.tensor(order)] = emb
    return out


def retrieval_overlap(emb: torch.Tensor, teacher_emb: torch.Tensor, k: int = 10) -> float:
    """Mean over queries of |top-k(student) ∩ top-k(teacher)| / k (self excluded; cosine neighbours)."""
    from ..precision.metrics import topk_overlap

    return float(topk_overlap(emb, teacher_emb, k).mean())


def metrics(model, order, batches, teacher_emb, labels) -> dict:
    """Top-10 retrieval overlap with the teacher and leave-one-out 5-NN module accuracy
    (:func:`bertsilicon.models.eval.knn_accuracy`: majority vote, ties broken by similarity)."""
    from ..models.eval import knn_accuracy

    emb = embed(model, order, batches)
    return {"top10_overlap": retrieval_overlap(emb, teacher_emb), "knn_accuracy": knn_accuracy(emb, labels)}


# ------------------------------------------------------------------------------------------------ #
# optimize / profile, whichever exists yet                                                            #
# ------------------------------------------------------------------------------------------------ #
def try_optimize(model, precision):
    """(model, note): ``bertsilicon.optimize(copy, precision)``, or the plain model and why."""
    try:
        from ..models.optimize import optimize
    except ImportError as exc:
        return model, f"bertsilicon.optimize not importable ({exc}); the plain student is measured"
    try:
        return optimize(copy.deepcopy(model), precision=precision), f"bertsilicon.optimize(precision={precision!r})"
    except Exception as exc:  # report, do not hide: the plain student is measured instead
        return model, f"bertsilicon.optimize(precision={precision!r}) failed: {type(exc).__name__}: {exc}"


def profiler_hardware(threads: int, cpu_flags: str) -> str:
    """``"local"`` when this machine has a stored calibration at ``threads`` (no measuring now: that is
    ``bertsilicon profile --calibrate``), else the table's CPU matching this one's vector flags."""
    try:
        from ..profiler.calibration import load_calibration

        if load_calibration(threads) is not None:
            return "local"
    except (ImportError, OSError, ValueError):
        pass
    return "avx512" if "avx512f" in cpu_flags else "avx2"


def predicted_speedup(teacher_cfg, student_cfg, batches, precision, hardware) -> dict:
    """Σ teacher latency / Σ student latency over the timed batches (real tokens, from their attention
    masks) from ``bertsilicon.profile``'s roofline model, or why not."""
    try:
        from ..profiler import profile
    except ImportError as exc:
        return {"value": None, "note": f"bertsilicon.profile not available ({exc})"}
    try:
        lat = [sum(profile(c, precision=precision, hardware=hardware, attention_mask=b["attention_mask"])
                   .totals["latency_s"] for b in batches) for c in (teacher_cfg, student_cfg)]
    except Exception as exc:  # report it: the demo's other figures stand without it
        return {"value": None, "note": f"bertsilicon.profile failed: {type(exc).__name__}: {exc}"}
    return {"value": lat[0] / lat[1], "teacher_latency_s": lat[0], "student_latency_s": lat[1],
            "hardware": hardware, "note": f"bertsilicon.profile(config, precision={precision!r}, "
                                          f"hardware={hardware!r}, attention_mask=<each timed batch>), roofline"}


# ------------------------------------------------------------------------------------------------ #
# conditions                                                                                          #
# ------------------------------------------------------------------------------------------------ #
def conditions(threads: int, note: str) -> dict:
    """Date, CPU and its kernel-relevant flags, versions and commit (from ``bertsilicon.benchmark.machine``)."""
    from bertsilicon.benchmark.machine import commit_text, machine_info

    info = machine_info(threads)
    flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
                     if f in info["cpu"]["flags"])
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": info["cpu"]["model"],
            "cpu_flags": flags, "torch_threads": threads, "python": info["python"], "torch": torch.__version__,
            "transformers": info["versions"]["transformers"], "commit": commit_text(info), "note": note}


def _mean_spread(values):
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "spread": max(values) - min(values), "values": list(values)}


def beats_beyond_spread(summary: dict, baseline: dict) -> Optional[dict]:
    """Per metric: does ``summary``'s mean exceed ``baseline``'s by more than both seed spreads? ``baseline``
    maps metrics to a ``_mean_spread`` dict, or to a number (spread 0). None with fewer than two seeds: one
    seed has no spread, so no such claim can be made."""
    if min(len(v["values"]) for v in summary.values()) < 2:
        return None
    out = {}
    for m, v in summary.items():
        b = baseline[m] if isinstance(baseline[m], dict) else {"mean": baseline[m], "spread": 0.0}
        out[m] = v["mean"] - b["mean"] > max(v["spread"], b["spread"])
    return out


def claim_line(beats: Optional[dict], seeds) -> str:
    """The Markdown sentence about the seed spread: the per-metric verdict, or why there is none."""
    if beats is None:
        return (f"One seed ({list(seeds)}): no seed spread, so no claim either way about beating the baseline "
                "beyond it (run with two seeds or more, e.g. --seeds 0 1 2).")
    return ("Distilled beats undistilled by more than the seed spread: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in beats.items()) + ".")


def _cell(v: dict) -> str:
    """mean [min, max] over seeds; the value alone for one seed."""
    if len(v["values"]) < 2:
        return f"{v['mean']:.4f} (one seed)"
    return f"{v['mean']:.4f} [{v['min']:.4f}, {v['max']:.4f}]"


# ------------------------------------------------------------------------------------------------ #
# the demo                                                                                            #
# ------------------------------------------------------------------------------------------------ #
def run(steps=100, seeds=(0, 1, 2), batch_size=32, max_length=64, lr=2e-4, threads=2, precision="fp32",
        train_precision="fp32", eval_every=0, out=None, note="", progress=True, max_texts=None,
        eval_texts=None) -> dict:
    from transformers import BertModel

    import bertsilicon as bs

    from ..models.eval import time_batches as _time
    from .distiller import DistillConfig, Distiller
    from .layer_maps import init_student_from_teacher, layer_map, student_from_spec

    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    tok = bs.load_tokenizer()
    teacher = bs.load_student("minilm-l6")
    train = train_texts(max_texts)
    evalset = bs.data.corpus("docstrings")
    if eval_texts:
        evalset = evalset.subset(eval_texts, seed=0)
    order, batches = length_batches(tok, evalset.texts, 64, 128)
    teacher_emb = embed(teacher, order, batches)
    teacher_metrics = metrics(teacher, order, batches, teacher_emb, evalset.labels)
    student_cfg = student_from_spec(STUDENT_SPEC, teacher.config)
    layers = layer_map("uniform", student_cfg.num_hidden_layers, teacher.config.num_hidden_layers)

    def fresh_student():
        return init_student_from_teacher(BertModel(student_cfg, add_pooling_layer=False), teacher, layers).eval()

    def eval_fn(model):
        return metrics(model, order, batches, teacher_emb, evalset.labels)

    print(f"teacher all-MiniLM-L6-v2 (6 layers, real weights) -> student {STUDENT_SPEC} from teacher layers {layers}; "
          f"train {len(train)} pydoc paragraphs + other modules' docstrings, eval {len(evalset)} docstrings of {len(set(evalset.labels))} "
          f"modules; {steps} steps x batch {batch_size}, max length {max_length}, lr {lr}, seeds {list(seeds)}, "
          f"{threads} threads", flush=True)
    init_metrics = eval_fn(fresh_student())
    runs = {"distilled": [], "undistilled": []}
    cache = None
    last = {}
    for seed in seeds:
        for kind, losses in (("distilled", DISTILLED), ("undistilled", UNDISTILLED)):
            cfg = DistillConfig(losses=dict(losses), layer_map=layers, lr=lr, steps=steps, batch_size=batch_size,
                                max_length=max_length, seed=seed, precision=train_precision, eval_every=eval_every,
                                warmup_steps=max(1, steps // 10), progress=progress,
                                student_dropout=STUDENT_DROPOUT[kind])
            torch.manual_seed(seed)  # dropout
            student = fresh_student()
            d = Distiller(teacher if kind == "distilled" else None, student, tok, cfg, eval_fn=eval_fn)
            d.teacher_cache = cache if kind == "distilled" else None
            t0 = time.perf_counter()
            hist = d.fit(train)
            if kind == "distilled":
                cache = d.teacher_cache  # teacher embeddings of the train set: computed once
            final = hist["eval"][-1]
            runs[kind].append({"seed": seed, "loss": hist["loss"], "evals": hist["eval"],
                               "train_s": time.perf_counter() - t0, **{k: final[k] for k in init_metrics}})
            print(f"  seed {seed} {kind:<11}: top-10 overlap {final['top10_overlap']:.4f}, kNN accuracy "
                  f"{final['knn_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            last[kind] = student.eval()

    summary = {kind: {m: _mean_spread([r[m] for r in rs]) for m in init_metrics} for kind, rs in runs.items()}
    beats = beats_beyond_spread(summary["distilled"], summary["undistilled"])
    beats_init = beats_beyond_spread(summary["distilled"], init_metrics)

    # speed: teacher vs the distilled student (last seed), plain and optimized, on the same docstring batches
    opt_student, opt_note = try_optimize(last["distilled"], precision)
    timing_batches = [b for b in batches[::max(1, len(batches) // 6)]][:6]
    ms = {"teacher": _time(teacher, timing_batches, 5), "student": _time(last["distilled"], timing_batches, 5)}
    opt_metrics = None
    if opt_student is not last["distilled"]:
        ms["student_optimized"] = _time(opt_student, timing_batches, 5)
        opt_metrics = eval_fn(opt_student)
        opt_teacher, _ = try_optimize(teacher, precision)
        if opt_teacher is not teacher:  # kernels against kernels: what the profiler's ratio predicts
            ms["teacher_optimized"] = _time(opt_teacher, timing_batches, 5)
    mean_len = statistics.fmean(float(b["attention_mask"].shape[1]) for b in timing_batches)
    cond = conditions(threads, note)
    predicted = predicted_speedup(teacher.config, student_cfg, timing_batches, precision,
                                  profiler_hardware(threads, cond["cpu_flags"]))
    result = {
        "conditions": cond,
        "setup": {"teacher": "all-MiniLM-L6-v2 (minilm-l6, real weights)", "student": STUDENT_SPEC,
                  "student_layers_from_teacher": layers, "distilled_losses": DISTILLED,
                  "undistilled_losses": UNDISTILLED, "student_dropout": STUDENT_DROPOUT, "steps": steps, "batch_size": batch_size,
                  "max_length": max_length, "lr": lr, "precision": train_precision,
                  "optimize_precision": precision, "seeds": list(seeds),
                  "train": f"corpus('pydoc') + corpus('docstrings-train'), {len(train)} texts",
                  "eval": f"corpus('docstrings'), {len(evalset)} texts, {len(set(evalset.labels))} modules",
                  "metrics": "top10_overlap: mean |top-10 student ∩ top-10 teacher| / 10 (cosine, self excluded); "
                             "knn_accuracy: leave-one-out 5-NN majority vote of the module (ties: similarity)"},
        "teacher": teacher_metrics, "init_no_training": init_metrics, "summary": summary,
        "distilled_beats_undistilled_by_more_than_spread": beats,
        "distilled_beats_untrained_init_by_more_than_spread": beats_init,
        "speed": {"ms_per_batch": ms, "batches": len(timing_batches), "batch_size": 64,
                  "mean_padded_length": mean_len, "measured_speedup_plain": ms["teacher"] / ms["student"],
                  "measured_speedup_optimized": (ms["teacher"] / ms["student_optimized"]
                                                 if "student_optimized" in ms else None),
                  "measured_speedup_both_optimized": (ms["teacher_optimized"] / ms["student_optimized"]
                                                      if "teacher_optimized" in ms else None),
                  "optimize": opt_note, "optimized_student_metrics": opt_metrics,
                  "predicted_speedup": predicted},
        "runs": runs, "wall_s": time.perf_counter() - t_start,
    }
    print(to_markdown(result))
    if out:
        write(result, Path(out))
    return result


def to_markdown(r: dict) -> str:
    c, s, sp = r["conditions"], r["setup"], r["speed"]
    lines = [
        "# Distillation demo: all-MiniLM-L6-v2 -> 3-layer student on CPython's docs",
        "",
        f"Conditions: {c['date']}, {c['cpu']} ({c['cpu_flags']}), {c['torch_threads']} torch threads, Python "
        f"{c['python']}, torch {c['torch']}, transformers {c['transformers']}, commit {c['commit']}. {c['note']}",
        "",
        f"Student {s['student']} initialised from teacher layers {s['student_layers_from_teacher']} + embeddings; "
        f"{s['steps']} steps x batch {s['batch_size']} (max length {s['max_length']}, lr {s['lr']}, weights "
        f"{s['precision']}) on {s['train']}; evaluated on {s['eval']}. Seeds {s['seeds']}"
        + (": mean [min, max]." if len(s["seeds"]) > 1 else " (one seed: no spread)."),
        "",
        "| model | top-10 overlap with teacher | kNN module accuracy |",
        "|---|---|---|",
        f"| teacher (6 layers) | 1 | {r['teacher']['knn_accuracy']:.4f} |",
        f"| student, teacher layers, no training | {r['init_no_training']['top10_overlap']:.4f} | "
        f"{r['init_no_training']['knn_accuracy']:.4f} |",
    ]
    for kind, label in (("undistilled", "student, undistilled (SimCSE, same data/steps)"),
                        ("distilled", "student, distilled (sentence MSE + cosine + hidden MSE)")):
        cells = [_cell(v) for v in r["summary"][kind].values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", claim_line(r["distilled_beats_undistilled_by_more_than_spread"], s["seeds"]), ""]
    ms = sp["ms_per_batch"]
    lines.append(f"Speed ({sp['batches']} docstring batches of {sp['batch_size']}, mean padded length "
                 f"{sp['mean_padded_length']:.0f}, median of 5): teacher {ms['teacher']:.1f} ms/batch, student "
                 f"{ms['student']:.1f} ms/batch -> measured speed-up {sp['measured_speedup_plain']:.2f}x (plain HF).")
    if sp["measured_speedup_optimized"] is not None:
        lines.append(f"Optimized student: {ms['student_optimized']:.1f} ms/batch -> "
                     f"{sp['measured_speedup_optimized']:.2f}x over the HF teacher ({sp['optimize']}).")
        if sp.get("measured_speedup_both_optimized") is not None:
            lines.append(f"Both optimized: teacher {ms['teacher_optimized']:.1f} ms/batch -> student "
                         f"{sp['measured_speedup_both_optimized']:.2f}x faster.")
    else:
        lines.append(f"Optimized student: not measured — {sp['optimize']}.")
    pr = sp["predicted_speedup"]
    lines.append(f"Profiler's predicted speed-up: {pr['value']:.2f}x ({pr['note']})." if pr["value"] is not None
                 else f"Profiler's predicted speed-up: unavailable — {pr['note']}.")
    lines.append(f"\nWall time of the demo: {r['wall_s']:.0f} s.")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, kind, title in ((axes[0], "distilled", "distilled: sentence MSE + cosine + hidden MSE"),
                            (axes[1], "undistilled", "undistilled: SimCSE loss")):
        for run in r["runs"][kind]:
            ax.plot(range(1, len(run["loss"]) + 1), run["loss"], label=f"seed {run['seed']}", lw=1)
        ax.set(title=title, xlabel="step", ylabel="training loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    names = ["teacher", "init", "undistilled", "distilled"]
    for ax, metric, title in ((axes[2], "top10_overlap", "retrieval top-10 overlap with teacher"),
                              (axes[3], "knn_accuracy", "kNN module accuracy (docstrings)")):
        means = [r["teacher"][metric], r["init_no_training"][metric],
                 r["summary"]["undistilled"][metric]["mean"], r["summary"]["distilled"][metric]["mean"]]
        lo = [0, 0] + [r["summary"][k][metric]["mean"] - r["summary"][k][metric]["min"] for k in names[2:]]
        hi = [0, 0] + [r["summary"][k][metric]["max"] - r["summary"][k][metric]["mean"] for k in names[2:]]
        ax.bar(names, means, yerr=[lo, hi], capsize=4, color=["grey", "silver", "tab:orange", "tab:blue"])
        ax.set(title=title, ylim=(min(means) * 0.9, 1.0 if metric == "top10_overlap" else max(means) * 1.05))
    c = r["conditions"]
    fig.suptitle(f"{c['date']} · {c['cpu']} · {c['torch_threads']} threads · commit {c['commit']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(r, indent=1))
    (out / "demo.md").write_text(to_markdown(r) + "\n")
    plot(r, out / "demo.png")
    print(f"wrote {out / 'demo.json'}, {out / 'demo.md'}, {out / 'demo.png'}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(demo) one distilled + one undistilled "
                   "run per seed")
    p.add_argument("--batch-size", type=int, default=32, help="texts per step")
    p.add_argument("--seq-len", "--max-length", dest="max_length", type=int, default=64,
                   help="tokens per text at most")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--precision", default="fp32", help="(demo) bertsilicon.optimize precision of the timed student")
    p.add_argument("--train-precision", default="fp32", help="student weights while training (fp32, bf16-nearest, "
                   "bf16-stochastic)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end only)")
    p.add_argument("--max-texts", type=int, default=None, help="train on the first N texts only")
    p.add_argument("--eval-texts", type=int, default=None, help="evaluate on N docstrings (a fixed random subset)")
    p.add_argument("--out", default=None, help="(demo) folder for demo.json, demo.md and demo.png; otherwise the "
                   "folder the final student is written to (Hugging Face + sentence-transformers; default: "
                   "CHECKPOINT_DIR/student when --checkpoint-dir is given)")
    p.add_argument("--note", default="", help="(demo) a line about the conditions, stored with the figures")


def demo_from_args(args) -> int:
    if len(args.seeds) < 1:
        raise ValueError("--seeds needs at least one seed")
    run(steps=args.steps, seeds=tuple(args.seeds), batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
        threads=args.threads, precision=args.precision,
        train_precision=args.train_precision, eval_every=args.eval_every, out=args.out, note=args.note,
        max_texts=args.max_texts, eval_texts=args.eval_texts)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bertsilicon.distill.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return demo_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
