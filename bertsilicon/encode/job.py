"""One ``encode`` job: check everything, then embed the pending shards, locally or on Ray, and summarize.

:func:`prepare` reads and checks the input and opens (or resumes) the output before any model loads, so bad
input or a wrong output path is an error before any work. :func:`run` embeds the pending shards in this process
(with a progress bar: texts/s and ETA) and ends with one summary line; ``bertsilicon.encode.ray_job.run`` does the
same shards on a Ray cluster.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .batching import DEFAULT_MAX_BATCH_TOKENS, Counts, check_budget, encode_texts
from .embedder import EncoderConfig
from .inputs import DEFAULT_FIELD, Rows, fingerprint, read_rows, require_pyarrow
from .shards import DEFAULT_SHARD_ROWS, ShardStore, output_format


@dataclass
class Job:
    """What to encode, with what, where to. Only ``max_batch_tokens`` and ``threads`` may change between a run
    and its resumption: they change no bit of the output."""

    input: Path
    output: Path
    encoder: EncoderConfig
    field: str = DEFAULT_FIELD
    id_field: Optional[str] = None
    skip_bad: bool = False
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    shard_rows: int = DEFAULT_SHARD_ROWS
    threads: Optional[int] = None

    def identity(self) -> dict:
        """What decides the output; a resumed run must match it (the manifest's ``job``)."""
        return {"input": str(Path(self.input).resolve()), "input_sha256": fingerprint(Path(self.input)),
                "field": self.field, "id_field": self.id_field, "skip_bad": self.skip_bad,
                "encoder": self.encoder.to_dict(), "format": output_format(self.output)}


@dataclass
class Summary:
    """The closing line: every text in the output, tokens run, truncated / chunked / skipped texts, this run's
    seconds and texts/s (texts embedded in this run, a resumed run's earlier shards not counted)."""

    output: Path
    counts: Counts
    skipped: int
    seconds: float
    texts_this_run: int
    resumed_from: int = 0
    skipped_rows: list = field(default_factory=list)

    @property
    def texts_per_s(self) -> float:
        return self.texts_this_run / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        c = self.counts
        resumed = f", resumed after {self.resumed_from}" if self.resumed_from else ""
        return (f"encoded {c.texts} texts ({c.tokens} tokens, {c.truncated} truncated, {c.chunked} chunked, "
                f"{self.skipped} skipped{resumed}) in {self.seconds:.1f} s: {self.texts_per_s:.1f} texts/s -> "
                f"{self.output}")

    def to_dict(self) -> dict:
        return {"texts": self.counts.texts, "tokens": self.counts.tokens, "truncated": self.counts.truncated,
                "chunked": self.counts.chunked, "skipped": self.skipped, "skipped_rows": self.skipped_rows,
                "seconds": self.seconds, "texts_this_run": self.texts_this_run, "resumed_from": self.resumed_from}


def prepare(job: Job) -> tuple[Rows, ShardStore]:
    """The checked input rows and the opened output store (every check of input and output, no model yet)."""
    if output_format(job.output) == "parquet":
        require_pyarrow()
    check_budget(job.max_batch_tokens, job.encoder.max_length)
    rows = read_rows(job.input, job.field, job.id_field, job.skip_bad)
    store = ShardStore.open(job.output, job.identity(), len(rows), job.shard_rows)
    return rows, store


def shard_counts(counts: Counts) -> dict:
    return {"tokens": counts.tokens, "truncated": counts.truncated, "chunked": counts.chunked}


def finish(store: ShardStore, rows: Rows, resumed_from: int, texts_this_run: int, t0: float) -> Summary:
    """Mark the store complete and build the summary from every shard's counts (earlier runs' included)."""
    total = Counts(texts=store.done_rows())
    for entry in store.manifest["shards"].values():
        total.add(Counts(tokens=entry["tokens"], truncated=entry["truncated"], chunked=entry["chunked"]))
    summary = Summary(store.path, total, len(rows.skipped), time.perf_counter() - t0, texts_this_run, resumed_from,
                      [list(r) for r in rows.skipped])
    store.finish(summary.to_dict())
    return summary


def report(summary: Summary, rows: Rows, out=None) -> None:
    """Skipped rows (first few, with why), then the summary line (to ``out``, default standard error)."""
    out = out or sys.stderr
    for number, why in rows.skipped[:5]:
        print(f"skipped row {number}: {why}", file=out)
    if len(rows.skipped) > 5:
        print(f"... and {len(rows.skipped) - 5} more skipped rows (all listed in the manifest)", file=out)
    print(summary.line(), file=out)


def run(job: Job, progress: bool = True) -> Summary:
    """Embed every pending shard of ``job`` in this process; the output directory is complete on return."""
    from tqdm import tqdm

    from .embedder import Embedder, torch_threads

    t0 = time.perf_counter()
    rows, store = prepare(job)
    resumed_from = store.done_rows()
    with torch_threads(job.threads):
        embedder = Embedder(job.encoder)
        bar = tqdm(total=len(rows), initial=resumed_from, unit="text", desc="encode", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        with bar:
            for k in store.pending():
                start, stop = store.shard_range(k)
                vectors, counts = encode_texts(embedder, rows.texts[start:stop], job.max_batch_tokens,
                                               on_batch=bar.update)
                store.write(k, rows.ids[start:stop], vectors, shard_counts(counts))
    summary = finish(store, rows, resumed_from, len(rows) - resumed_from, t0)
    if progress:
        report(summary, rows)
    return summary
