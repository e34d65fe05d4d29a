"""``bertsilicon distill-mlm``: DistilBERT's triple loss with a teacher that has a masked-LM head.

    bertsilicon distill-mlm --teacher bert-mlm/ --student bert-L3-H768 --layer-map skip \\
        --alpha-ce 5 --alpha-mlm 2 --alpha-cos 1 --temperature 2 --steps 200 --out student/

``--teacher``: a folder ``transformers.AutoModelForMaskedLM`` loads (the shipped all-MiniLM-L6-v2 has no
masked-LM head, so it cannot be this teacher). The student (a spec of :func:`~.layer_maps.student_from_spec`
built on the teacher's config; default: the teacher's config with half its layers) starts from the teacher's layers by ``--layer-map`` unless ``--no-init``.
Train text: ``corpus("pydoc")`` + ``corpus("docstrings-train")``. ``--out``: the student as a Hugging Face
folder (:func:`~.export.save_student`); ``--checkpoint-dir``: resumable checkpoints.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path


def register(subparsers) -> None:
    from .layer_maps import LAYER_MAPS
    from .mlm import DISTILBERT_WEIGHTS

    p = subparsers.add_parser("distill-mlm", help="DistilBERT's triple loss (soft targets on the masked-LM "
                              "distribution, MLM, hidden cosine) from a masked-LM teacher",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a folder with a masked-LM model (AutoModelForMaskedLM)")
    p.add_argument("--student", default=None, help="a student spec on the teacher's config (bert-L{L}-H{H}, ...; "
                   "default: the teacher's config with half its layers)")
    p.add_argument("--layer-map", default="skip", choices=LAYER_MAPS, help="teacher layer each student layer starts from")
    p.add_argument("--no-init", action="store_true", help="do not copy teacher layers into the student")
    p.add_argument("--alpha-ce", type=float, default=DISTILBERT_WEIGHTS["soft_target"],
                   help="weight of the soft-target loss on the masked-LM distribution")
    p.add_argument("--alpha-mlm", type=float, default=DISTILBERT_WEIGHTS["mlm"], help="weight of the MLM loss")
    p.add_argument("--alpha-cos", type=float, default=DISTILBERT_WEIGHTS["hidden_cosine"],
                   help="weight of the hidden-state cosine loss")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the soft targets")
    p.add_argument("--mlm-probability", type=float, default=0.15, help="fraction of real tokens masked")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="texts per step")
    p.add_argument("--seq-len", "--max-length", dest="max_length", type=int, default=64, help="tokens per text at most")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, data order and masking")
    p.add_argument("--max-texts", type=int, default=None, help="train on the first N texts only")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--checkpoint-dir", default=None, help="folder for resumable checkpoints (safetensors)")
    p.add_argument("--out", default=None, help="folder for the final student (Hugging Face from_pretrained)")
    p.set_defaults(func=main)


def main(args) -> int:
    import torch
    from transformers import AutoModelForMaskedLM

    import bertsilicon as bs

    from .demo import train_texts
    from .distiller import DistillConfig
    from .export import save_student
    from .layer_maps import student_from_spec
    from .mlm import MaskedLMDistiller

    if not (Path(args.teacher) / "config.json").is_file():
        raise ValueError(f"--teacher {args.teacher!r} is not a model folder (config.json missing)")
    torch.set_num_threads(args.threads)
    teacher = AutoModelForMaskedLM.from_pretrained(args.teacher, local_files_only=True).eval()
    torch.manual_seed(args.seed)
    if args.student:
        student_cfg = student_from_spec(args.student, teacher.config)
    else:  # DistilBERT's student: the teacher's config with half its layers
        student_cfg = copy.deepcopy(teacher.config)
        student_cfg.num_hidden_layers = max(1, student_cfg.num_hidden_layers // 2)
    student = AutoModelForMaskedLM.from_config(student_cfg)
    tok = bs.load_tokenizer()
    cfg = DistillConfig(layer_map=args.layer_map, init_from_teacher=not args.no_init, temperature=args.temperature,
                        lr=args.lr, steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                        seed=args.seed, checkpoint_dir=args.checkpoint_dir)
    weights = {"soft_target": args.alpha_ce, "mlm": args.alpha_mlm, "hidden_cosine": args.alpha_cos}
    d = MaskedLMDistiller(teacher, student, tok, cfg, weights=weights, mlm_probability=args.mlm_probability)
    hist = d.fit(train_texts(args.max_texts))
    print(f"step {d.step}: loss {hist['loss'][-1]:.4f} ({', '.join(f'{k} {v:.4f}' for k, v in hist['parts'][-1].items())})")
    if args.out:
        save_student(student.eval(), tok, args.out)
        print(f"student: {args.out}")
    return 0


__all__ = ["register", "main"]
