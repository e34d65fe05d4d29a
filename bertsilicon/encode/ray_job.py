"""The ``encode`` job on Ray Data (``bertsilicon encode ... --ray [ADDRESS]``; ``pip install bertsilicon[ray]``).

The driver reads and checks the input and opens the output exactly as a local run does (:func:`job.prepare`),
then builds a dataset of the pending shards (one row per shard: its number and its texts) and maps it with
``map_batches`` over :class:`ShardEncoder`, a callable class whose actors each load the model once and set
their own torch thread count; actors x threads are sized to the cluster's CPUs. The driver consumes the results
as they stream in and writes each shard with the same store (atomic shards + manifest), so the output is the
local run's, bit for bit, and a killed driver resumes like a local run. A crashed actor is restarted and its
shard retried (Ray Data's actor pools default to ``max_restarts=-1``, ``max_task_retries=-1``); a shard arriving
twice is an error, never a duplicate.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from .batching import Counts
from .embedder import EncoderConfig
from .job import Job, Summary, finish, prepare, report, shard_counts

MAX_THREADS_PER_ACTOR = 4


class ShardEncoder:
    """A Ray Data actor: loads the model once, then encodes whole shards (``batch_size=1``: one shard a call).

    In: a batch with columns ``shard`` (int) and ``texts`` (the shard's texts). Out: ``shard``, ``vectors``
    (float32 bytes), ``dim``, ``tokens``, ``truncated``, ``chunked``."""

    def __init__(self, encoder: dict, threads: int, max_batch_tokens: int):
        import torch

        from .embedder import Embedder

        torch.set_num_threads(threads)
        self.embedder = Embedder(EncoderConfig(**encoder))
        self.max_batch_tokens = max_batch_tokens

    def __call__(self, batch: dict) -> dict:
        from .batching import encode_texts

        out = {"shard": [], "vectors": [], "dim": [], "tokens": [], "truncated": [], "chunked": []}
        for shard, texts in zip(batch["shard"], batch["texts"]):
            vectors, counts = encode_texts(self.embedder, [str(t) for t in texts], self.max_batch_tokens)
            out["shard"].append(int(shard))
            out["vectors"].append(vectors.tobytes())
            out["dim"].append(vectors.shape[1])
            for key, value in shard_counts(counts).items():
                out[key].append(value)
        return {k: np.array(v, dtype=object if k == "vectors" else np.int64) for k, v in out.items()}


def actor_layout(cpus: int, threads: Optional[int] = None) -> tuple[int, int]:
    """``(actors, threads per actor)`` for a cluster of ``cpus`` CPUs: ``threads`` each if given, else half the
    CPUs up to MAX_THREADS_PER_ACTOR (2 CPUs: 2 actors x 1 thread; 16: 4 x 4)."""
    if threads is None:
        threads = max(1, min(MAX_THREADS_PER_ACTOR, cpus // 2))
    if threads > cpus:
        raise ValueError(f"threads={threads} per actor is more than the cluster's {cpus} CPUs")
    return max(1, cpus // threads), threads


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """``ray``, connected to ``address``, or to a new local Ray with ``num_cpus`` CPUs that listens on loopback
    only (single-node mode, no dashboard). An already initialized Ray is used as it is."""
    import sys

    local_only = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-node mode, every server on loopback
    if address is None and "ray" not in sys.modules:
        os.environ[local_only] = "0"
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data: the dataset API used by run)
    except ImportError:
        raise ValueError("--ray needs Ray Data: pip install 'bertsilicon[ray]'") from None
    if ray.is_initialized():
        return ray
    if address is not None:
        ray.init(address=address, log_to_driver=False)
    elif os.environ.get(local_only) != "0":
        raise ValueError(f"a local Ray must listen on loopback only: set {local_only}=0 before importing ray, or "
                         "start Ray yourself (ray.init) before running the job")
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def run(job: Job, address: Optional[str] = None, progress: bool = True, num_cpus: Optional[int] = None,
        actor_class=ShardEncoder) -> Summary:
    """Embed every pending shard of ``job`` on Ray (``address``, or a local Ray with ``num_cpus`` CPUs); the output
    directory is complete on return. ``actor_class``: a :class:`ShardEncoder` (subclasses for tests)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    rows, store = prepare(job)
    resumed_from = store.done_rows()
    pending = store.pending()
    if pending:
        ray = connect(address, num_cpus)
        actors, threads = actor_layout(int(ray.cluster_resources().get("CPU", 1)), job.threads)
        items = [{"shard": k, "texts": rows.texts[slice(*store.shard_range(k))]} for k in pending]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            actor_class, batch_size=1, concurrency=min(actors, len(items)), num_cpus=threads,
            fn_constructor_kwargs={"encoder": job.encoder.to_dict(), "threads": threads,
                                   "max_batch_tokens": job.max_batch_tokens})
        with tqdm(total=len(rows), initial=resumed_from, unit="text", desc=f"encode (ray, {actors}x{threads})",
                  disable=not progress, dynamic_ncols=True) as bar:
            for result in dataset.iter_rows():
                k = int(result["shard"])
                if k not in pending:
                    raise RuntimeError(f"shard {k} came back twice (or was never asked for); output left unfinished")
                pending.remove(k)
                start, stop = store.shard_range(k)
                vectors = np.frombuffer(result["vectors"], dtype=np.float32).reshape(stop - start, int(result["dim"]))
                store.write(k, rows.ids[start:stop], vectors.copy(),
                            shard_counts(Counts(tokens=int(result["tokens"]), truncated=int(result["truncated"]),
                                                chunked=int(result["chunked"]))))
                bar.update(stop - start)
    summary = finish(store, rows, resumed_from, len(rows) - resumed_from, t0)
    if progress:
        report(summary, rows)
    return summary
