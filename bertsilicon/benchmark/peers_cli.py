"""``bertsilicon peers``: bertsilicon int8 against the strongest CPU engines' int8, with every column users compare.

One run of the end-to-end benchmark (``runner.run_bench``: real text, padding longest, interleaved rounds,
threads fixed) on MiniLM-L6 at batch 1, 8 and 32, over the int8 providers and the fp32 references, with the
columns of ``columns`` (task quality, batch invariance, cold start and peak RSS). The targets: bertsilicon int8
latency <= 1.0x the fastest peer int8's at batch 1 and <= 0.8x at batch 8 and 32, and bertsilicon int8's quality
ratio (score / HF fp32 score) >= 99.9%. Writes ``peers[-quick][-TAG].{json,md}`` and the latency /
speed-up plots into ``--out``.
"""
from __future__ import annotations

import argparse
import sys

from .cli import _csv, _csv_ints, env_prefix
from .columns import COLUMNS

DEFAULT_OUT = "bertsilicon-results/peers"
OURS = "bertsilicon int8"
# The int8 peers and the fp32 references of the table.
PROVIDERS = ("torch-sdpa", "onnxruntime", "onnxruntime-bert", "onnxruntime-qdq", "openvino-nncf",
             "openvino-nncf-static", "ctranslate2", "ctranslate2-int8f32", "llama.cpp", "bertsilicon")
PRECISIONS = ("fp32", "int8")
LATENCY_LIMITS = {1: 1.0, 8: 0.8, 32: 0.8}  # bertsilicon int8 / fastest peer int8, per batch
QUALITY_TARGET = 0.999


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a check of the whole command (18 min on a loaded 2-core "
                   "machine): batch 1,8, 5 rounds, 150 items per quality part, one cold-start process per provider")
    p.add_argument("--batch-size", "--batch", dest="batch", type=_csv_ints, help="batch sizes (default 1,8,32)")
    p.add_argument("--threads", type=int, default=2, help="threads of every engine")
    p.add_argument("--providers", type=_csv, default=list(PROVIDERS), help="provider names (fp32 and int8 rows)")
    p.add_argument("--columns", type=_csv, default=list(COLUMNS), help=f"any of {','.join(COLUMNS)}")
    p.add_argument("--cold-starts", type=int, help="fresh processes per provider (default 3; quick 1)")
    p.add_argument("--repeats", type=int, help="timed rounds per provider (default 10; quick 5)")
    p.add_argument("--note", default="", help="a remark stored with the results, e.g. 'shared machine'")
    p.add_argument("--tag", default="", help="appended to the file names: peers[-quick]-TAG.*")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args):
    from .runner import BenchConfig

    kw = {"models": ["minilm-l6"], "seqs": [128], "providers": args.providers, "precisions": list(PRECISIONS),
          "threads": args.threads, "columns": args.columns, "note": args.note, "tag": args.tag}
    for name, value in (("batches", args.batch), ("cold_starts", args.cold_starts), ("repeats", args.repeats)):
        if value is not None:
            kw[name] = value
    cfg = BenchConfig.quick_defaults(**kw) if args.quick else BenchConfig(**kw)
    return cfg.validate()


def peer_targets(result: dict) -> list[dict]:
    """Per batch: bertsilicon int8 latency / the fastest peer int8's (any other int8 row that ran), its limit,
    and bertsilicon int8's quality ratio against :data:`QUALITY_TARGET`."""
    out = []
    for batch in sorted({r["batch"] for r in result["rows"]}):
        rows = {f"{r['provider']} {r['precision']}": r for r in result["rows"] if r["batch"] == batch}
        ours = rows.get(OURS)
        peers = [r for k, r in rows.items() if r["precision"] == "int8" and k != OURS and r["latency_ms"]]
        entry = {"batch": batch, "limit": LATENCY_LIMITS.get(batch, 0.8), "peer": None, "ratio": None,
                 "quality_ratio": (ours or {}).get("quality_ratio"), "quality_target": QUALITY_TARGET}
        if ours and ours["latency_ms"] and peers:
            best = min(peers, key=lambda r: r["latency_ms"]["median"])
            entry.update(peer=f"{best['provider']} {best['precision']}", peer_quality_ratio=best.get("quality_ratio"),
                         ratio=ours["latency_ms"]["median"] / best["latency_ms"]["median"])
            entry["latency_verdict"] = "meets" if entry["ratio"] <= entry["limit"] else "misses"
        else:
            entry["latency_verdict"] = "n/a (bertsilicon int8 or every int8 peer did not run)"
        q = entry["quality_ratio"]
        entry["quality_verdict"] = "n/a" if q is None else ("meets" if q >= QUALITY_TARGET else "misses")
        out.append(entry)
    return out


def run(args, parser=None) -> int:
    from .peers_report import markdown, write
    from .runner import run_bench

    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        if parser is None:
            raise
        parser.error(str(exc))
    result = run_bench(cfg, quiet=args.quiet)
    result["kind"] = "bertsilicon-peers"
    result["peer_targets"] = peer_targets(result)
    result["argv"] = command_line(args)
    result["env"] = env_prefix()
    paths = write(result, args.out, plot=not args.no_plots)
    print(markdown(result).split("## Method")[0].rstrip())
    print("\nwrote " + ", ".join(str(p) for p in [paths["json"], paths["md"], *paths["png"]]))
    return 0


def command_line(args) -> str:
    import shlex

    parts = (["--quick"] if args.quick else []) + ["--threads", str(args.threads), "--providers",
                                                   ",".join(args.providers), "--columns", ",".join(args.columns)]
    for flag, value in (("--batch", args.batch), ("--cold-starts", args.cold_starts), ("--repeats", args.repeats)):
        if value is not None:
            parts += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    for flag, value in (("--note", args.note), ("--tag", args.tag)):
        if value:
            parts += [flag, value]
    return " ".join(shlex.quote(x) for x in parts + ["--out", args.out])


def register(subparsers) -> None:
    p = subparsers.add_parser("peers", help="bertsilicon int8 vs CTranslate2, OpenVINO/NNCF, ONNX Runtime, llama.cpp: "
                              "latency, task quality, batch invariance, cold start, RSS", description=__doc__)
    add_arguments(p)
    p.set_defaults(func=lambda args: run(args, p))


def main(argv=None) -> int:
    """``python bench/e2e/peers.py ...`` == ``bertsilicon peers ...``."""
    p = argparse.ArgumentParser(prog="bench/e2e/peers.py", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(sys.argv[1:] if argv is None else list(argv)), p)
