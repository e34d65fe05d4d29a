"""Token-budget batching and the text -> vector pipeline of ``encode``.

:func:`token_budget_batches` sorts windows by length and fills each batch up to ``max_batch_tokens`` real
tokens (as text-embeddings-inference's max-batch-tokens does; the forward is padding-free, so padding costs no
GEMM work). :func:`encode_texts` embeds a list of texts that way and returns their vectors in input order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# A batch's per-layer working set (qkv, context, FFN intermediate: ~11 KB per token of MiniLM at int8) then
# stays near a last-level cache: 8192 ran 12 % slower, 1024 8 % (bench/results/cpu/encode-budget.md)
DEFAULT_MAX_BATCH_TOKENS = 3072


@dataclass
class Counts:
    """What a run saw: texts, real tokens run (special tokens included), truncated and chunked texts."""

    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    chunked: int = 0

    def add(self, other: "Counts") -> None:
        self.texts += other.texts
        self.tokens += other.tokens
        self.truncated += other.truncated
        self.chunked += other.chunked


def check_budget(max_batch_tokens, max_length: int) -> int:
    """``max_batch_tokens`` as an int that holds at least one window of ``max_length`` tokens, or a ValueError."""
    if isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < max_length:
        raise ValueError(f"max_batch_tokens must be an int >= the model's max_length ({max_length}), so that one "
                         f"window fits; got {max_batch_tokens!r}")
    return max_batch_tokens


def token_budget_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices into ``lengths``, shortest first (ties in index order), cut into consecutive batches whose
    lengths sum to at most ``max_batch_tokens``; a window longer than the budget is a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current, used = [], [], 0
    for i in order:
        if current and used + lengths[i] > max_batch_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


def encode_texts(embedder, texts: Sequence[str], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 on_batch: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, Counts]:
    """``[N, H]`` float32 vectors of ``texts`` in input order, and the :class:`Counts`.

    Each text's windows are pooled (``embedder.pool``), a chunked text's windows averaged, then normalized
    if the config asks, all in float64, rounded to float32 once. ``on_batch(texts_finished)`` reports progress."""
    per_text, long_texts = embedder.windows(texts)
    owner = [t for t, ws in enumerate(per_text) for _ in ws]
    flat = [w for ws in per_text for w in ws]
    pooled = None
    finished_windows = np.zeros(len(texts), dtype=np.int64)
    for batch in token_budget_batches([len(w) for w in flat], max_batch_tokens):
        out = embedder.pool([flat[i] for i in batch])
        if pooled is None:
            pooled = np.empty((len(flat), out.shape[1]), dtype=np.float64)
        pooled[batch] = out
        if on_batch is not None:
            touched = {owner[i] for i in batch}
            for i in batch:
                finished_windows[owner[i]] += 1
            on_batch(sum(1 for t in touched if finished_windows[t] == len(per_text[t])))
    vectors = np.empty((len(texts), pooled.shape[1]), dtype=np.float64)
    start = 0
    for t, ws in enumerate(per_text):
        vectors[t] = pooled[start:start + len(ws)].mean(axis=0) if len(ws) > 1 else pooled[start]
        start += len(ws)
    if embedder.config.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    counts = Counts(texts=len(texts), tokens=sum(len(w) for w in flat),
                    truncated=long_texts if embedder.config.long == "truncate" else 0,
                    chunked=long_texts if embedder.config.long == "chunk" else 0)
    return vectors.astype(np.float32), counts
