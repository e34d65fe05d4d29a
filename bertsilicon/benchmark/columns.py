"""Columns beside latency, for any provider's runner: task quality, batch invariance, cold start and peak RSS.

* **quality**: two labelled real tasks on the built-in text, scored from mean-pooled embeddings (cosine):
  - ``knn``: ``bertsilicon.tasks.task("docstring-module")``: each test docstring gets the majority module of its
    :data:`KNN_K` most similar *train* docstrings (ties: summed similarity); accuracy.
  - ``retrieval``: pydoc paragraphs of two sentences or more, split at the first sentence end: the first sentence
    is the query, the rest of the paragraph its one relevant document, all the rests the collection;
    ``recall@10`` (the document ranks in the top 10) and ``mrr`` (mean of 1 / rank).
  The quality ratio of a provider is its score / the fp32 reference's score (HF fp32, same texts), per measure;
  ``quality_ratio`` is the lowest of the three.
* **invariance**: the largest absolute difference, over texts and embedding dimensions, between a text's
  mean-pooled embedding run alone (no padding) and the same text inside a ragged batch (``in_batch``), and alone
  padded to 512 tokens (``padded_512``).
* **cold start** (``coldstart.py``): fresh processes, import -> model ready -> first output, median; peak RSS.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch

from ..models.eval import knn_vote, mean_pool
from .providers import Batch, tokenize

COLUMNS = ("quality", "invariance", "cold-start")
KNN_K = 5
RECALL_AT = 10
EMBED_BATCH = 32
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# ------------------------------------------------------------------------------------------------ #
# the measures (plain functions of embeddings)                                                       #
# ------------------------------------------------------------------------------------------------ #
def _normalized(emb: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(emb.double(), dim=-1)


def knn_accuracy(train: torch.Tensor, train_labels: Sequence[int], test: torch.Tensor, test_labels: Sequence[int],
                 k: int = KNN_K) -> float:
    """Fraction of ``test`` rows whose ``k`` most cosine-similar ``train`` rows vote their label (majority; ties
    broken by summed similarity). ``train [N, H]``, ``test [M, H]``, integer labels."""
    if train.shape[0] != len(train_labels) or test.shape[0] != len(test_labels):
        raise ValueError(f"labels: expected one per row; got {len(train_labels)} for {train.shape[0]} train rows, "
                         f"{len(test_labels)} for {test.shape[0]} test rows")
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k: expected 1..{train.shape[0]} (the train rows), got {k}")
    y_train, y_test = torch.tensor(list(train_labels)), torch.tensor(list(test_labels))
    sims, idx = (_normalized(test) @ _normalized(train).t()).topk(k, dim=1)
    classes = int(max(y_train.max(), y_test.max())) + 1
    return float((knn_vote(sims, y_train[idx], classes) == y_test).double().mean())


def retrieval_scores(queries: torch.Tensor, docs: torch.Tensor, at: int = RECALL_AT) -> dict:
    """Query ``i``'s one relevant document is ``docs[i]``; ranks by cosine over all documents.
    -> ``{"recall@10": fraction ranked within ``at``, "mrr": mean 1 / rank}`` (rank 1 = first)."""
    if queries.shape != docs.shape:
        raise ValueError(f"queries and docs: expected one document per query, got {tuple(queries.shape)} and "
                         f"{tuple(docs.shape)}")
    sims = _normalized(queries) @ _normalized(docs).t()
    own = sims.diagonal().unsqueeze(1)
    rank = 1 + (sims > own).sum(1)  # ties count in the query's favour
    return {f"recall@{at}": float((rank <= at).double().mean()), "mrr": float((1.0 / rank.double()).mean())}


def quality_ratios(scores: dict, reference: dict) -> dict:
    """``score / reference score`` per measure, and ``quality_ratio``: the lowest of them."""
    ratios = {f"{k}_ratio": scores[k] / reference[k] for k in reference if reference[k]}
    return {**ratios, "quality_ratio": min(ratios.values()) if ratios else None}


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"expected one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max())


# ------------------------------------------------------------------------------------------------ #
# the texts                                                                                          #
# ------------------------------------------------------------------------------------------------ #
def retrieval_pairs(limit: Optional[int] = None) -> tuple[list[str], list[str]]:
    """(queries, documents) from pydoc paragraphs: first sentence (>= 30 characters) / the rest (>= 60), in
    corpus order, the first ``limit`` (all 682 on CPython 3.11 when None)."""
    from bertsilicon import data

    queries, docs = [], []
    for text in data.corpus("pydoc").texts:
        parts = _SENTENCE_END.split(text, maxsplit=1)
        if len(parts) == 2 and len(parts[0]) >= 30 and len(parts[1]) >= 60:
            queries.append(parts[0])
            docs.append(parts[1])
    return queries[:limit], docs[:limit]


def _task_split(split, limit: Optional[int]) -> tuple[list[str], list[int]]:
    """``split``'s texts and labels, or ``limit`` of them drawn with seed 0 (order kept)."""
    import random

    idx = range(len(split))
    if limit is not None and limit < len(split):
        idx = sorted(random.Random(0).sample(idx, limit))
    return [split.texts[i] for i in idx], [split.labels[i] for i in idx]


