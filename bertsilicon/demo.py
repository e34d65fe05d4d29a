"""``bertsilicon demo`` (what ``make demo`` runs): a model on real text in every precision, against Hugging Face.

Providers: HF torch SDPA fp32 (the reference and the speed baseline), HF torch bf16, torch dynamic int8, and
``bertsilicon.optimize`` in fp32 / bf16 / fp16 / int8. Every provider gets the same tokenized batches. Timing is
interleaved: each round runs every provider once over all batches, in a rotated order, so a busy moment of the
machine lands on all providers alike; the table gives the median ms per batch and the spread (min-max) over rounds.
A provider that only emulates its precision on this CPU (torch bf16 without AVX512_BF16: several seconds a batch) is
listed as skipped unless ``--all``. Accuracy: mean-pooled embedding cosine against HF fp32.
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

OPS = ("attention", "attention_varlen", "bias_gelu", "add_layernorm", "linear", "quantize", "int8_linear", "round_to")


@dataclass
class Row:
    provider: str
    precision: str
    status: str = "ok"                 # "ok" | "skipped: why" | "failed: why"
    ms: list = field(default_factory=list)   # ms per batch, one value per round
    cos_mean: Optional[float] = None
    cos_min: Optional[float] = None
    kernels: str = ""                  # bertsilicon rows: the optimize report's "cpu kernels" line

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.ms) if self.ms else None


def providers(model, all_providers: bool) -> list[tuple[str, str, Callable, Optional[str]]]:
    """``(provider, precision, build, skip_reason)``; ``build()`` returns a ready model."""
    from .backends import routing

    def hf(dtype):
        return lambda: copy.deepcopy(model).to(dtype)

    def torch_int8():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

    def ours(precision):
        def build():
            from .models.optimize import optimize

            return optimize(copy.deepcopy(model), precision=precision)
        return build

    emulated = None if routing.native_bf16_gemm(torch.device("cpu"), None) or all_providers else \
        "bf16 is emulated by torch on this CPU (no AVX512_BF16): seconds a batch; --all runs it"
    return [("HF torch SDPA", "fp32", hf(torch.float32), None),
            ("HF torch SDPA", "bf16", hf(torch.bfloat16), emulated),
            ("torch dynamic int8", "int8", torch_int8, None),
            *[("bertsilicon", p, ours(p), None) for p in ("fp32", "bf16", "fp16", "int8")]]


def _run_all(m, batches) -> None:
    for b in batches:
        m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])


def run(model, tokenizer, texts: list[str], *, batch_size: int, seq_len: int, rounds: int, all_providers: bool,
        progress=None) -> tuple[list[Row], dict]:
    """Build every provider, check its embeddings against HF fp32, then time them in ``rounds`` interleaved rounds."""
    from .models.eval import embed_batches

    batches = [dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=seq_len,
                              return_tensors="pt")) for i in range(0, len(texts), batch_size)]
    info = {"texts": len(texts), "batches": len(batches), "batch_size": batch_size, "seq_len": seq_len,
            "real_tokens": sum(int(b["attention_mask"].sum()) for b in batches), "rounds": rounds,
            "threads": torch.get_num_threads()}
    with torch.no_grad():  # not inference_mode: optimize prepares buffers a later forward may update in place
        ref = embed_batches(model, batches)
        rows, live = [], {}
        for name, precision, build, skip in providers(model, all_providers):
            row = Row(name, precision)
            rows.append(row)
            if skip:
                row.status = f"skipped: {skip}"
                continue
            try:
                m = build()
                emb = embed_batches(m, batches)
            except Exception as exc:  # noqa: BLE001 - a provider that fails is a row that says why
                row.status = f"failed: {type(exc).__name__}: {exc}"
                continue
            cos = torch.nn.functional.cosine_similarity(emb.float(), ref, dim=-1)
            row.cos_mean, row.cos_min = float(cos.mean()), float(cos.min())
            report = getattr(m, "bertsilicon_report", None)
            row.kernels = getattr(report, "cpu_kernels", "") or ""
            _run_all(m, batches[:1])  # warm-up
            live[len(rows) - 1] = m
            if progress is not None:
                progress.update(1)
        order = list(live)
        for r in range(rounds):
            for i in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                _run_all(live[i], batches)
                rows[i].ms.append((time.perf_counter() - t0) * 1e3 / len(batches))
            if progress is not None:
                progress.update(1)
    return rows, info


def backend_table() -> list[str]:
    """One line per op: which backends serve it here; then what each unavailable backend lacks."""
    from . import ops
    from .backends.registry import BACKENDS, REGISTRY

    status = ops.backend_status()
    notes = {}
    if status.get("triton") is None and not torch.cuda.is_available():
        notes["triton"] = "interpreter only, no GPU"
    lines = [f"{'op':<17} " + " ".join(f"{b:<10}" for b in BACKENDS)]
    for op in OPS:
        cells = ["yes" if status[b] is None and (op, b) in REGISTRY else "-" for b in BACKENDS]
        if notes.get("triton") and cells[BACKENDS.index("triton")] == "yes":
            cells[BACKENDS.index("triton")] = "interp."
        lines.append(f"{op:<17} " + " ".join(f"{c:<10}" for c in cells))
    for b in BACKENDS:
        if status[b] is not None:
            lines.append(f"  {b}: unavailable ({status[b]})")
        elif b in notes:
            lines.append(f"  {b}: {notes[b]}")
    return lines


def table(rows: list[Row]) -> list[str]:
    base = rows[0].median_ms
    head = (f"{'provider':<20} {'precision':<9} {'ms/batch':>9} {'spread':>15} {'speed-up':>9} {'cos mean':>9} "
            f"{'cos min':>9}  status")
    out = [head, "-" * len(head)]
    for r in rows:
        if not r.ms:
            out.append(f"{r.provider:<20} {r.precision:<9} {'-':>9} {'-':>15} {'-':>9} {'-':>9} {'-':>9}  {r.status}")
            continue
        spread = f"{min(r.ms):.1f}-{max(r.ms):.1f}"
        out.append(f"{r.provider:<20} {r.precision:<9} {r.median_ms:9.2f} {spread:>15} {base / r.median_ms:8.2f}x "
                   f"{r.cos_mean:9.6f} {r.cos_min:9.6f}  {r.status}")
    return out


def main(args) -> int:
    from tqdm import tqdm

    from . import data, sources

    for name in ("sentences", "batch_size", "seq_len", "threads", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.texts:  # inputs are checked before any model is loaded
        texts, source = sources.read_texts(args.texts, limit=args.sentences), args.texts
    else:
        texts, source = data.corpus("pydoc").subset(args.sentences, seed=0).texts, "paragraphs of the Python docs"
    model, tokenizer, _ = sources.resolve_model(args.model, fp32_weights=True)
    what = "MiniLM-L6-H384 (all-MiniLM-L6-v2)" if args.model is None else args.model
    print(f"{what} on {len(texts)} {source}, batch {args.batch_size}, max length {args.seq_len}, "
          f"{args.threads} threads, {args.rounds} interleaved rounds", flush=True)
    with tqdm(total=7 + args.rounds, desc="demo (build, check, time)", file=sys.stderr) as bar:
        rows, info = run(model, tokenizer, texts, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds,
                         all_providers=args.all, progress=bar)
    print(f"\n{info['real_tokens']} real tokens in {info['batches']} batches")
    lines = table(rows)
    lines += ["", "ms/batch: median over the rounds; spread: min-max; speed-up: against HF torch SDPA fp32 (first row);",
              "cosine: mean-pooled embedding against HF fp32."]
    kernels = [(r.precision, r.kernels) for r in rows if r.kernels]
    if kernels:
        lines += ["", "bertsilicon's C++ kernels on this CPU (the optimize report's 'cpu kernels' line):"]
        lines += [f"  {p}: {k}" for p, k in kernels]
    lines += ["", "Fused ops by backend here (reference = plain torch; '-' = no kernel):", *backend_table()]
    print("\n".join(lines))
    if args.out:
        from .benchmark.machine import machine_info

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo.json").write_text(json.dumps({"machine": machine_info(), "run": info,
                                                   "rows": [asdict(r) for r in rows]}, indent=1))
        (out / "demo.md").write_text("```\n" + "\n".join(lines) + "\n```\n")
        print(f"\nwrote {out / 'demo.json'} and {out / 'demo.md'}")
    return 0


def register(sub) -> None:
    d = sub.add_parser("demo", help="a model on real text: every precision against Hugging Face fp32")
    d.add_argument("--model", default=None, help="a Hugging Face / sentence-transformers model directory or a "
                   "student name (default: the built-in all-MiniLM-L6-v2)")
    d.add_argument("--texts", default=None, help="your texts: .txt (a text a line), .jsonl / .csv / .parquet "
                   "(field 'text') (default: Python documentation)")
    d.add_argument("--sentences", type=int, default=32, help="how many texts")
    d.add_argument("--batch-size", type=int, default=8, help="texts per batch")
    d.add_argument("--seq-len", type=int, default=128, help="tokens per text at most (longer ones are truncated)")
    d.add_argument("--threads", type=int, default=2, help="torch / kernel threads")
    d.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    d.add_argument("--all", action="store_true", help="also run providers this CPU only emulates (slow)")
    d.add_argument("--out", default=None, help="also write demo.json and demo.md into this folder")
    d.set_defaults(func=main)
