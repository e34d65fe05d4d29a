"""Task distillation: hard labels mixed with soft targets, several teachers, token-level masking, the BiLSTM
student (and its profile), design names as student specs, fine-tuning on the labelled task."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

import bertsilicon as bs
from bertsilicon.distill import DistillConfig, Distiller, student_from_spec
from bertsilicon.distill.bilstm import BiLSTMClassifier, BiLSTMConfig
from bertsilicon.distill.labels import label_tensor
from bertsilicon.distill.task import accuracy, finetune, predict_logits, student_classifier
from bertsilicon.models.students import student_config
from bertsilicon.precision.metrics import topk_overlap
from bertsilicon.profiler.recurrent import bilstm_ops, profile_bilstm
from bertsilicon.tasks import Split
from test_distill_losses import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

TEXTS = bs.data.corpus("pydoc").subset(12, seed=5).texts
C = 5


def classifier(layers=2, hidden=32, heads=2, seed=0, cls=BertForSequenceClassification):
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=37, max_position_embeddings=64, num_labels=C)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # spread logits (random heads give near-uniform ones): the targets must differ
        model.classifier.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def tok():
    return bs.load_tokenizer()


def _cfg(**kw):
    base = dict(steps=3, batch_size=4, max_length=24, lr=1e-3, progress=False, init_from_teacher=False,
                student_dropout=0.0)
    base.update(kw)
    return DistillConfig(**base)


def _labels(n, seed=0):
    return torch.randint(0, C, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_hard_labels_mix_with_soft_targets(tok):
    """label_ce is F.cross_entropy of the student's logits; soft_target is Hinton's KL at T with T^2 (as a
    flag); the total is their weighted sum; both recomputed here in float64."""
    teacher, student = classifier(4, seed=1), classifier(2, seed=2)
    for t2 in (True, False):
        d = Distiller(teacher, student, tok, _cfg(losses={"label_ce": 0.3, "soft_target": 0.7}, temperature=3.0,
                                                  t2_scale=t2))
        batch = d._tokenize(TEXTS[:6])
        labels = torch.tensor(_labels(6))
        total, parts = d.compute_loss(batch, labels=labels)
        with torch.no_grad():
            zs, zt = student(**batch).logits.double(), teacher(**batch).logits.double()
        ce = F.cross_entropy(zs, labels)
        p_t = F.softmax(zt / 3.0, -1)
        kl = (p_t * (p_t.log() - F.log_softmax(zs / 3.0, -1))).sum(-1).mean() * (9.0 if t2 else 1.0)
        assert abs(parts["label_ce"] - ce.item()) < 1e-5 and abs(parts["soft_target"] - kl.item()) < 1e-5
        assert abs(total.item() - (0.3 * ce + 0.7 * kl).item()) < 1e-5


def test_fit_with_labels_lowers_the_label_loss_and_checks_them(tok):
    student = classifier(2, seed=3)
    d = Distiller(None, student, tok, _cfg(losses={"label_ce": 1.0}, steps=6, schedule="constant"))
    labels = _labels(len(TEXTS), 1)
    batch = d._tokenize(TEXTS[:4])
    before = d.compute_loss(batch, labels=torch.tensor(labels[:4]))[1]["label_ce"]
    d.fit(TEXTS[:4], labels[:4])
    assert d.compute_loss(batch, labels=torch.tensor(labels[:4]))[1]["label_ce"] < before
    with pytest.raises(ValueError, match="labels has 3 entries; expected one per text"):
        d.fit(TEXTS[:4], labels[:3])
    with pytest.raises(ValueError, match="labels must be class indices"):
        d.fit(TEXTS[:2], [0, -1])
    with pytest.raises(ValueError, match="needs labels"):
        d.fit(TEXTS[:4])


def test_missing_labels_count_in_no_label_loss(tok):
    """A transfer set: soft targets on every text, the hard-label CE over the labelled ones only (None and -100
    mark the others); equal to a float64 hand computation; no labelled text at all is a clear error."""
    teacher, student = classifier(2, seed=7), classifier(1, seed=8)
    d = Distiller(teacher, student, tok, _cfg(losses={"label_ce": 0.4, "soft_target": 0.6}, temperature=2.0))
    batch = d._tokenize(TEXTS[:6])
    labels = _labels(6, 4)
    given = [labels[0], None, labels[2], -100, None, labels[5]]
    total, parts = d.compute_loss(batch, labels=label_tensor(given, 6))
    with torch.no_grad():
        zs, zt = student(**batch).logits.double(), teacher(**batch).logits.double()
    kept = [0, 2, 5]
    ce = -(zs.log_softmax(-1)[kept, [labels[i] for i in kept]]).mean()
    kl = 4.0 * (zt.div(2).softmax(-1) * (zt.div(2).log_softmax(-1) - zs.div(2).log_softmax(-1))).sum(-1).mean()
    assert abs(parts["label_ce"] - ce.item()) < 1e-5 and abs(parts["soft_target"] - kl.item()) < 1e-5
    assert abs(total.item() - (0.4 * ce + 0.6 * kl).item()) < 1e-5
    none = d.compute_loss(batch, labels=label_tensor([None] * 6, 6))[1]  # a batch with no label: CE adds 0
    assert none["label_ce"] == 0.0 and abs(none["soft_target"] - kl.item()) < 1e-5
    with pytest.raises(ValueError, match="at least one text labelled"):
        d.fit(TEXTS[:6], [None, -100] * 3)
    with pytest.raises(ValueError, match="None / -100 for a text without a label.*got -1"):
        d.fit(TEXTS[:6], [0, None, -1, 1, 2, 3])
    with pytest.raises(ValueError, match="got 'a'"):
        d.fit(TEXTS[:2], ["a", 0])


def test_two_teachers_average_their_soft_targets(tok):
    """The soft target is the mean of the teachers' softmaxes at T (MT-DNN); logit_mse uses mean logits."""
    t1, t2, student = classifier(2, seed=4), classifier(3, seed=5), classifier(1, seed=6)
    T = 2.0
    d = Distiller([t1, t2], student, tok, _cfg(losses={"soft_target": 1.0, "logit_mse": 1.0}, temperature=T))
    batch = d._tokenize(TEXTS[:5])
    _, parts = d.compute_loss(batch)
    with torch.no_grad():
        zs, z1, z2 = (m(**batch).logits.double() for m in (student, t1, t2))
    p = (F.softmax(z1 / T, -1) + F.softmax(z2 / T, -1)) / 2
    kl = (p * (p.log() - F.log_softmax(zs / T, -1))).sum(-1).mean() * T * T
    mse = (zs - (z1 + z2) / 2).pow(2).sum(-1).mean()
    assert abs(parts["soft_target"] - kl.item()) < 1e-5 and abs(parts["logit_mse"] - mse.item()) < 1e-4
    cached = d.teacher_logits(TEXTS[:5], batch_size=2)  # [teachers, N, C], batched by length: same targets
    assert cached.shape == (2, 5, C)
    for k, v in d.compute_loss(batch, teacher_logits=cached)[1].items():
        assert abs(v - parts[k]) < 1e-4 * max(1.0, abs(parts[k])), k
    one = Distiller(t1, student, tok, _cfg(losses={"soft_target": 1.0}, temperature=T)).compute_loss(batch)[1]
    assert abs(one["soft_target"] - parts["soft_target"]) > 1e-4  # the second teacher changes the target
    with pytest.raises(ValueError, match="compare layers with one teacher"):
        Distiller([t1, t2], classifier(1), tok, _cfg(losses={"hidden_mse": 1.0}))


