"""DistilBERT's triple loss: BERT's masking rule (statistics and invariants on fresh seeds), the loss against a
float64 hand computation on ragged padding, padded positions ignored, gradients reaching the student."""
import math
import random

import pytest
import torch

import bertsilicon as bs
from bertsilicon.distill import DistillConfig
from bertsilicon.distill.mlm import MaskedLMDistiller, mask_tokens, triple_loss

SPECIAL = (0, 100, 101, 102, 103)  # [PAD], [UNK], [CLS], [SEP], [MASK] of the BERT vocabulary
MASK, VOCAB = 103, 30522


def _ragged(gen, batch=64, seq=97):
    lengths = torch.randint(3, seq + 1, (batch,), generator=gen)
    ids = torch.randint(1000, VOCAB, (batch, seq), generator=gen)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(batch), lengths - 1] = 102
    return ids.masked_fill(mask == 0, 0), mask


def test_masking_rule_statistics_and_invariants():
    seed = random.SystemRandom().randrange(2**31)
    gen = torch.Generator().manual_seed(seed)
    ids, mask = _ragged(gen)
    masked, labels = mask_tokens(ids, mask, SPECIAL, MASK, VOCAB, 0.15, gen)
    sel = labels != -100
    candidates = (mask == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    assert not (sel & ~candidates).any(), f"seed {seed}: a special or padded token was selected"
    assert torch.equal(labels[sel], ids[sel]) and torch.equal(masked[~sel], ids[~sel]), seed
    n, k = int(candidates.sum()), int(sel.sum())
    assert abs(k - 0.15 * n) < 5 * math.sqrt(n * 0.15 * 0.85), (seed, k, n)
    to_mask = sel & (masked == MASK)
    kept = sel & (masked == ids)
    rand = sel & ~to_mask & ~kept  # (a random draw equal to the original counts as kept: p = 1/30522)
    for part, p in ((to_mask, 0.8), (rand, 0.1), (kept, 0.1)):
        assert abs(int(part.sum()) - p * k) < 5 * math.sqrt(k * p * (1 - p)), (seed, int(part.sum()), p, k)
    again, _ = mask_tokens(ids, mask, SPECIAL, MASK, VOCAB, 0.15, torch.Generator().manual_seed(seed + 1))
    assert not torch.equal(again, masked)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, mask, SPECIAL, MASK, VOCAB, 0.0)
    with pytest.raises(ValueError, match="same"):
        mask_tokens(ids, mask[:, 1:], SPECIAL, MASK, VOCAB)


def _reference(zs, zt, hs, ht, labels, mask, w, tau):
    zs, zt, hs, ht = (x.double() for x in (zs, zt, hs, ht))
    real = mask.bool()
    ps, pt = torch.log_softmax(zs[real] / tau, -1), torch.softmax(zt[real] / tau, -1)
    kl = (pt * (pt.log() - ps)).sum(-1).mean() * tau**2
    chosen = labels != -100
    mlm = -torch.log_softmax(zs[chosen], -1).gather(-1, labels[chosen][:, None]).mean()
    cos = (1 - torch.nn.functional.cosine_similarity(hs[real], ht[real], dim=-1)).mean()
    return w["soft_target"] * kl + w["mlm"] * mlm + w["hidden_cosine"] * cos


def test_triple_loss_matches_float64_and_ignores_padding():
    gen = torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))
    ids, mask = _ragged(gen, batch=5, seq=13)
    picked = mask.bool() & (torch.rand(mask.shape, generator=gen) < 0.4)
    picked[0, 1] = True  # at least one masked position
    labels = torch.where(picked, torch.randint(37, mask.shape, generator=gen), -100)
    zs, zt = (3 * torch.randn(5, 13, 37, generator=gen) for _ in range(2))
    hs, ht = (torch.randn(5, 13, 24, generator=gen) for _ in range(2))
    w = {"soft_target": 5.0, "mlm": 2.0, "hidden_cosine": 1.0}
    total, parts = triple_loss(zs, zt, hs, ht, labels, mask, w, temperature=2.0)
    ref = _reference(zs, zt, hs, ht, labels, mask, w, 2.0)
    assert abs(float(total) - float(ref)) <= 1e-5 * abs(float(ref)) + 1e-6
    pad = mask == 0
    assert pad.any()
    noisy = [x.clone() for x in (zs, zt, hs, ht)]
    for x in noisy:
        x[pad] = 100 * torch.randn(int(pad.sum()), x.shape[-1], generator=gen)
    total2, _ = triple_loss(*noisy, labels, mask, w, temperature=2.0)
    assert abs(float(total2) - float(total)) <= 1e-5 * abs(float(total))
    none, none_parts = triple_loss(zs, zt, hs, ht, torch.full_like(labels, -100), mask, w)
    assert none_parts["mlm"] == 0 and math.isfinite(float(none))
    with pytest.raises(ValueError, match="vocabularies"):
        triple_loss(zs, zt[..., :-1], hs, ht, labels, mask)


def _mlm(layers, seed):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers,
                                      num_attention_heads=4, intermediate_size=48, max_position_embeddings=64))


def test_masked_lm_distiller_gradients_flow_and_errors():
    tok = bs.load_tokenizer()
    teacher, student = _mlm(4, 0), _mlm(2, 1)
    cfg = DistillConfig(layer_map="skip", steps=2, batch_size=4, max_length=24, lr=1e-3, progress=False)
    d = MaskedLMDistiller(teacher, student, tok, cfg)
    assert torch.equal(student.cls.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight)
    texts = ["Return the value of the named attribute of object.", "Open file and return a stream.",
             "Create a new dictionary.", "Sort the list in place, ascending."]
    batch = d._tokenize(texts)
    total, parts = d.compute_loss(batch)
    assert set(parts) == {"soft_target", "mlm", "hidden_cosine"} and torch.isfinite(total)
    total.backward()
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
                 "bert.encoder.layer.1.output.dense.weight", "cls.predictions.transform.dense.weight"):
        g = dict(student.named_parameters())[name].grad
        assert g is not None and float(g.abs().sum()) > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="no masked-LM head"):
        MaskedLMDistiller(bs.load_student("minilm-l6"), student, tok, cfg)
    with pytest.raises(ValueError, match="unknown"):
        MaskedLMDistiller(teacher, student, tok, cfg, weights={"mse": 1.0})


def test_distill_mlm_cli_writes_a_loadable_student(tmp_path, capsys):
    from transformers import AutoModelForMaskedLM

    from bertsilicon.cli import main

    _mlm(4, 0).save_pretrained(str(tmp_path / "teacher"))
    assert main(["distill-mlm", "--teacher", str(tmp_path / "teacher"), "--steps", "2", "--batch-size", "4",
                 "--max-length", "16", "--max-texts", "8", "--threads", "1", "--alpha-cos", "0.5",
                 "--out", str(tmp_path / "student")]) == 0
    out = capsys.readouterr().out
    assert "step 2: loss" in out and "mlm" in out and "hidden_cosine" in out
    student = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "student"))
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 32
    assert main(["distill-mlm", "--teacher", str(tmp_path / "missing")]) == 2
    assert "not a model folder" in capsys.readouterr().err
