"""Throughput of ``bertsilicon encode`` against its token budget (``--max-batch-tokens``): which default to ship.

    python bench/e2e/encode_budget.py --out bench/results/cpu            # ~3 min on 2 cores
    python bench/e2e/encode_budget.py --quick --out /tmp/budget          # 300 passages, 2 rounds: checks the script

The same real passages as ``bench/e2e/encode.py`` (a fixed shuffle of the built-in corpora), one model
(``--precision``, default int8) loaded once, then every budget once per round, rounds interleaved; texts/s and
tokens/s of the encode pipeline (tokenize, sort, padding-free forward, pool), medians over rounds. A larger budget
means larger GEMMs but a larger per-layer working set (qkv, context, FFN intermediate: ~11 KB per token at int8):
past the last-level cache it costs more than it saves. Writes OUT/encode-budget.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import passages  # noqa: E402

from bertsilicon.benchmark.machine import describe, load_average, machine_info  # noqa: E402
from bertsilicon.encode.batching import DEFAULT_MAX_BATCH_TOKENS, encode_texts  # noqa: E402
from bertsilicon.encode.embedder import Embedder, resolve  # noqa: E402

BUDGETS = (1024, 2048, 3072, 4096, 8192, 16384)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bertsilicon-results/encode", help="output folder (default: %(default)s)")
    p.add_argument("--passages", type=int, default=3000, help="passages per round (default: %(default)s)")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="token budgets (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--precision", default="int8", choices=("fp32", "bf16", "int8"), help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--note", default="", help="a note on the run (e.g. the machine's load) for the Markdown")
    p.add_argument("--quick", action="store_true", help="300 passages, 2 rounds")
    a = p.parse_args(argv)
    if a.quick:
        a.passages, a.rounds = 300, 2
    if min(a.budgets) < 1 or a.passages < 1 or a.rounds < 1:
        p.error("--budgets, --passages and --rounds must be positive")
    torch.set_num_threads(a.threads)
    info = machine_info(a.threads)
    info["load_average_start"] = load_average()
    texts = passages(a.passages)
    embedder = Embedder(resolve(None, a.precision))
    tokens = sum(len(w) for ws in embedder.windows(texts)[0] for w in ws)
    encode_texts(embedder, texts[:100], DEFAULT_MAX_BATCH_TOKENS)  # warm-up
    seconds = {b: [] for b in a.budgets}
    for r in range(a.rounds):
        for b in a.budgets:
            start = time.perf_counter()
            encode_texts(embedder, texts, b)
            seconds[b].append(time.perf_counter() - start)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{b}: {len(texts) / seconds[b][-1]:.0f} texts/s"
                                                        for b in a.budgets), flush=True)
    info["load_average_end"] = load_average()
    rows = [{"max_batch_tokens": b, "texts_per_s": len(texts) / statistics.median(s),
             "tokens_per_s": tokens / statistics.median(s), "seconds": s} for b, s in seconds.items()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode-budget.json").write_text(json.dumps({"machine": info, "precision": a.precision, "texts": len(texts),
                                                        "tokens": tokens, "rows": rows}, indent=1))
    best = max(r["texts_per_s"] for r in rows)
    lines = [f"# `bertsilicon encode` {a.precision}: throughput against the token budget", "",
             f"{len(texts)} real passages ({tokens} tokens), {a.threads} threads, medians of {a.rounds} interleaved "
             f"rounds. {a.note}".rstrip(), "", describe(info), "",
             "| max batch tokens | texts/s | tokens/s | of the best |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['max_batch_tokens']}{' (default)' if r['max_batch_tokens'] == DEFAULT_MAX_BATCH_TOKENS else ''} "
              f"| {r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['texts_per_s'] / best:.2f} |" for r in rows]
    lines += ["", f"Command: `python bench/e2e/encode_budget.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    (out / "encode-budget.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'encode-budget.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
