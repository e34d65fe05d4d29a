"""Bulk embedding of a corpus: ``bertsilicon.encode(texts, ...)`` and ``bertsilicon encode INPUT --output OUT``.

* :func:`encode` — texts in memory -> ``[N, H]`` float32 vectors (token-budget batches, padding-free forward).
* :mod:`.job` — a corpus file -> numbered shards + a manifest, resumable (``run``); :mod:`.ray_job` — the same job
  on Ray Data; :func:`read_output` reads an output directory back.
* :mod:`.inputs` (txt / jsonl / csv / parquet readers), :mod:`.batching` (the token budget), :mod:`.embedder`
  (model, pooling, normalization), :mod:`.shards` (the output store).

``bertsilicon.encode`` is this package, and calling it calls :func:`encode`.
"""
from __future__ import annotations

import sys
import types
from typing import Optional, Sequence

from .batching import DEFAULT_MAX_BATCH_TOKENS, check_budget, encode_texts
from .embedder import Embedder, resolve, torch_threads
from .shards import read_output

__all__ = ["encode", "read_output"]


def encode(texts: Sequence[str], model: Optional[str] = None, precision: Optional[str] = None,
           pooling: Optional[str] = None, normalize: Optional[bool] = None,
           max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_length: Optional[int] = None,
           long: str = "truncate", threads: Optional[int] = None):
    """Embed ``texts`` -> ``[N, H]`` float32 numpy array, row i the vector of ``texts[i]``.

    ``model``: ``None`` / ``"minilm-l6"`` (the built-in all-MiniLM-L6-v2), a Hugging Face or sentence-transformers
    directory, or a saved optimized bertsilicon model. ``precision``: ``fp32 | bf16 | fp16 | int8`` (default int8).
    ``pooling`` (``mean | cls | max | mean_sqrt_len``) and ``normalize`` default to the directory's
    sentence-transformers config (else mean, no normalization). ``max_batch_tokens``: real tokens per forward.
    ``max_length``: tokens per text (default: the model's limit); longer texts are truncated, or with
    ``long="chunk"`` embedded as overlapping windows whose vectors are averaged. A text's vector does not depend
    on the other texts, the budget or padding (see README: which precisions and backends guarantee it)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of strings (not one string)")
    if not texts:
        raise ValueError("texts is empty: nothing to encode")
    config = resolve(model, precision, pooling, normalize, max_length, long)
    check_budget(max_batch_tokens, config.max_length)
    with torch_threads(threads):
        vectors, _ = encode_texts(Embedder(config), list(texts), max_batch_tokens)
    return vectors


class _CallableModule(types.ModuleType):
    """``bertsilicon.encode`` names this package once it is imported; calling it calls :func:`encode`."""

    def __call__(self, *args, **kwargs):
        return encode(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
