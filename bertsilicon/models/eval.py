"""Accuracy measures shared by the model wrapper's tests, the benchmarks and the precision experiments.

* :func:`embed` — mean-pooled sentence embeddings of texts (the sentence-transformers recipe for MiniLM).
* :func:`pooled_cosines` — per-sentence cosine between two embedding sets (e.g. int8 vs fp32).
* :func:`knn_accuracy` — leave-one-out kNN classification accuracy (cosine similarity), e.g. which
  standard-library module a docstring comes from (``bertsilicon.data.corpus("docstrings")``).
* :func:`knn_module_accuracy` — the two together on the docstring corpus.
* :func:`embed_batches`, :func:`time_batches` — the same on already-tokenized batches (demo, distillation).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["mean_pool", "embed", "embed_batches", "time_batches", "pooled_cosines", "knn_accuracy",
           "knn_module_accuracy"]


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' vectors: ``[B, L, H]``, mask ``[B, L]`` -> ``[B, H]`` in fp32
    (a fully padded row gives zeros)."""
    m = attention_mask.to(torch.float32).unsqueeze(-1)
    return (last_hidden_state.to(torch.float32) * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.inference_mode()
def embed(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 128,
          device: Optional[torch.device] = None) -> torch.Tensor:
    """Mean-pooled last hidden states of ``texts`` -> ``[N, H]`` fp32 on CPU. ``model`` is any HF
    encoder (or head model: its base model is used) returning ``last_hidden_state``."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    base = getattr(model, "base_model", model)
    device = device or next(base.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        h = base(input_ids=ids, attention_mask=mask).last_hidden_state
        out.append(mean_pool(h, mask).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.inference_mode()
def embed_batches(model, batches) -> torch.Tensor:
    """Mean-pooled embeddings ``[N, H]`` fp32 of tokenized batches (dicts with input_ids, attention_mask)."""
    outs = [mean_pool(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state,
                      b["attention_mask"]) for b in batches]
    return torch.cat(outs)


@torch.inference_mode()
def time_batches(model, batches, repeats: int = 3) -> float:
    """Median over ``repeats`` passes of the mean milliseconds per batch (one warm-up batch first)."""
    import statistics
    import time

    model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"])
    per_pass = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        per_pass.append((time.perf_counter() - t0) / len(batches))
    return statistics.median(per_pass) * 1e3


def pooled_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (``[N, H]`` -> ``[N]``, float64)."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def cosine_neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    sims = e @ e.t()
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1)


def knn_vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per row, the label its ``k`` neighbours vote: the majority, ties broken by summed similarity.
    ``sims [N, k]`` their cosines, ``neighbour_labels [N, k]`` their integer labels in ``[0, classes)``. -> ``[N]``."""
    votes = torch.zeros(sims.shape[0], classes, dtype=torch.float64)
    votes.scatter_add_(1, neighbour_labels, 1.0 + 1e-6 * sims.double())
    return votes.argmax(1)


def knn_correct(emb: torch.Tensor, labels: Sequence, k: int = 5) -> torch.Tensor:
    """Per item: leave-one-out kNN (cosine) predicts its label — majority of the k most similar other
    items, ties broken by summed similarity (:func:`knn_accuracy` is its mean; precision experiments bootstrap it). -> ``[N]`` bool."""
    n = emb.shape[0]
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} items; expected one per embedding ({n})")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    classes = {c: i for i, c in enumerate(sorted(set(labels), key=str))}
    y = torch.tensor([classes[c] for c in labels])
    top_sims, top_idx = cosine_neighbours(emb, k)
    return knn_vote(top_sims, y[top_idx], len(classes)) == y


def knn_accuracy(embeddings: torch.Tensor, labels: Sequence, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy with cosine similarity.

    Each item is classified by the majority label of its ``k`` most similar other items (ties broken by
    the summed similarity); returns the fraction classified correctly. ``embeddings [N, H]``, ``labels``
    N hashable labels."""
    return float(knn_correct(embeddings, labels, k).double().mean())


def knn_module_accuracy(model, tokenizer=None, n: Optional[int] = None, k: int = 5, seed: int = 0,
                        max_length: int = 128, batch_size: int = 16) -> float:
    """kNN accuracy of ``model``'s mean-pooled embeddings at telling which standard-library module a
    docstring comes from (``bertsilicon.data.corpus("docstrings")``, ``n`` items drawn with ``seed``, or all)."""
    from .. import data
    from .students import load_tokenizer

    c = data.corpus("docstrings")
    if n is not None:
        c = c.subset(n, seed=seed)
    emb = embed(model, tokenizer or load_tokenizer(), c.texts, batch_size=batch_size, max_length=max_length)
    return knn_accuracy(emb, c.labels, k=k)
