"""Data augmentation for task distillation: more text for the teacher to label (TinyBERT, Tang et al.).

``augment(texts, labels, n=4, ...)`` returns the originals followed by ``n`` variants of each, every
variant carrying its source's label (the teacher's logits on the variant are what the student learns from;
the hard label is kept for a mixed loss). Per variant, word by word (whitespace words):

* with ``p_replace`` and a ``word_embeddings`` table: a word that is one WordPiece is replaced by one of its
  ``top_k`` nearest WordPieces by cosine in that table (TinyBERT replaces single-piece words with BERT's
  masked-LM guesses and others with GloVe neighbours; the shipped MiniLM has no masked-LM head, so its
  word-embedding neighbours stand in for both);
* else with ``p_mask``: replaced by ``[MASK]`` (Tang et al.'s masking rule);
* then with ``p_ngram`` the variant is cut to a random n-gram, ``n`` uniform in ``ngram`` (Tang et al.).

Deterministic for a ``seed``.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch


def _neighbours(word_embeddings: torch.Tensor, ids: Sequence[int], top_k: int) -> dict:
    """Each id -> its ``top_k`` nearest other ids by cosine in the table (special tokens excluded: ids < 1000)."""
    table = torch.nn.functional.normalize(word_embeddings.detach().float(), dim=-1)
    ids = sorted(set(ids))
    sims = table[ids] @ table.T
    sims[:, :1000] = -2.0  # [PAD], [unused*], [CLS], [SEP], [MASK] and the other reserved ids
    sims[torch.arange(len(ids)), torch.tensor(ids)] = -2.0
    return {i: row.tolist() for i, row in zip(ids, sims.topk(top_k, dim=-1).indices)}


def augment(texts: Sequence[str], labels: Sequence[int], tokenizer, n: int = 4, p_mask: float = 0.1,
            p_replace: float = 0.4, p_ngram: float = 0.25, ngram: tuple = (1, 5),
            word_embeddings: Optional[torch.Tensor] = None, top_k: int = 8, seed: int = 0):
    """(texts, labels): the originals, then ``n`` variants per text (see the module docstring)."""
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"labels has {len(labels)} entries; expected one per text ({len(texts)})")
    for name, p in (("p_mask", p_mask), ("p_replace", p_replace), ("p_ngram", p_ngram)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if not (len(ngram) == 2 and 1 <= ngram[0] <= ngram[1]):
        raise ValueError(f"ngram must be (min, max) with 1 <= min <= max, got {ngram!r}")
    rng = random.Random(seed)
    words = [t.split() for t in texts]
    piece = {w: tokenizer.convert_tokens_to_ids(p[0]) for ws in words for w in ws
             if len(p := tokenizer.tokenize(w)) == 1}
    near = _neighbours(word_embeddings, list(piece.values()), top_k) if word_embeddings is not None and piece else {}
    out_texts, out_labels = list(texts), list(labels)
    for _ in range(n):
        for ws, y in zip(words, labels):
            new = []
            for w in ws:
                if near and w in piece and rng.random() < p_replace:
                    new.append(tokenizer.convert_ids_to_tokens(rng.choice(near[piece[w]])))
                elif rng.random() < p_mask:
                    new.append(tokenizer.mask_token)
                else:
                    new.append(w)
            if len(new) > 1 and rng.random() < p_ngram:
                size = min(len(new), rng.randint(*ngram))
                start = rng.randrange(len(new) - size + 1)
                new = new[start:start + size]
            out_texts.append(" ".join(new))
            out_labels.append(y)
    return out_texts, out_labels


__all__ = ["augment"]
