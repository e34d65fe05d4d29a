"""How informative the recipes' teacher's soft targets are on the students' labelled texts.

    .venv/bin/python bench/studies/distill_soft_targets.py --out bench/results/distill/limited-labels

Reads teacher 0 from the cache of bench/studies/distill_recipes.py (run that first, same --cache / settings) and
writes soft_targets.json: the teacher's accuracy on the labelled subset, and at T = 1, 2, 4 the mean probability
of the true label, the mean largest probability and the mean entropy (nats; uniform over C classes: ln C).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    import bertsilicon as bs
    from safetensors.torch import load_file

    from bertsilicon.distill.recipes import Settings, labelled_subset
    from bertsilicon.distill.task import predict_logits, teacher_classifier
    from bertsilicon.tasks import task

    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=d.cache, help="the recipes run's cache folder")
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps, help="as the recipes run")
    p.add_argument("--teacher-batch-size", type=int, default=d.teacher_batch_size, help="as the recipes run")
    p.add_argument("--max-length", type=int, default=d.max_length, help="as the recipes run")
    p.add_argument("--label-fraction", type=float, default=d.label_fraction, help="as the recipes run")
    p.add_argument("--out", required=True, help="folder for soft_targets.json")
    a = p.parse_args(argv)
    path = Path(a.cache) / f"teacher-0-steps{a.teacher_steps}-len{a.max_length}-bs{a.teacher_batch_size}.safetensors"
    if not path.is_file():
        raise SystemExit(f"no cached teacher at {path}: run bench/studies/distill_recipes.py with these settings first")
    torch.set_num_threads(1)
    t, tok = task("docstring-module"), bs.load_tokenizer()
    teacher = teacher_classifier(t.num_labels, seed=0)
    teacher.load_state_dict(load_file(str(path)))
    subset = labelled_subset(t.train, a.label_fraction)
    logits = predict_logits(teacher.eval(), tok, subset.texts, max_length=a.max_length)
    labels = torch.tensor(subset.labels)
    out = {"teacher": path.name, "texts": len(subset), "classes": t.num_labels,
           "uniform_entropy_nats": math.log(t.num_labels),
           "teacher_accuracy_on_subset": float((logits.argmax(-1) == labels).double().mean())}
    for temperature in (1.0, 2.0, 4.0):
        prob = torch.softmax(logits.double() / temperature, -1)
        out[f"T={temperature:g}"] = {"mean_prob_of_label": float(prob[torch.arange(len(labels)), labels].mean()),
                                     "mean_max_prob": float(prob.max(-1).values.mean()),
                                     "mean_entropy_nats": float(-(prob * prob.clamp_min(1e-300).log()).sum(-1).mean())}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "soft_targets.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