def embed_texts(run, tok, texts: Sequence[str], seq: int, batch: int = EMBED_BATCH) -> torch.Tensor:
    """Mean-pooled embeddings ``[N, H]`` fp32 of ``texts`` through ``run``, batches of ``batch``, padding longest."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            b = tokenize(tok, texts[i:i + batch], seq, "longest")
            out.append(mean_pool(run(b), b.attention_mask))
    return torch.cat(out)


class QualityTexts:
    """The texts of the quality measures, fixed once per run: ``knn`` train / test, ``retrieval`` pairs.
    ``limit``: at most that many items per part (quick runs); None: all of them."""

    def __init__(self, limit: Optional[int] = None):
        from bertsilicon.tasks import task

        t = task("docstring-module")
        self.train, self.train_labels = _task_split(t.train, limit)
        self.test, self.test_labels = _task_split(t.test, limit)
        self.queries, self.docs = retrieval_pairs(limit)

    @property
    def count(self) -> int:
        return len(self.train) + len(self.test) + len(self.queries) + len(self.docs)

    def scores(self, run, tok, seq: int) -> dict:
        """``{"knn_accuracy", "recall@10", "mrr"}`` of ``run``."""
        emb = {name: embed_texts(run, tok, getattr(self, name), seq) for name in ("train", "test", "queries", "docs")}
        return {"knn_accuracy": knn_accuracy(emb["train"], self.train_labels, emb["test"], self.test_labels),
                **retrieval_scores(emb["queries"], emb["docs"])}


def invariance(run, tok, texts: Sequence[str], seq: int, padded_to: int = 512) -> dict:
    """``{"in_batch", "padded_512"}``: see the module docstring. ``texts`` (>= 2, of different lengths) form
    the ragged batch, truncated to ``seq`` tokens; the padded run pads each truncated text to ``padded_to``."""
    if len(texts) < 2:
        raise ValueError(f"texts: expected at least 2 (a ragged batch), got {len(texts)}")
    with torch.inference_mode():
        alone = torch.cat([embed_texts(run, tok, [t], seq) for t in texts])
        together = embed_texts(run, tok, list(texts), seq, batch=len(texts))
        padded = []
        for t in texts:
            b = tokenize(tok, [t], seq, "longest")
            pad = padded_to - b.shape[1]
            b = Batch(torch.nn.functional.pad(b.input_ids, (0, pad)), torch.nn.functional.pad(b.attention_mask, (0, pad)))
            padded.append(mean_pool(run(b), b.attention_mask))
    return {"in_batch": max_abs_difference(alone, together), f"padded_{padded_to}": max_abs_difference(alone, torch.cat(padded))}


# ------------------------------------------------------------------------------------------------ #
# every column of every built provider of one (model, max length) cell                              #
# ------------------------------------------------------------------------------------------------ #
def measure(cfg, ctx, built: dict, model, tok, seq: int, texts: Sequence[str], progress=None) -> dict:
    """``{provider key: {column fields}}`` for ``cfg.columns`` (any of :data:`COLUMNS`) of every runner in
    ``built``; ``"reference"`` holds the HF fp32 model's quality scores (``quality_reference``). A provider whose column fails gets
    ``{"<column>_error": ...}``."""
    from . import coldstart

    out = {key: {} for key in built}
    if "quality" in cfg.columns:
        quality = QualityTexts(cfg.quality_limit)
        hf = lambda b: model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state  # noqa: E731
        with torch.inference_mode():
            reference = quality.scores(hf, tok, seq)
        out["reference"] = {"quality_reference": reference, "quality_texts": quality.count}
    for key, run in built.items():
        if progress is not None:
            progress.set_description(f"columns: {key}")
        fields = out[key]
        try:
            if "quality" in cfg.columns:
                scores = quality.scores(run, tok, seq)
                fields.update(quality=scores, **quality_ratios(scores, reference))
            if "invariance" in cfg.columns:
                fields["invariance"] = invariance(run, tok, texts, seq)
        except Exception as exc:  # noqa: BLE001 - a failed column is reported in the row
            fields["columns_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if "cold-start" in cfg.columns:
            one = tokenize(tok, texts[:1], seq, "longest")
            fields["cold_start"] = coldstart.measure(key, ctx.model_name, cfg.model_overrides.get(ctx.model_name, {}),
                                                     ctx.workdir, ctx.cache, cfg.threads, one, cfg.cold_starts)
    return out