def test_token_level_soft_targets_skip_padding(tok):
    """[B, S, C] logits: padded positions do not count (changing them changes nothing)."""
    teacher, student = classifier(2, seed=7, cls=BertForTokenClassification), classifier(1, seed=8, cls=BertForTokenClassification)
    d = Distiller(teacher, student, tok, _cfg(losses={"soft_target": 1.0}, temperature=1.5))
    batch = d._tokenize([TEXTS[0][:40], TEXTS[1]])  # ragged: the first row is padded
    mask = batch["attention_mask"]
    assert (mask == 0).any()
    _, parts = d.compute_loss(batch)
    with torch.no_grad():
        zs, zt = student(**batch).logits.double(), teacher(**batch).logits.double()
    p = F.softmax(zt / 1.5, -1)
    per_tok = (p * (p.log() - F.log_softmax(zs / 1.5, -1))).sum(-1) * 1.5 ** 2
    ref = (per_tok * mask).sum() / mask.sum()
    assert abs(parts["soft_target"] - ref.item()) < 1e-5
    assert abs(per_tok.mean().item() - ref.item()) > 1e-4  # counting the padding would differ


def test_bilstm_student_distils_and_ignores_padding(tok):
    teacher = classifier(2, seed=9)
    cfg = BiLSTMConfig(num_labels=C, embedding_dim=32, hidden_size=12, mlp_hidden=16, dropout=0.0)
    student = BiLSTMClassifier.from_teacher_embeddings(cfg, teacher, seed=1)
    assert torch.equal(student.embeddings.weight, teacher.get_input_embeddings().weight)
    d = Distiller(teacher, student, tok, _cfg(losses={"logit_mse": 1.0, "label_ce": 1.0}, steps=5, schedule="constant",
                                              lr=1e-2))
    batch, labels = d._tokenize(TEXTS[:4]), torch.tensor(_labels(4, 2))
    before = d.compute_loss(batch, labels=labels)[0]
    d.fit(TEXTS[:4], labels.tolist())
    assert d.compute_loss(batch, labels=labels)[0] < before
    one = tok([TEXTS[0][:30]], return_tensors="pt")  # alone vs padded beside a longer text: same logits
    both = tok([TEXTS[0][:30], TEXTS[1]], padding=True, return_tensors="pt")
    with torch.no_grad():
        alone = student(one["input_ids"], one["attention_mask"]).logits[0]
        padded = student(both["input_ids"], both["attention_mask"]).logits[0]
    assert torch.allclose(alone, padded, atol=1e-5)
    with pytest.raises(ValueError, match="embedding_dim"):
        BiLSTMClassifier.from_teacher_embeddings(BiLSTMConfig(num_labels=C, embedding_dim=30), teacher)
    with pytest.raises(ValueError, match="BiLSTMConfig.hidden_size must be a positive int"):
        BiLSTMConfig(num_labels=C, hidden_size=0).validate()


