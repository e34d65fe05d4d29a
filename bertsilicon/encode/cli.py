"""``bertsilicon encode``: embed a corpus file into numbered shards plus a manifest (resumable).

    bertsilicon encode passages.jsonl --field text --id-field id --precision int8 --out emb.parquet
    bertsilicon encode lines.txt --model path/to/sentence-transformers-dir --out emb.npy
    bertsilicon encode passages.parquet --field body --long chunk --out emb.parquet --ray        # local Ray
    bertsilicon encode passages.parquet --field body --out emb.parquet --ray HOST:6379           # a cluster

Run the same command again after an interruption: it continues after the last complete shard.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .batching import DEFAULT_MAX_BATCH_TOKENS
from .embedder import BUILTIN_MODEL, LONG_MODES, POOLINGS, PRECISIONS, resolve
from .inputs import DEFAULT_FIELD
from .shards import DEFAULT_SHARD_ROWS

LOCAL_RAY = "local"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The examples above as written, and every option's default."""


def register(subparsers) -> None:
    p = subparsers.add_parser("encode", help="embed a corpus (txt/jsonl/csv/parquet) into resumable shards",
                              description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("input", type=Path, help=".txt (a text a line), .jsonl, .csv or .parquet")
    p.add_argument("--out", "--output", "-o", dest="output", type=Path, required=True,
                   help="OUT.parquet (id + vector) or OUT.npy: a directory of shards + manifest.json")
    p.add_argument("--model", "-m", default=None,
                   help=f"'{BUILTIN_MODEL}' (built in), a Hugging Face / sentence-transformers directory, or a saved "
                        f"optimized bertsilicon model (default %(default)s: {BUILTIN_MODEL})")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="GEMM precision (default %(default)s: int8; a saved optimized model: its own)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="pooling of the token vectors (default %(default)s: the model's sentence-transformers "
                        "config, else mean)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="unit-length vectors (default %(default)s: the model's sentence-transformers config)")
    p.add_argument("--seq-len", "--max-length", dest="max_length", type=int, default=None,
                   help="tokens per text window (default %(default)s: the model's limit)")
    p.add_argument("--long", choices=LONG_MODES, default="truncate",
                   help="longer texts: truncate (counted), or chunk into overlapping windows, mean-pooled")
    p.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help="real tokens per forward (does not change any vector)")
    p.add_argument("--field", default=DEFAULT_FIELD, help="the text field / column (.jsonl, .csv, .parquet)")
    p.add_argument("--id-field", default=None,
                   help="an id field / column to keep (default %(default)s: the row number)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad rows, counting and listing them, not an error")
    p.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help="texts per output shard")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (local run), or threads per actor (--ray) (default %(default)s: torch's own; "
                        "sized to the cluster)")
    p.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                   help="run on Ray Data: a cluster's ADDRESS, or none to start a local Ray (default %(default)s: "
                        "run here)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar nor summary line")
    p.set_defaults(func=main)


def main(args) -> int:
    """Bad input, model or output raise a ValueError (InputError, ModelError, OutputError) before any work: the
    ``bertsilicon`` command prints it in one line and exits with status 2."""
    from .job import Job, run

    config = resolve(args.model, args.precision, args.pooling, args.normalize, args.max_length, args.long)
    job = Job(input=args.input, output=args.output, encoder=config, field=args.field, id_field=args.id_field,
              skip_bad=args.skip_bad, max_batch_tokens=args.max_batch_tokens, shard_rows=args.shard_rows,
              threads=args.threads)
    if args.ray is None:
        run(job, progress=not args.no_progress)
    else:
        from . import ray_job

        ray_job.run(job, address=None if args.ray == LOCAL_RAY else args.ray, progress=not args.no_progress)
    return 0
