"""Data augmentation: originals kept first, labels follow their source, the rules do what they say."""
import pytest
import torch

import bertsilicon as bs
from bertsilicon.distill.augment import augment

TEXTS = ["the quick module returns a list of strings", "open a file and read the lines of text"]


@pytest.fixture(scope="module")
def tok():
    return bs.load_tokenizer()


def test_masking_and_ngrams(tok):
    out, labels = augment(TEXTS, [3, 7], tok, n=50, p_mask=0.3, p_replace=0.0, p_ngram=0.5, ngram=(2, 3), seed=1)
    assert out[:2] == TEXTS and len(out) == 2 + 100 and labels == [3, 7] + [3, 7] * 50
    for src, y, v in zip(TEXTS * 50, labels[2:], out[2:]):
        words, source = v.split(), src.split()
        assert all(w == "[MASK]" or w in source for w in words)
        if len(words) < len(source):  # an n-gram: 2 or 3 consecutive source words (masks aside)
            assert 2 <= len(words) <= 3
    masked = sum(v.split().count("[MASK]") for v in out[2:]) / sum(len(v.split()) for v in out[2:])
    assert 0.2 < masked < 0.4
    assert augment(TEXTS, [3, 7], tok, n=3, seed=4) == augment(TEXTS, [3, 7], tok, n=3, seed=4)


def test_replacement_by_embedding_neighbours(tok):
    table = torch.randn(tok.vocab_size, 16, generator=torch.Generator().manual_seed(0))
    out, _ = augment(TEXTS, [0, 1], tok, n=20, p_mask=0.0, p_replace=1.0, p_ngram=0.0, word_embeddings=table,
                     top_k=2, seed=2)
    unit = torch.nn.functional.normalize(table, dim=-1)
    for src, v in zip(TEXTS * 20, out[2:]):
        for w, r in zip(src.split(), v.split()):
            pieces = tok.tokenize(w)
            if len(pieces) != 1:
                assert r == w
                continue
            i, j = tok.convert_tokens_to_ids(pieces[0]), tok.convert_tokens_to_ids(r)
            sims = unit[1000:] @ unit[i]
            sims[i - 1000] = -2
            assert j in (sims.topk(2).indices + 1000).tolist()


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="labels has 1 entries"):
        augment(TEXTS, [0], tok)
    with pytest.raises(ValueError, match="p_mask must be in"):
        augment(TEXTS, [0, 1], tok, p_mask=2.0)