def test_bilstm_profile_counts_its_parameters_and_macs():
    cfg = BiLSTMConfig(num_labels=7, embedding_dim=48, hidden_size=20, mlp_hidden=24)
    counted = sum(o.params for o in bilstm_ops(cfg, 3, 11))
    assert counted == sum(p.numel() for p in BiLSTMClassifier(cfg).parameters())
    E, h, m, B, S = 48, 20, 24, 3, 11
    macs = 2 * (B * S * E * 4 * h + B * S * h * 4 * h) + B * 2 * h * m + B * m * 7
    assert sum(o.macs for o in bilstm_ops(cfg, B, S)) == macs
    t = profile_bilstm(cfg, B, S, "fp32", "avx2")
    assert t["matmul_flops"] == 2 * macs and t["latency_s"] > 0 and t["bytes"] > 4 * counted * 0
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        bilstm_ops(cfg, 1, 0)


def test_design_names_are_student_specs():
    cfg = student_config("L2-H768-A12-F1536")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (2, 768, 12, 1536)
    cfg = student_from_spec("L3-H256-A8-F512:hidden_dropout_prob=0.0")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (3, 256, 8, 512)
    assert cfg.hidden_dropout_prob == 0.0
    with pytest.raises(ValueError, match="not divisible by 7 heads"):
        student_config("L2-H768-A7-F1536")


