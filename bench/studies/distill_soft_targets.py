"""What the recipes' teacher gives a student to learn from, on the transfer set (every train text).

    .venv/bin/python bench/studies/distill_soft_targets.py --out bench/results/distill

Reads teacher 0 from the cache of bench/studies/distill_recipes.py (run that first, same --cache / settings) and
writes soft_targets.json, for the labelled subset and for the whole transfer set:
- soft targets (soft_target): the teacher's accuracy, and at T = 1, 2, 4 the mean probability of the true label,
  the mean largest probability and the mean entropy (nats; uniform over C classes: ln C);
- logit regression targets (logit_mse, Tang et al.): the mean squared norm of the teacher's logits per text, the
  part a per-class offset explains (squared norm of the mean logit vector) and what is left after centring each
  row (the target a logit-normalised MSE would regress).
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def logit_targets(logits: torch.Tensor) -> dict:
    """Mean ||z||^2 per row of ``logits [N, C]``; ||mean_n z_n||^2; mean ||z - mean_c z||^2 per row."""
    z = logits.double()
    return {"mean_sq_norm": float(z.pow(2).sum(-1).mean()), "class_offset_sq_norm": float(z.mean(0).pow(2).sum()),
            "row_centred_mean_sq_norm": float((z - z.mean(-1, keepdim=True)).pow(2).sum(-1).mean())}


def main(argv=None) -> int:
    import bertsilicon as bs
    from safetensors.torch import load_file

    from bertsilicon.distill.recipes import Settings, soft_target_summary, transfer_set
    from bertsilicon.distill.task import predict_logits, teacher_classifier
    from bertsilicon.tasks import task

    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=d.cache, help="the recipes run's cache folder")
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps, help="as the recipes run")
    p.add_argument("--teacher-batch-size", type=int, default=d.teacher_batch_size, help="as the recipes run")
    p.add_argument("--max-length", type=int, default=d.max_length, help="as the recipes run")
    p.add_argument("--label-fraction", type=float, default=d.label_fraction, help="as the recipes run")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    p.add_argument("--out", required=True, help="folder for soft_targets.json")
    a = p.parse_args(argv)
    path = Path(a.cache) / f"teacher-0-steps{a.teacher_steps}-len{a.max_length}-bs{a.teacher_batch_size}.safetensors"
    if not path.is_file():
        raise SystemExit(f"no cached teacher at {path}: run bench/studies/distill_recipes.py with these settings first")
    torch.set_num_threads(a.threads)
    t, tok = task("docstring-module"), bs.load_tokenizer()
    teacher = teacher_classifier(t.num_labels, seed=0)
    teacher.load_state_dict(load_file(str(path)))
    logits = predict_logits(teacher.eval(), tok, t.train.texts, max_length=a.max_length)
    keep = [i for i, y in enumerate(transfer_set(t.train, a.label_fraction).labels) if y is not None]
    out = {"teacher": path.name, "classes": t.num_labels}
    for name, rows in (("labelled_subset", keep), ("transfer_set", list(range(len(t.train))))):
        labels = [t.train.labels[i] for i in rows]
        out[name] = {"soft_target": soft_target_summary(logits[rows], labels, (1.0, 2.0, 4.0)),
                     "logit_mse": logit_targets(logits[rows])}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "soft_targets.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
