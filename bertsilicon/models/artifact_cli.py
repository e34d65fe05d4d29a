"""``bertsilicon optimize MODEL_DIR --precision int8 --out DIR``: optimize a Hugging Face checkpoint once and write
the artifact :func:`bertsilicon.load` reads (:mod:`bertsilicon.models.artifact`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def register(subparsers) -> None:
    p = subparsers.add_parser("optimize", help="optimize a Hugging Face checkpoint and save the artifact "
                                               "(bertsilicon.load reads it, no calibration)")
    p.add_argument("model_dir", nargs="?", default=None,
                   help="a Hugging Face checkpoint directory (config.json + weights); default: the built-in MiniLM")
    p.add_argument("--model", dest="model_flag", default=None, help="the same as MODEL_DIR")
    p.add_argument("--precision", choices=PRECISIONS, default="int8", help="the GEMMs' precision")
    p.add_argument("--out", required=True, help="the artifact directory to write")
    p.add_argument("--calib", "--texts", dest="calib", default=None,
                   help="calibration texts: .txt (a text a line), .jsonl / .csv / .parquet (field 'text') "
                        "(default: the built-in Python-documentation corpus)")
    p.add_argument("--smooth", type=_smooth, default="auto",
                   help="int8 SmoothQuant alpha in [0, 1], 'none' for no migration, or 'auto' (0.5 for int8)")
    p.add_argument("--device", default="cpu", help="where to prepare it: cpu (default) or cuda")
    p.set_defaults(func=run)


def _smooth(text: str):
    """--smooth's value: 'auto', 'none' (None) or an alpha in [0, 1]."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        alpha = float(text)
    except ValueError:
        alpha = -1.0
    if not 0 <= alpha <= 1:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or an alpha in [0, 1], got {text!r}")
    return alpha


def run(args) -> int:
    import torch
    import transformers
    from tqdm import tqdm

    from ..sources import read_texts
    from .artifact import save
    from .optimize import optimize

    if args.model_dir and args.model_flag and args.model_dir != args.model_flag:
        raise ValueError(f"two models given: MODEL_DIR {args.model_dir} and --model {args.model_flag}")
    given = args.model_dir or args.model_flag
    if given is None:
        from .students import minilm_path

        given = minilm_path()
    model_dir = Path(given)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a Hugging Face checkpoint directory (no config.json)")
    calibration = read_texts(args.calib, option="--calib") if args.calib else None
    steps = tqdm(total=4, desc="bertsilicon optimize", file=sys.stderr, unit="step")
    steps.set_postfix_str("loading the checkpoint")
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        cls = getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel)
        model = cls.from_pretrained(model_dir, local_files_only=True).to(torch.device(args.device)).eval()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load {model_dir} as a Hugging Face model: {exc}") from exc
    tokenizer = None
    if (model_dir / "tokenizer_config.json").is_file() or (model_dir / "tokenizer.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    steps.update()
    steps.set_postfix_str(f"calibrating and preparing {args.precision}")
    optimize(model, args.precision, calibration=calibration, smooth=args.smooth, tokenizer=tokenizer)
    steps.update()
    steps.set_postfix_str(f"writing {args.out}")
    out = save(model, args.out, tokenizer=tokenizer)
    steps.update()
    steps.set_postfix_str("done")
    steps.update()
    steps.close()
    print(model.bertsilicon_report)
    print(f"\nwrote {out}: load it with bertsilicon.load({str(out)!r})")
    return 0
