"""``bertsilicon distill``: train a student against a teacher on the built-in real text.

    bertsilicon distill --teacher minilm-l6 --student bert-L3-H384 --steps 200
    bertsilicon distill --teacher minilm-l6 --student "minilm-l6:num_hidden_layers=3" --losses hidden_mse=1,attention_kl=1
    bertsilicon distill --student L2-H768-A12-F1536          # a shape as `bertsilicon design` names it
    bertsilicon distill --from-design front.json --pick 0    # entry 0 of a `bertsilicon design --json` front
    bertsilicon distill --demo            # the measured demo (python -m bertsilicon.distill.demo)
    bertsilicon distill --student bert-L3-H384 --steps 200 --out student/   # then SentenceTransformer("student/")

The final student is written with ``--out`` (or to ``CHECKPOINT_DIR/student``) as a folder that
``transformers.AutoModel.from_pretrained`` and ``sentence_transformers.SentenceTransformer`` both load
(:func:`bertsilicon.distill.export.save_student`); the checkpoints stay for resuming.

Train text: ``corpus("pydoc")`` + ``corpus("docstrings-train")`` (other modules' docstrings); evaluation:
``corpus("docstrings")``, held out (retrieval top-10 overlap with the teacher, kNN module accuracy).
"""
from __future__ import annotations

import argparse
import json
import sys


def _losses(text: str) -> dict:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, eq, weight = item.partition("=")
        try:
            out[name.strip()] = float(weight) if eq else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"--losses: {item!r} must be name or name=weight") from None
    if not out:
        raise argparse.ArgumentTypeError("--losses needs at least one loss")
    return out


def _layer_map(text: str):
    if "," in text or text.isdigit():
        return [int(x) for x in text.split(",") if x.strip()]
    return text


def register(subparsers) -> None:
    from .demo import add_arguments
    from .distiller import LOSS_NAMES
    from .layer_maps import LAYER_MAPS

    p = subparsers.add_parser("distill", help="distil a teacher into a student on real text (see --demo)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="run the measured demo (its options below)")
    p.add_argument("--teacher", "--model", dest="teacher", default="minilm-l6",
                   help="a student name (only minilm-l6 has real weights) or a Hugging Face / sentence-transformers "
                   "model directory")
    p.add_argument("--texts", default=None, help="train on your texts: .txt (a text a line), .jsonl / .csv / .parquet "
                   "(field 'text') (default: the built-in Python documentation)")
    p.add_argument("--student", default="bert-L3-H384",
                   help="bert-L{L}-H{H}[-A{A}][-F{F}], a published student, or name:key=value,...")
    p.add_argument("--from-design", default=None, help="a `bertsilicon design --json` file: the student is its "
                   "front's entry --pick (overrides --student)")
    p.add_argument("--pick", type=int, default=0, help="0-based entry of the --from-design front")
    p.add_argument("--losses", type=_losses, default={"sentence_mse": 1.0, "sentence_cosine": 1.0},
                   help=f"name[=weight],... from {', '.join(LOSS_NAMES)}")
    p.add_argument("--layer-map", type=_layer_map, default="uniform",
                   help=f"one of {', '.join(LAYER_MAPS)} or a comma-separated list of teacher layers")
    p.add_argument("--no-init", action="store_true", help="do not copy teacher layers into the student")
    p.add_argument("--freeze-embeddings", action="store_true", help="train the transformer layers only")
    p.add_argument("--student-dropout", type=float, default=None,
                   help="set every dropout of the student to this p (default: the student config's own)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the soft-target losses")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--checkpoint-dir", default=None, help="folder for resumable checkpoints (safetensors)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--resume", default=None, help="a checkpoint (.safetensors) to continue from")
    p.add_argument("--seed", type=int, default=0, help="seed of the student init and data order")
    p.add_argument("--json", default=None, help="write the history and final metrics here")
    add_arguments(p)  # --steps, --batch-size, --max-length, --lr, --threads, --eval-every, --out, ...
    p.set_defaults(func=main)


def main(args) -> int:
    if args.demo:
        from .demo import demo_from_args

        return demo_from_args(args)
    import torch
    from transformers import AutoModel

    import bertsilicon as bs

    from ..models.eval import knn_accuracy
    from .demo import embed, length_batches, metrics, train_texts
    from .distiller import DistillConfig, Distiller
    from .layer_maps import student_from_design, student_from_spec

    torch.set_num_threads(args.threads)
    from .. import sources

    source = sources.model_source(args.teacher, option="--teacher", fp32_weights=True)  # inputs first, then weights
    train = sources.read_texts(args.texts, limit=args.max_texts) if args.texts else train_texts(args.max_texts)
    teacher, tok = sources.load_model(source, "--teacher"), sources.load_tokenizer(source, "--teacher")
    if args.from_design:
        args.student = student_from_design(args.from_design, args.pick)
    student_cfg = student_from_spec(args.student, teacher.config)
    torch.manual_seed(args.seed)
    student = AutoModel.from_config(student_cfg, add_pooling_layer=False)
    evalset = bs.data.corpus("docstrings")
    if args.eval_texts:
        evalset = evalset.subset(args.eval_texts, seed=0)
    order, batches = length_batches(tok, evalset.texts, 64, 128)
    teacher_emb = embed(teacher, order, batches)
    print(f"teacher {args.teacher} ({teacher.config.num_hidden_layers} layers, kNN accuracy "
          f"{knn_accuracy(teacher_emb, evalset.labels):.4f}) -> student {args.student} "
          f"({student_cfg.num_hidden_layers} layers, H {student_cfg.hidden_size}, {student_cfg.num_attention_heads} heads,"
          f" FFN {student_cfg.intermediate_size}); losses {args.losses}", flush=True)
    cfg = DistillConfig(losses=args.losses, layer_map=args.layer_map, init_from_teacher=not args.no_init,
                        temperature=args.temperature, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                        max_length=args.max_length, precision=args.train_precision, seed=args.seed,
                        warmup_steps=args.warmup, eval_every=args.eval_every, checkpoint_dir=args.checkpoint_dir,
                        checkpoint_every=args.checkpoint_every, freeze_embeddings=args.freeze_embeddings,
                        student_dropout=args.student_dropout)
    d = Distiller(teacher, student, tok, cfg,
                  eval_fn=lambda m: metrics(m, order, batches, teacher_emb, evalset.labels))
    if d.layers:
        print(f"student layers learn from teacher layers {d.layers}"
              + (" (initialised from them)" if cfg.init_from_teacher else ""), flush=True)
    hist = d.fit(train, resume_from=args.resume)
    for e in hist["eval"]:
        print(f"step {e['step']:>6}: top-10 overlap with teacher {e['top10_overlap']:.4f}, "
              f"kNN module accuracy {e['knn_accuracy']:.4f}")
    if args.checkpoint_dir:
        print(f"checkpoint: {args.checkpoint_dir}/step-{d.step:06d}.safetensors")
    out = args.out or (f"{args.checkpoint_dir}/student" if args.checkpoint_dir else None)
    if out:
        from .export import save_student

        save_student(student.eval(), tok, out, embedding=True, max_seq_length=args.max_length)
        print(f"student: {out} (transformers.AutoModel / sentence_transformers.SentenceTransformer)")
    else:
        print("the student was not written: give --out FOLDER (or --checkpoint-dir)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"}, "history": hist}, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="bertsilicon")
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["distill", *sys.argv[1:]])
    sys.exit(a.func(a))
