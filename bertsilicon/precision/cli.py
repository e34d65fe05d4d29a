"""``bertsilicon precision``: the precision experiment of :mod:`bertsilicon.precision.experiment`."""
from __future__ import annotations

import sys


def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def run(args) -> int:
    import torch

    from .experiment import markdown, run_experiment, write_report

    if args.threads:
        torch.set_num_threads(args.threads)

    def write_partial(partial: dict) -> None:
        paths = write_report(partial, args.out, args.stem, plot=False)
        done = partial["meta"]["partial"]
        print(f"partial results ({done['done']} of {done['total']} configurations): {paths['md']}", file=sys.stderr)

    result = run_experiment(args.model, _csv(args.formats), _csv(args.rounding), _csv(args.where),
                            texts=args.sentences, texts_file=args.texts, max_length=args.max_length,
                            batch_size=args.batch_size, seeds=args.seeds, n_boot=args.bootstrap,
                            fp8_scaling=not args.no_fp8_scaling, on_config=write_partial)
    paths = write_report(result, args.out, args.stem)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("precision", help="a model in number formats x rounding x place: drift vs fp32 on real text",
                              description="Run a model in number formats x rounding modes x places (weights, "
                              "activations, GEMM outputs) on real text; per-layer SQNR, pooled-embedding cosine, top-10 "
                              "retrieval overlap and kNN module accuracy vs fp32, with bootstrap intervals and seed bands. "
                              "Writes JSON + Markdown + a PNG heat map.")
    p.add_argument("--model", default="minilm-l6", help="a student name (minilm-l6 has real weights) or a Hugging "
                   "Face / sentence-transformers model directory")
    p.add_argument("--formats", default="fp32,bf16,fp16,e4m3,int8",
                   help="comma list: fp32 bf16 fp16 e4m3 e5m2 int8 int4, custom e{E}m{M}[fn][-nosub], fixed q{I}.{F}")
    p.add_argument("--rounding", default="nearest,stochastic", help="comma list: nearest, stochastic, toward_zero")
    p.add_argument("--where", default="weights,activations,accumulation",
                   help="comma list of places (weights, activations, accumulation; combine with '+')")
    p.add_argument("--texts", default=None, help="your texts instead of the labelled docstrings: .txt (a text a "
                   "line), .jsonl / .csv / .parquet (field 'text'); no kNN accuracy then (no labels)")
    p.add_argument("--sentences", type=int, default=256, help="how many texts (0 = all)")
    p.add_argument("--seq-len", "--max-length", dest="max_length", type=int, default=64,
                   help="tokens per text at most")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch")
    p.add_argument("--seeds", type=int, default=2, help="stochastic-rounding seeds per configuration")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--no-fp8-scaling", action="store_true", help="cast to fp8 without the per-tensor scale")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="bertsilicon-results/precision", help="folder for the JSON, Markdown and PNG")
    p.add_argument("--stem", default="minilm_precision", help="file name stem of the report")
    p.set_defaults(func=run)
