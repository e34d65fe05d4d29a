"""``bertsilicon profile`` and ``bertsilicon design``.

    bertsilicon profile minilm-l6 --hardware t4 --precision int8 --seq-len 128 --json out.json
    bertsilicon profile --calibrate                 # measure this CPU -> hardware "local" (20-60 s)
    bertsilicon profile minilm-l6 --hardware local --precision int8 --optimized --measure
    bertsilicon profile --list-hardware
    bertsilicon design --hardware t4 --precision int8 --latency-budget 2 --plot front.png
"""
from __future__ import annotations


def _ints(s: str):
    try:
        return tuple(int(x) for x in s.split(",") if x)
    except ValueError as exc:
        raise SystemExit(f"error: expected comma-separated integers, got {s!r}") from exc


def _floats(s: str):
    try:
        return tuple(float(x) for x in s.split(",") if x)
    except ValueError as exc:
        raise SystemExit(f"error: expected comma-separated numbers, got {s!r}") from exc


def _config(model: str):
    """A student name, or the config of a model directory (:func:`bertsilicon.sources.model_source`)."""
    from .. import sources

    source = sources.model_source(model)
    if source.path is None:
        return source.spec
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(source.path), local_files_only=True)


def _optimized(model: str, precision: str):
    """``bertsilicon.optimize`` of a student (its weights: real where shipped) or of a model directory; a saved
    optimized model as it was saved (its own precision)."""
    from .. import sources
    from ..models.optimize import optimize

    source = sources.model_source(model)
    loaded = sources.load_model(source)
    return loaded if source.artifact else optimize(loaded, precision)


def run_profile(args) -> int:
    from . import calibration as cal
    from .core import profile
    from .hardware import hardware_table_markdown

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.list_hardware:
        print(hardware_table_markdown())
        return 0
    if args.calibrate:
        rec = cal.calibrate(quick=args.quick)
        print(f"calibrated {rec['cpu']} ({rec['threads']} threads) -> {cal.calibration_path()}")
        for p, curve in rec["gemm_curve"].items():
            print(f"  {p:5s} GEMM: {min(r for _, r in curve) / 1e9:8.1f} .. {max(r for _, r in curve) / 1e9:8.1f} GFLOP/s")
        print(f"  memory bandwidth {rec['bandwidth'] / 1e9:.1f} GB/s, per-op overhead "
              f"{rec['launch_overhead_s'] * 1e6:.1f} us")
        if not args.model:
            return 0
    if not args.model:
        raise ValueError("give a model (a student name or a model directory), --calibrate or --list-hardware")
    subject = _optimized(args.model, args.precision) if args.optimized else _config(args.model)
    report = profile(subject, batch_size=args.batch_size, seq_len=args.seq_len,
                     precision=args.precision, hardware=args.hardware, measure=args.measure,
                     repeats=args.repeats, attn_implementation=args.attn_implementation)
    print(report.to_markdown(per_op=args.per_op))
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        report.to_markdown(args.markdown)
        print(f"wrote {args.markdown}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_design(args) -> int:
    from . import design

    kw = {}
    for name in ("layers", "hidden", "heads"):
        if getattr(args, name):
            kw[name] = _ints(getattr(args, name))
    if args.ffn_ratios:
        kw["ffn_ratios"] = _floats(args.ffn_ratios)
    res = design.explore(hardware=args.hardware, seq_len=args.seq_len, latency_budget=args.latency_budget,
                         energy_budget=args.energy_budget, batch_size=args.batch_size, precision=args.precision,
                         fused=args.fused, max_aspect=args.max_aspect or None, **kw)
    print(res.to_markdown())
    for flag, fn in ((args.json, res.to_json), (args.markdown, res.to_markdown), (args.plot, res.plot)):
        if flag:
            fn(flag)
            print(f"wrote {flag}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="FLOPs, bytes, roofline latency and energy per op per layer",
                              description=__doc__)
    p.add_argument("model", nargs="?", help="a student name (bertsilicon.STUDENTS), a Hugging Face / "
                   "sentence-transformers directory, or a saved optimized model (with --optimized)")
    p.add_argument("--hardware", default="h100", help="device name (see --list-hardware) or 'local'")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | int8")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per batch")
    p.add_argument("--attn-implementation", default=None,
                   help="eager | sdpa (default: sdpa, HF's default): kernels and bytes of attention")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--markdown", help="write the report as Markdown")
    p.add_argument("--plot", help="write the roofline + per-layer PNG")
    p.add_argument("--per-op", action="store_true", help="print the per-op table too")
    p.add_argument("--measure", action="store_true", help="time each layer here and compare with the prediction")
    p.add_argument("--repeats", type=int, default=5, help="with --measure: timed repeats per layer")
    p.add_argument("--calibrate", action="store_true", help="measure this CPU (GEMM rates, bandwidth) for 'local'")
    p.add_argument("--optimized", action="store_true",
                   help="profile the model as bertsilicon.optimize(model, --precision) runs it (loads its weights; "
                        "with --hardware local priced on the measured rates of bertsilicon's kernels)")
    p.add_argument("--quick", action="store_true",
                   help="with --calibrate: small shapes, short timings, a few seconds (for tests: noisy curves "
                        "that stop at small GEMMs); the default takes 20-60 s on 2 cores")
    p.add_argument("--threads", type=int, default=0, help="torch threads (calibration is per thread count)")
    p.add_argument("--list-hardware", action="store_true", help="print the hardware table with sources")
    p.set_defaults(func=run_profile)

    from .design import MAX_ASPECT

    d = subparsers.add_parser("design", help="sweep student shapes; Pareto front of capacity vs latency/energy")
    d.add_argument("--hardware", default="h100", help="device name (profile --list-hardware) or 'local'")
    d.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | int8")
    d.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    d.add_argument("--batch-size", type=int, default=1, help="sequences per batch")
    d.add_argument("--latency-budget", type=float, help="milliseconds per batch")
    d.add_argument("--energy-budget", type=float, help="millijoules per batch")
    d.add_argument("--layers", help="comma-separated, e.g. 2,4,6")
    d.add_argument("--hidden", help="comma-separated, e.g. 256,384,512")
    d.add_argument("--heads", help="comma-separated, e.g. 4,8,12")
    d.add_argument("--ffn-ratios", help="FFN width / hidden, comma-separated, e.g. 2,4")
    d.add_argument("--fused", action="store_true", help="price the fused kernels of bertsilicon.optimize")
    d.add_argument("--max-aspect", type=float, default=MAX_ASPECT, help="the front keeps shapes with hidden / layers at "
                   "most this (0: no limit); shallower-for-their-width shapes are flagged")
    d.add_argument("--json", help="write the Pareto front as JSON")
    d.add_argument("--markdown", help="write the Pareto front as Markdown")
    d.add_argument("--plot", help="write the Pareto front as a PNG")
    d.set_defaults(func=run_design)