def test_topk_overlap_across_widths():
    """A student narrower than its teacher: neighbours compared, widths free; equal to the per-query loop."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=g), torch.randn(20, 5, generator=g)
    got = topk_overlap(a, b, 3)

    def nn(x, i):
        s = F.normalize(x.double(), dim=-1) @ F.normalize(x.double(), dim=-1)[i]
        s[i] = -math.inf
        return set(s.topk(3).indices.tolist())

    ref = torch.tensor([len(nn(a, i) & nn(b, i)) / 3 for i in range(20)], dtype=torch.float64)
    assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="one N"):
        topk_overlap(a, b[:10], 3)


def test_finetune_and_accuracy(tok):
    model = student_classifier("bert-L1-H32-A2-F37", C, seed=0)
    split = Split(tuple(TEXTS[:8]), tuple(_labels(8, 3)))
    finetune(model, tok, split, steps=40, lr=2e-2, batch_size=8, max_length=24, progress=False)
    logits = predict_logits(model, tok, split.texts, batch_size=3, max_length=24)
    assert logits.shape == (8, C)
    with torch.no_grad():  # batching by length keeps the text order
        b = tok([split.texts[5]], truncation=True, max_length=24, return_tensors="pt")
        assert torch.allclose(logits[5], model(**b).logits[0].float(), atol=1e-5)
    acc = accuracy(model, tok, split, max_length=24)
    assert acc == float((logits.argmax(-1) == torch.tensor(split.labels)).double().mean())
    assert acc > 0.5  # 8 texts, 5 classes (half one class), 40 full-batch steps: memorised


# ------------------------------------------------------------------------------------------------ #
# students of other families and other head counts                                                    #
# ------------------------------------------------------------------------------------------------ #
def _mobilebert(seed=0):
    from transformers import MobileBertConfig, MobileBertModel

    cfg = MobileBertConfig(vocab_size=30522, hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
                           true_hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=24,
                           max_position_embeddings=64, num_feedforward_networks=2)
    torch.manual_seed(seed)
    return MobileBertModel(cfg, add_pooling_layer=False).eval()


def _distilbert(seed=0):
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=40, max_position_embeddings=64)
    torch.manual_seed(seed)
    return DistilBertModel(cfg).eval()


def _bert(layers, hidden=32, heads=2, seed=0):
    from transformers import BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(seed)
    return BertModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.parametrize("family", ["mobilebert", "distilbert"])
def test_other_family_students_train_on_every_layer_loss(tok, family):
    """MobileBERT (attention inside its bottleneck) and DistilBERT students: every layer loss is finite and
    goes down; the teacher (BERT, 4 heads) has another head count, so the attention losses use relation heads."""
    teacher = _bert(4, heads=4, seed=1)
    with torch.no_grad():  # sharper attention and values than a random init's near-uniform ones
        for layer in teacher.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                lin.weight.mul_(6.0)
    for name in ("attention_mse", "attention_kl", "value_kl", "hidden_mse"):
        student = _mobilebert(2) if family == "mobilebert" else _distilbert(2)
        d = Distiller(teacher, student, tok, _cfg(losses={name: 1.0}, steps=4, schedule="constant"))
        batch = d._tokenize(TEXTS[:4])
        before = d.compute_loss(batch)[1][name]
        for _ in range(4):
            d.train_step(batch)
        after = d.compute_loss(batch)[1][name]
        assert math.isfinite(before) and after < before, (family, name, before, after)


def test_relation_heads_match_a_float64_reference(tok):
    """Student 2 heads, teacher 4 heads (width 32 each): both split into 4 relation heads of 8; MiniLM's
    attention KL recomputed by hand in float64, padding excluded."""
    teacher, student = _bert(2, heads=4, seed=3), _bert(1, heads=2, seed=4)
    d = Distiller(teacher, student, tok, _cfg(losses={"attention_kl": 1.0, "value_kl": 1.0}))
    batch = d._tokenize([TEXTS[0][:50], TEXTS[2]])
    mask = batch["attention_mask"].bool()
    _, parts = d.compute_loss(batch)
    with torch.no_grad():
        hs = student(**batch, output_hidden_states=True).hidden_states[-2].double()
        ht = teacher(**batch, output_hidden_states=True).hidden_states[-2].double()

    def rel(layer, h, which):
        sa = layer.attention.self
        x = {"q": sa.query, "k": sa.key, "v": sa.value}
        B, S, _ = h.shape
        split = {n: F.linear(h, f.weight.double(), f.bias.double()).view(B, S, 4, 8).transpose(1, 2) for n, f in x.items()}
        a, b = (split["q"], split["k"]) if which == "attention" else (split["v"], split["v"])
        return a @ b.transpose(-1, -2) / math.sqrt(8)

    for which, key in (("attention", "attention_kl"), ("value", "value_kl")):
        s = rel(student.encoder.layer[-1], hs, which).masked_fill(~mask[:, None, None, :], -math.inf)
        t = rel(teacher.encoder.layer[-1], ht, which).masked_fill(~mask[:, None, None, :], -math.inf)
        ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
        kl = (lt.exp() * (lt - ls)).nan_to_num().sum(-1)  # [B, R, S]
        ref = (kl * mask[:, None, :]).sum() / (mask.sum() * 4)
        assert abs(parts[key] - ref.item()) < 1e-5 * max(1.0, ref.item()), key
    with pytest.raises(ValueError, match="relation_heads=3 must divide"):
        Distiller(teacher, student, tok, _cfg(losses={"attention_kl": 1.0}, relation_heads=3)).compute_loss(batch)


def test_progressive_transfer_trains_one_layer_per_stage(tok):
    """MobileBERT's progressive transfer: every layer and the embeddings train, each stage's loss goes down,
    and afterwards the student has all its layers, all trainable again. Stage 0's loss is the first pair's
    alone (up_to_layer=0)."""
    from bertsilicon.distill.progressive import progressive_transfer

    teacher, student = _bert(4, heads=4, seed=5), _mobilebert(6)
    layers = student.encoder.layer
    snapshots = [{k: v.clone() for k, v in student.state_dict().items()}]
    hist = progressive_transfer(teacher, student, tok, TEXTS[:4], steps_per_layer=3, lr=1e-3, batch_size=4,
                                max_length=24, progress=False, schedule="constant", student_dropout=0.0)
    assert len(hist) == 2 and len(student.encoder.layer) == 2 and student.encoder.layer is layers
    assert all(p.requires_grad for p in student.parameters())
    after = student.state_dict()
    changed = {k.split(".")[0] + ("." + k.split(".")[2] if k.startswith("encoder") else "")
               for k, v in after.items() if not torch.equal(v, snapshots[0][k])}
    assert {"encoder.0", "encoder.1", "embeddings"} <= changed
    for h in hist:
        assert h["loss"][-1] < h["loss"][0]
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    one = Distiller(teacher, student, tok, _cfg(losses={"hidden_mse": 1.0}, up_to_layer=0))
    both = Distiller(teacher, student, tok, _cfg(losses={"hidden_mse": 1.0}))
    with torch.no_grad():
        s_hid = student(**batch, output_hidden_states=True).hidden_states
        t_hid = teacher(**batch, output_hidden_states=True).hidden_states
        first = F.mse_loss(s_hid[1], t_hid[2], reduction="none").mean(-1)  # widths 32 and 32: no projection
        ref = (first * batch["attention_mask"]).sum() / batch["attention_mask"].sum()
    assert abs(one.compute_loss(batch)[1]["hidden_mse"] - ref.item()) < 1e-5
    assert both.compute_loss(batch)[1]["hidden_mse"] > ref.item() + 1e-4
