"""``bertsilicon early-exit``: train, optimize and evaluate an early-exit (FastBERT) classifier.

    bertsilicon early-exit train --out ee/                                   # fine-tune MiniLM, then the branches
    bertsilicon early-exit optimize ee/model --precision int8 --out ee/int8  # fused kernels, saved with branches
    bertsilicon early-exit eval ee/int8 --speed 0 0.2 0.4 --batch-size 32    # accuracy and exit layers on test
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def register(subparsers) -> None:
    p = subparsers.add_parser("early-exit", help="adaptive inference: branch classifiers, batched early exit",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="early_exit_command", required=True)

    t = sub.add_parser("train", help="fine-tune MiniLM on the task, then train the branches by self-distillation")
    t.add_argument("--out", required=True, help="output folder (backbone/, model/); a rerun resumes from it")
    t.add_argument("--task", default="docstring-module", help="a task of bertsilicon.tasks")
    t.add_argument("--steps", type=int, default=None,
                   help="fine-tuning steps of the backbone and final classifier (default: early_exit.train.STEPS)")
    t.add_argument("--batch-size", type=int, default=None, help="texts per fine-tuning step (default: early_exit.train.BATCH_SIZE)")
    t.add_argument("--branch-steps", type=int, default=None,
                   help="self-distillation steps of the branches (default: early_exit.train.BRANCH_STEPS)")
    t.add_argument("--max-length", type=int, default=48, help="tokens per text at most")
    t.add_argument("--threads", type=int, default=2, help="torch threads")
    t.set_defaults(func=train_main)

    o = sub.add_parser("optimize", help="optimize a saved early-exit model and save it with its branches")
    o.add_argument("model_dir", help="an early-exit model folder (from `train`: OUT/model)")
    o.add_argument("--precision", choices=PRECISIONS, default="int8", help="the GEMMs' precision")
    o.add_argument("--out", required=True, help="the artifact folder to write")
    o.set_defaults(func=optimize_main)

    e = sub.add_parser("eval", help="accuracy, exit layers and layers run per speed on a task split")
    e.add_argument("model_dir", help="an early-exit model folder (plain or optimized)")
    e.add_argument("--speed", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6],
                   help="normalized-entropy thresholds in [0, 1] (0: never exit)")
    e.add_argument("--task", default="docstring-module", help="a task of bertsilicon.tasks")
    e.add_argument("--split", default="test", choices=("train", "dev", "test"), help="which split")
    e.add_argument("--limit", type=int, default=None, help="only the split's first N texts (a quick check)")
    e.add_argument("--batch-size", type=int, default=32, help="texts per batch")
    e.add_argument("--max-length", type=int, default=48, help="tokens per text at most")
    e.add_argument("--threads", type=int, default=2, help="torch threads")
    e.add_argument("--json", default=None, help="write the figures here")
    e.set_defaults(func=eval_main)


def _model_dir(folder: str) -> Path:
    from .artifact import BRANCH_MANIFEST

    path = Path(folder)
    if not (path / BRANCH_MANIFEST).is_file():
        raise FileNotFoundError(f"model_dir {folder}: no {BRANCH_MANIFEST} there; expected a folder written by "
                                "`bertsilicon early-exit train` (OUT/model) or `early-exit optimize`")
    return path


def train_main(args) -> int:
    import torch

    from .train import train_task_model

    torch.set_num_threads(args.threads)
    given = {k: getattr(args, k) for k in ("steps", "branch_steps", "batch_size") if getattr(args, k) is not None}
    train_task_model(args.out, args.task, max_length=args.max_length, **given)
    print(f"wrote {Path(args.out) / 'model'}")
    return 0


def optimize_main(args) -> int:
    import bertsilicon as bs

    from .artifact import load, save

    ee = load(_model_dir(args.model_dir))
    bs.optimize(ee.model, args.precision)
    save(ee, args.out, tokenizer=bs.load_tokenizer())
    print(f"wrote {args.out} ({args.precision})")
    return 0


def eval_main(args) -> int:
    import torch

    import bertsilicon as bs

    from ..tasks import task
    from .artifact import load
    from .inference import classify_texts

    torch.set_num_threads(args.threads)
    ee = load(_model_dir(args.model_dir))
    split, tok = task(args.task).split(args.split), bs.load_tokenizer()
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive int, got {args.limit}")
    texts, labels = list(split.texts)[:args.limit], torch.tensor(split.labels[:args.limit])
    rows = []
    for speed in args.speed:
        out = classify_texts(ee, tok, texts, speed=speed, batch_size=args.batch_size, max_length=args.max_length)
        acc = float((out.logits.argmax(-1) == labels).double().mean())
        layers_run = sum(out.rows_per_layer) / (len(texts) * ee.num_layers)
        rows.append({"speed": speed, "accuracy": acc, "mean_exit_layer": float(out.exit_layer.double().mean()),
                     "layers_run_fraction": layers_run})
        print(f"speed {speed:.2f}: accuracy {acc:.4f}, mean exit layer {rows[-1]['mean_exit_layer']:.2f} "
              f"of {ee.num_layers}, layer work {layers_run:.1%} of the full model")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "split": args.split, "rows": rows}, indent=1))
    return 0
