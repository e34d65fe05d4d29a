"""``bertsilicon bench``: the end-to-end benchmark (also ``python bench/e2e/cpu.py``)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from .catalog import PROVIDER_NAMES
from .providers import PRECISIONS
from .runner import DEFAULT_MODELS, PADDINGS

DEFAULT_OUT = "bertsilicon-results/bench"  # a new folder under the current one (the recorded runs: make bench)


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _csv_ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="< 5 minutes on 2 cores: minilm-l6, batch 1,8, 5 rounds, 16 accuracy texts")
    p.add_argument("--model", "--models", dest="models", type=_csv,
                   help=f"comma-separated students or model directories (Hugging Face / sentence-transformers) "
                   f"(default {','.join(DEFAULT_MODELS)}; any name of bertsilicon.STUDENTS)")
    p.add_argument("--batch-size", "--batch", dest="batch", type=_csv_ints,
                   help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--seq-len", "--seq", dest="seq", type=_csv_ints, help="comma-separated max lengths (default 128)")
    p.add_argument("--providers", type=_csv, help=f"comma-separated, any of {','.join(PROVIDER_NAMES)} (default "
                   "all; torch-sdpa fp32, the baseline, is always run)")
    p.add_argument("--precisions", type=_csv, help=f"comma-separated, any of {','.join(PRECISIONS)} (default all)")
    p.add_argument("--threads", type=int, help="threads for torch and ONNX Runtime (default: usable cores)")
    p.add_argument("--repeats", type=int, help="timed rounds per provider (default 10; quick 5)")
    p.add_argument("--warmup", type=int, help="untimed calls per provider before timing (default 2; quick 1)")
    p.add_argument("--accuracy-texts", type=int, help="texts for the cosine check (default 64; quick 16)")
    p.add_argument("--corpus", default="pydoc", help="real-text corpus: pydoc (paragraphs), pydoc-passages (~550-token passages, for --seq 256,512) or docstrings (default pydoc)")
    p.add_argument("--texts", default=None, help="your texts instead of the corpus: .txt (a text a line), .jsonl / "
                   ".csv / .parquet (field 'text'); the first batch-size texts are timed, the next ones checked")
    p.add_argument("--padding", default="longest", choices=PADDINGS,
                   help="pad to the longest text of the batch (default) or always to the max length")
    p.add_argument("--note", default="", help="a remark stored with the results, e.g. 'preliminary (shared machine)'")
    p.add_argument("--tag", default="", help="appended to the file names: e2e[-quick]-TAG.{json,md,png}")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args):
    """A validated :class:`BenchConfig` from parsed arguments (``ValueError`` lists the valid choices)."""
    from .runner import BenchConfig

    kw = {"models": args.models, "batches": args.batch, "seqs": args.seq, "providers": args.providers,
          "precisions": args.precisions, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
          "accuracy_texts": args.accuracy_texts, "corpus": args.corpus, "texts_file": args.texts,
          "padding": args.padding, "note": args.note, "tag": args.tag}
    kw = {k: v for k, v in kw.items() if v is not None}
    cfg = BenchConfig.quick_defaults(**kw) if args.quick else BenchConfig(**kw)
    return cfg.validate()


# Environment variables that change which kernels run (so the results): repeated in front of the command.
KERNEL_ENV = ("BERTSILICON_HIDE_CPU_FEATURES", "BERTSILICON_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
              "CT2_FORCE_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "TRITON_INTERPRET")


def env_prefix() -> str:
    """``NAME=value `` for each :data:`KERNEL_ENV` variable set now (empty when none is)."""
    return "".join(f"{k}={shlex.quote(os.environ[k])} " for k in KERNEL_ENV if os.environ.get(k))


def command_line(cfg, out: str) -> str:
    """The explicit arguments that repeat a run (everything the results depend on)."""
    parts = ["--quick"] if cfg.quick else []
    parts += ["--models", ",".join(cfg.models), "--batch", ",".join(map(str, cfg.batches)),
              "--seq", ",".join(map(str, cfg.seqs))]
    if cfg.providers:
        parts += ["--providers", ",".join(cfg.providers)]
    if cfg.precisions:
        parts += ["--precisions", ",".join(cfg.precisions)]
    parts += ["--threads", str(cfg.threads), "--repeats", str(cfg.repeats), "--warmup", str(cfg.warmup),
              "--accuracy-texts", str(cfg.accuracy_texts), "--corpus", cfg.corpus, "--padding", cfg.padding]
    if cfg.texts_file:
        parts += ["--texts", cfg.texts_file]
    if cfg.note:
        parts += ["--note", cfg.note]
    if cfg.tag:
        parts += ["--tag", cfg.tag]
    return " ".join(shlex.quote(x) for x in parts + ["--out", out])


def bench(args, parser=None, after_config=None) -> int:
    """Run, writing the JSON and Markdown after every configuration (a stopped run keeps what it measured) and
    everything at the end. ``after_config(paths, partial_result)`` is called after each partial write."""
    from .report import markdown, write_results
    from .runner import run_bench

    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        if parser is None:
            raise
        parser.error(str(exc))  # exits with status 2 and the message

    def provenance(result):
        result["argv"] = command_line(cfg, args.out)
        result["env"] = env_prefix()
        return result

    def write_partial(result):
        paths = write_results(provenance(result), args.out, plot=False)
        print(f"\npartial results ({result['partial']['done']} of {result['partial']['total']} configurations): "
              f"{paths['md']}", file=sys.stderr)
        if after_config is not None:
            after_config(paths, result)

    result = provenance(run_bench(cfg, quiet=args.quiet, on_config=write_partial))
    paths = write_results(result, args.out, plot=not args.no_plots)
    md = markdown(result)
    print(md.split("## Method")[0].rstrip())
    print(f"\nwrote {paths['json']}, {paths['md']}" + "".join(f", {p}" for p in paths["png"]))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="end-to-end latency/throughput/accuracy vs torch, torch.compile, "
                              "ONNX Runtime", description=__doc__)
    add_arguments(p)
    p.set_defaults(func=bench)  # a mistake raises ValueError: the bertsilicon command prints it in one line


def build_parser(prog: str = "bench/e2e/cpu.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_arguments(p)
    return p


def main(argv=None) -> int:
    """``python bench/e2e/cpu.py ...`` == ``bertsilicon bench ...``."""
    p = build_parser()
    return bench(p.parse_args(sys.argv[1:] if argv is None else list(argv)), p)
