"""The ``bertsilicon`` command. ``demo`` lives here; the other subcommands are registered by their areas
(``profile``/``design``: profiler, ``bench``: benchmark, ``precision``, ``distill``)."""
from __future__ import annotations

import argparse
import copy
import importlib
import sys

# Areas that add subcommands: each module has ``register(subparsers)``.
_AREAS = ("bertsilicon.profiler.cli", "bertsilicon.benchmark.cli", "bertsilicon.precision.cli",
          "bertsilicon.distill.cli",
          "bertsilicon.distill.task_cli")


# ------------------------------------------------------------------------------------------------ #
# demo                                                                                               #
# ------------------------------------------------------------------------------------------------ #
def _providers(model):
    """(name, precision, build) triples; build() returns a model or raises NotImplementedError(reason)."""
    import torch

    def hf(dtype):
        return lambda: copy.deepcopy(model).to(dtype)

    def torch_int8():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

    def ours(precision):
        def build():
            try:
                from bertsilicon.models.optimize import optimize
            except ImportError as exc:
                raise NotImplementedError("bertsilicon.optimize is not built yet") from exc
            return optimize(copy.deepcopy(model), precision=precision)
        return build

    yield "HF torch SDPA", "fp32", hf(torch.float32)
    yield "HF torch SDPA", "bf16", hf(torch.bfloat16)
    yield "torch dynamic int8", "int8", torch_int8
    for p in ("fp32", "bf16", "fp16", "int8"):
        yield "bertsilicon", p, ours(p)


def demo(args) -> int:
    import torch
    from tqdm import tqdm

    from . import data, ops
    from .models.eval import embed_batches, time_batches
    from .models.students import load_student, load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer()
    model = load_student("minilm-l6")
    texts = data.corpus("pydoc").subset(args.sentences, seed=0).texts
    batches = [dict(tok(texts[i:i + args.batch], padding=True, truncation=True, max_length=args.seq_len,
                        return_tensors="pt")) for i in range(0, len(texts), args.batch)]
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"MiniLM-L6-H384 (all-MiniLM-L6-v2, real weights) on {len(texts)} paragraphs of the Python docs "
          f"({n_tokens} real tokens), batch {args.batch}, max length {args.seq_len}, {args.threads} threads")

    ref = embed_batches(model, batches)
    rows, kernels = [], {}
    base_ms = None
    for name, precision, build in tqdm(list(_providers(model)), desc="providers", file=sys.stderr):
        try:
            m = build()
        except NotImplementedError as exc:
            rows.append((name, precision, None, None, None, None, str(exc)))
            continue
        report = getattr(m, "bertsilicon_report", None)
        if report is not None and report.cpu_kernels:
            kernels[precision] = report.cpu_kernels
        emb = embed_batches(m, batches)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        ms = time_batches(m, batches, args.repeats)
        base_ms = base_ms or ms
        rows.append((name, precision, ms, base_ms / ms, float(cos.mean()), float(cos.min()), "ok"))

    head = f"{'provider':<20} {'precision':<9} {'ms/batch':>9} {'speed-up':>9} {'cos mean':>9} {'cos min':>9}  status"
    print("\n" + head + "\n" + "-" * len(head))
    for name, p, ms, su, cm, cmin, status in rows:
        if ms is None:
            print(f"{name:<20} {p:<9} {'-':>9} {'-':>9} {'-':>9} {'-':>9}  {status}")
        else:
            print(f"{name:<20} {p:<9} {ms:9.2f} {su:8.2f}x {cm:9.6f} {cmin:9.6f}  {status}")
    print("\nspeed-up: against HF torch SDPA fp32 (first row); cosine: mean-pooled embedding against HF fp32.")
    if kernels:
        print("\nbertsilicon's C++ kernels on this CPU (the optimize report's 'cpu kernels' line):")
        for precision, line in kernels.items():
            print(f"  {precision}: {line}")

    print("\nFused ops by backend on this machine (reference = plain torch; '-' = not built yet):")
    status = ops.backend_status()
    from .backends.registry import REGISTRY
    names = ("attention", "attention_varlen", "bias_gelu", "add_layernorm", "linear", "quantize", "int8_linear",
             "round_to")
    print(f"{'op':<17} " + " ".join(f"{b:<10}" for b in ops.BACKENDS))
    for op in names:
        cells = []
        for b in ops.BACKENDS:
            cells.append("yes" if status[b] is None and (op, b) in REGISTRY else "-")
        print(f"{op:<17} " + " ".join(f"{c:<10}" for c in cells))
    for b, reason in status.items():
        if reason:
            print(f"  {b}: unavailable ({reason})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertsilicon", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="MiniLM on real text: every precision and backend against HF fp32")
    d.add_argument("--sentences", type=int, default=64)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--seq-len", type=int, default=128)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--repeats", type=int, default=3)
    d.set_defaults(func=demo)
    for area in _AREAS:
        try:
            mod = importlib.import_module(area)
        except ModuleNotFoundError as exc:
            if exc.name and area.startswith(exc.name):
                continue  # that area is not built yet
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
