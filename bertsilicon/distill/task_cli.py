"""``bertsilicon finetune`` and ``bertsilicon distill-task``: the labelled task from the command line.

    bertsilicon finetune --task docstring-module --steps 300 --out teacher/          # the real MiniLM + a head
    bertsilicon distill-task --teacher teacher/ --student bert-L2-H384 --init uniform \\
        --losses label_ce=0.5,soft_target=0.5 --temperature 2 --steps 200 --out student/
    bertsilicon distill-task --teacher teacher/ --teacher teacher2/ --student bilstm --losses label_ce,logit_mse \
        --augment 4                                                                  # Tang et al.'s augmentation
    bertsilicon design --latency-budget 2 --json front.json
    bertsilicon distill-task --teacher teacher/ --from-design front.json --pick 0 --losses label_ce,soft_target

Accuracy on the task's dev and test splits is printed (and written with ``--json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import _losses
from .layer_maps import student_from_design


def _add_common(p) -> None:
    p.add_argument("--task", default="docstring-module", help="a task of bertsilicon.tasks")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="texts per step")
    p.add_argument("--seq-len", "--max-length", dest="max_length", type=int, default=64,
                   help="tokens per text at most")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (None: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and data order")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", default=None, help="write the accuracies here")


def register(subparsers) -> None:
    from .layer_maps import LAYER_MAPS

    p = subparsers.add_parser("finetune", help="fine-tune the real MiniLM with a classification head on a task",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--model", default=None, help="a Hugging Face / sentence-transformers directory to fine-tune "
                   "(default: the built-in all-MiniLM-L6-v2)")
    p.add_argument("--out", required=True, help="folder for the fine-tuned teacher (save_pretrained)")
    p.set_defaults(func=finetune_main)
    p = subparsers.add_parser("distill-task", help="distil fine-tuned teachers into a student on a labelled task",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--teacher", action="append", default=[], help="a fine-tuned teacher folder (repeat: several)")
    p.add_argument("--student", default="bert-L2-H384", help="a student spec (bert-L{L}-H{H}, L2-H768-A12-F1536, "
                   "distilbert:n_layers=2, ...) or 'bilstm'")
    p.add_argument("--from-design", default=None, help="a `bertsilicon design --json` file: take --pick from its front")
    p.add_argument("--pick", type=int, default=0, help="with --from-design: which entry of the front")
    p.add_argument("--init", default=None, choices=LAYER_MAPS, help="initialise from teacher layers by this map")
    p.add_argument("--layer-map", default="uniform", choices=LAYER_MAPS, help="teacher layer each student layer learns from")
    p.add_argument("--losses", type=_losses, default={"label_ce": 0.5, "soft_target": 0.5},
                   help="name=weight,... (label_ce, soft_target, logit_mse, hidden_mse, attention_kl, ...)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the soft targets")
    p.add_argument("--no-t2", action="store_true", help="soft targets without the T^2 factor")
    p.add_argument("--out", default=None, help="folder for the final student (Hugging Face from_pretrained; "
                   "a BiLSTM: bertsilicon.distill.load_bilstm)")
    p.add_argument("--augment", type=int, default=0, help="add N augmented variants per training text (masking, "
                   "teacher word-embedding neighbours, n-grams: bertsilicon.distill.augment)")
    p.set_defaults(func=distill_main)


def _report(tok, model, t, args, extra: dict) -> int:
    from .task import accuracy

    acc = {s: accuracy(model, tok, t.split(s), max_length=args.max_length) for s in ("dev", "test")}
    print(f"accuracy: dev {acc['dev']:.4f}, test {acc['test']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**extra, "accuracy": acc}, indent=1))
    return 0


def finetune_main(args) -> int:
    import torch

    from ..tasks import task
    from .task import finetune, teacher_classifier

    from .. import sources

    source = sources.model_source(args.model, fp32_weights=True)
    if source.path is None and source.spec != sources.BUILTIN_MODEL:
        raise ValueError(f"--model {source.spec}: a student without pretrained weights; finetune needs "
                         f"'{sources.BUILTIN_MODEL}' or a model directory")
    torch.set_num_threads(args.threads)
    t, tok = task(args.task), sources.load_tokenizer(source)
    model = teacher_classifier(t.num_labels, seed=args.seed, path=source.path)
    model.config.id2label = dict(enumerate(t.label_names))
    model.config.label2id = {n: i for i, n in enumerate(t.label_names)}
    finetune(model, tok, t.train, steps=args.steps, lr=args.lr or 2e-4, batch_size=args.batch_size,
             max_length=args.max_length, seed=args.seed)
    model.save_pretrained(args.out)
    print(f"wrote {args.out}")
    return _report(tok, model, t, args, {"task": t.name, "steps": args.steps})


def distill_main(args) -> int:
    import torch
    from transformers import AutoModelForSequenceClassification

    import bertsilicon as bs

    from ..tasks import task
    from .recipes import BILSTM
    from .bilstm import BiLSTMClassifier, BiLSTMConfig
    from .distiller import TEACHER_FREE_LOSSES, DistillConfig, Distiller
    from .layer_maps import init_student_from_teacher, layer_map
    from .task import student_classifier

    torch.set_num_threads(args.threads)
    t, tok = task(args.task), bs.load_tokenizer()
    teachers = []
    for folder in args.teacher:
        if not (Path(folder) / "config.json").is_file():
            raise ValueError(f"--teacher {folder!r} is not a model folder (write one with bertsilicon finetune --out)")
        teachers.append(AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval())
    if not teachers and not all(k in TEACHER_FREE_LOSSES for k in args.losses):
        raise ValueError(f"losses {sorted(args.losses)} need --teacher (a bertsilicon finetune folder)")
    spec = student_from_design(args.from_design, args.pick) if args.from_design else args.student
    if spec == "bilstm":
        if not teachers:
            raise ValueError("the bilstm student takes its word embeddings from --teacher")
        student = BiLSTMClassifier.from_teacher_embeddings(BiLSTMConfig(num_labels=t.num_labels, **BILSTM),
                                                           teachers[0], args.seed)
    else:
        student = student_classifier(spec, t.num_labels, teachers[0].config if teachers else None, seed=args.seed)
        if args.init:
            init_student_from_teacher(student, teachers[0], layer_map(args.init, student.config.num_hidden_layers,
                                                                      teachers[0].config.num_hidden_layers))
    print(f"student {spec}; teachers {args.teacher or 'none'}; losses {args.losses}", flush=True)
    cfg = DistillConfig(losses=args.losses, layer_map=args.layer_map, init_from_teacher=False,
                        temperature=args.temperature, t2_scale=not args.no_t2, lr=args.lr or 3e-4, steps=args.steps,
                        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                        warmup_steps=max(1, args.steps // 10))
    texts, labels = list(t.train.texts), list(t.train.labels)
    if args.augment:
        from .augment import augment

        table = teachers[0].get_input_embeddings().weight if teachers else None
        texts, labels = augment(texts, labels, tok, n=args.augment, word_embeddings=table, seed=args.seed)
        print(f"augmented: {len(t.train)} -> {len(texts)} training texts", flush=True)
    Distiller(teachers or None, student, tok, cfg).fit(texts, labels)
    if args.out:
        from .export import save_student

        if hasattr(student, "config") and hasattr(student.config, "id2label"):
            student.config.id2label = dict(enumerate(t.label_names))
            student.config.label2id = {n: i for i, n in enumerate(t.label_names)}
        save_student(student.eval(), tok, args.out)
        print(f"student: {args.out}")
    return _report(tok, student.eval(), t, args, {"task": t.name, "student": spec, "losses": args.losses,
                                                  "teachers": args.teacher, "steps": args.steps})


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="bertsilicon")
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(sys.argv[1:])
    sys.exit(a.func(a))
