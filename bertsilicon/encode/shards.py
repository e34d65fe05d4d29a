"""Resumable, lossless output of ``encode``: numbered shards plus a manifest, each written atomically.

Layout of ``OUT`` (a directory; its suffix picks the shard format)::

    OUT/manifest.json          the job, the row count, the shard size, every finished shard, "complete"
    OUT/part-00000.parquet     columns id (int64 or string) and vector (fixed-size list of float32)   (.parquet)
    OUT/part-00000.npy         [rows, H] float32, and part-00000.ids.npy: the ids                       (.npy)

Shard ``k`` holds input rows ``[k * shard_rows, (k + 1) * shard_rows)`` of the good rows, in input order. A file
is written to a temporary name, flushed to disk (fsync) and renamed; the manifest names a shard only after its
files are in place, and is itself replaced the same way. A run killed at any point therefore leaves a manifest
that lists only complete shards; the same command continues after them, and every row is written exactly once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..runlog import atomic_write
from .inputs import require_pyarrow

OUTPUT_FORMATS = {".parquet": "parquet", ".npy": "npy"}
MANIFEST = "manifest.json"
DEFAULT_SHARD_ROWS = 4096
_VERSION = 1


class OutputError(ValueError):
    """An output path that cannot take this job; the message says what is there and what was expected."""


def output_format(path) -> str:
    """``parquet | npy`` from the output path's suffix, or an :class:`OutputError`."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"output {path}: expected a path ending in {' or '.join(OUTPUT_FORMATS)} (a directory of "
                          "shards in that format is written there)")
    return fmt


class ShardStore:
    """The output directory of one job. :meth:`open` creates it or resumes it; :meth:`pending` lists the shards
    still to write; :meth:`write` adds one; :meth:`finish` marks the job complete."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.format = manifest["job"]["format"]

    @classmethod
    def open(cls, path, job: dict, rows: int, shard_rows: int = DEFAULT_SHARD_ROWS) -> "ShardStore":
        """A new store at ``path``, or the unfinished run of the same ``job`` there; anything else there is an
        :class:`OutputError`. ``job`` is everything that decides the output (it must include ``format``)."""
        path = Path(path)
        if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
            raise OutputError(f"shard_rows must be a positive int, got {shard_rows!r}")
        job = {**job, "shard_rows": shard_rows}
        fresh = {"version": _VERSION, "job": job, "rows": rows, "shards": {}, "complete": False}
        if path.exists() and not path.is_dir():
            raise OutputError(f"output {path} exists and is a file, not an unfinished run of this job")
        if not path.exists() or not any(path.iterdir()):
            path.mkdir(parents=True, exist_ok=True)
            store = cls(path, fresh)
            store._save()
            return store
        if not (path / MANIFEST).is_file():
            raise OutputError(f"output {path} exists and is not an encode output (no {MANIFEST}); choose a new path")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise OutputError(f"output {path}: {MANIFEST} is unreadable ({exc})") from None
        if manifest.get("job") != job or manifest.get("rows") != rows:
            old = manifest.get("job") or {}
            differ = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            if manifest.get("rows") != rows:
                differ.append("rows")
            raise OutputError(f"output {path} holds another job (differs in: {', '.join(differ)}); a run resumes "
                              "only with the same input and options. Choose a new output path")
        if manifest.get("complete"):
            raise OutputError(f"output {path} already holds the finished run of this job; nothing to do (remove it "
                              "to encode again)")
        return cls(path, manifest)

    # -- the plan --------------------------------------------------------------------------------- #
    @property
    def shard_rows(self) -> int:
        return self.manifest["job"]["shard_rows"]

    @property
    def n_shards(self) -> int:
        return -(-self.manifest["rows"] // self.shard_rows)

    def shard_range(self, k: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of shard ``k``."""
        start = k * self.shard_rows
        return start, min(start + self.shard_rows, self.manifest["rows"])

    def pending(self) -> list[int]:
        """The shards not yet written, in order."""
        return [k for k in range(self.n_shards) if str(k) not in self.manifest["shards"]]

    def done_rows(self) -> int:
        return sum(entry["rows"] for entry in self.manifest["shards"].values())

    # -- writing ---------------------------------------------------------------------------------- #
    def _save(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        atomic_write(self.path / MANIFEST, lambda f: f.write(text))

    def write(self, k: int, ids: list, vectors: np.ndarray, counts: dict) -> None:
        """Shard ``k``: its ``ids`` and ``[rows, H]`` float32 ``vectors``; ``counts`` go into the manifest."""
        start, stop = self.shard_range(k)
        if str(k) in self.manifest["shards"]:
            raise OutputError(f"shard {k} of {self.path} is already written")
        if len(ids) != stop - start or vectors.shape[0] != stop - start or vectors.dtype != np.float32:
            raise ValueError(f"shard {k} needs {stop - start} ids and float32 vectors, got {len(ids)} ids and "
                             f"{vectors.dtype} {tuple(vectors.shape)}")
        name = f"part-{k:05d}"
        if self.format == "parquet":
            atomic_write(self.path / f"{name}.parquet", lambda f: _write_parquet(f, ids, vectors))
        else:
            atomic_write(self.path / f"{name}.ids.npy", lambda f: np.save(f, np.asarray(ids)))
            atomic_write(self.path / f"{name}.npy", lambda f: np.save(f, vectors))
        self.manifest["shards"][str(k)] = {"start": start, "rows": stop - start, "dim": int(vectors.shape[1]),
                                           **counts}
        self._save()

    def finish(self, summary: dict) -> None:
        if self.pending():
            raise OutputError(f"output {self.path}: shards {self.pending()} are missing; the job is not complete")
        self.manifest["complete"] = True
        self.manifest["summary"] = summary
        self._save()
        for stale in self.path.glob(".*.tmp"):  # what a killed earlier run was writing
            stale.unlink()


def _write_parquet(f, ids: list, vectors: np.ndarray) -> None:
    pa = require_pyarrow()
    pq = pa.parquet

    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32())
    table = pa.table({"id": pa.array(ids), "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    pq.write_table(table, f)


def read_output(path, allow_incomplete: bool = False) -> tuple[list, np.ndarray]:
    """``(ids, vectors [N, H] float32)`` of an encode output directory, in input order.

    An unfinished run is an :class:`OutputError` unless ``allow_incomplete`` (then: the finished shards)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"output {path}: no readable {MANIFEST} ({exc})") from None
    if not manifest.get("complete") and not allow_incomplete:
        raise OutputError(f"output {path} is an unfinished run; run the same command again to finish it")
    ids, parts = [], []
    for k in sorted(manifest["shards"], key=int):
        name = f"part-{int(k):05d}"
        if manifest["job"]["format"] == "parquet":
            table = require_pyarrow().parquet.read_table(path / f"{name}.parquet")
            ids.extend(table.column("id").to_pylist())
            dim = manifest["shards"][k]["dim"]
            parts.append(table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim))
        else:
            ids.extend(np.load(path / f"{name}.ids.npy").tolist())
            parts.append(np.load(path / f"{name}.npy"))
    vectors = np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)
    return ids, vectors.astype(np.float32, copy=False)


def manifest_of(path) -> Optional[dict]:
    """The manifest of an output directory, or None."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
