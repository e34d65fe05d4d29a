"""Layer maps, student specs and initialisation, and the Distiller (tiny random BERTs, a few steps):
every loss trains, checkpoints resume bit-identically, bf16 weights stay bf16 and stochastic rounding
keeps updates that nearest rounding loses."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

import bertsilicon as bs
from bertsilicon.distill import (LOSS_NAMES, DistillConfig, Distiller, init_student_from_teacher, layer_map,
                                 student_from_spec)
from bertsilicon.distill.distiller import LABEL_LOSSES, LOGIT_LOSSES
from test_distill_losses import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

TEXTS = bs.data.corpus("pydoc").subset(24, seed=3).texts


def tiny(layers, hidden=32, heads=2, seed=0, ffn=37):
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=64)
    torch.manual_seed(seed)
    return BertModel(cfg, add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def tok():
    return bs.load_tokenizer()


# ------------------------------------------------------------------------------------------------ #
# layer maps and specs                                                                                #
# ------------------------------------------------------------------------------------------------ #
def test_layer_maps():
    assert layer_map("uniform", 3, 6) == [1, 3, 5]
    assert layer_map("uniform", 4, 12) == [2, 5, 8, 11]  # TinyBERT4: g(m) = 3m
    assert layer_map("uniform", 5, 12) == [1, 4, 6, 9, 11]  # non-integer ratio rounds
    assert layer_map("skip", 6, 12) == [1, 3, 5, 7, 9, 11]  # PKD-Skip: teacher layers {2, 4, ..., 12} from 1
    assert layer_map("skip", 3, 12) == [3, 7, 11]
    assert layer_map("skip", 3, 12, step=3, start=2) == [2, 5, 8]
    assert layer_map("last", 3, 12) == [9, 10, 11]
    assert layer_map("first", 3, 12) == [0, 1, 2]
    assert layer_map("distilbert", 6, 12) == [0, 2, 4, 7, 9, 11]
    assert layer_map([5, 0], 2, 6) == [5, 0]
    assert layer_map("custom", 2, 6, layers=[1, 1]) == [1, 1]
    with pytest.raises(ValueError, match="6 of 12"):
        layer_map("distilbert", 3, 6)
    with pytest.raises(ValueError, match="outside 0..5"):
        layer_map([0, 6], 2, 6)
    with pytest.raises(ValueError, match="one per student layer"):
        layer_map([0], 2, 6)
    with pytest.raises(ValueError, match="unknown"):
        layer_map("middle", 2, 6)
    with pytest.raises(ValueError, match="n_student"):
        layer_map("uniform", 0, 6)


def test_student_specs():
    minilm = bs.student_config("minilm-l6")
    s = student_from_spec("bert-L3-H384", minilm)  # teacher's width: its heads and FFN, so layers copy
    assert (s.num_hidden_layers, s.hidden_size, s.num_attention_heads, s.intermediate_size) == (3, 384, 12, 1536)
    s = student_from_spec("bert-L3-H384")  # no teacher: Turc et al.'s A = H/64, F = 4H
    assert (s.num_attention_heads, s.intermediate_size) == (6, 1536)
    s = student_from_spec("bert-L2-H312-A12-F1200")
    assert (s.num_hidden_layers, s.hidden_size, s.num_attention_heads, s.intermediate_size) == (2, 312, 12, 1200)
    s = student_from_spec("minilm-l6:num_hidden_layers=3,hidden_dropout_prob=0.0")
    assert (s.num_hidden_layers, s.hidden_size, s.hidden_dropout_prob) == (3, 384, 0.0)
    assert student_from_spec("bert-L4-H256").num_attention_heads == 4  # one of the 24 compact BERTs
    with pytest.raises(ValueError, match="key=value"):
        student_from_spec("minilm-l6:num_hidden_layers")
    with pytest.raises(ValueError, match="no field"):
        student_from_spec("minilm-l6:nonsense=1")
    with pytest.raises(ValueError, match="unknown"):
        student_from_spec("gpt2")
    with pytest.raises(ValueError, match="divisible"):
        student_from_spec("bert-L2-H100-A3")


def test_init_from_teacher_copies_mapped_layers(tok):
    teacher, student = tiny(4, seed=1), tiny(2, seed=2)
    init_student_from_teacher(student, teacher, [3, 1])
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for k, v in s_sd.items():
        if k.startswith("embeddings."):
            assert torch.equal(v, t_sd[k]), k
        else:
            i = int(k.split(".")[2])
            assert torch.equal(v, t_sd[k.replace(f"layer.{i}.", f"layer.{[3, 1][i]}.", 1)]), k
    # the whole teacher copied with the identity map computes exactly the teacher
    full = init_student_from_teacher(tiny(4, seed=3), teacher, layer_map("first", 4, 4))
    b = tok(TEXTS[:3], padding=True, return_tensors="pt", max_length=24, truncation=True)
    with torch.no_grad():
        assert torch.equal(full(**b).last_hidden_state, teacher(**b).last_hidden_state)


def test_init_width_mismatch_names_the_fields():
    with pytest.raises(ValueError, match=r"hidden_size: student 24 vs teacher 32.*intermediate_size"):
        init_student_from_teacher(tiny(2, hidden=24, ffn=50), tiny(4), [1, 3])


# ------------------------------------------------------------------------------------------------ #
# the distiller                                                                                       #
# ------------------------------------------------------------------------------------------------ #
def _cfg(**kw):
    base = dict(steps=4, batch_size=4, max_length=24, lr=1e-3, progress=False, layer_map="uniform")
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize("width", [32, 24])
def test_every_loss_trains(tok, width):
    """Each loss alone (same width: all; narrower: those with projections, which must be created) is
    finite and goes down after a few steps on one batch; the teacher's weights do not move."""
    names = [n for n in LOSS_NAMES if n not in LOGIT_LOSSES + LABEL_LOSSES]  # those: test_task_distill.py
    if width != 32:
        names = [n for n in names if n not in ("hidden_cosine", "patient")]
    teacher = tiny(4, seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for name in names:
        student = tiny(2, hidden=width, ffn=37 if width == 32 else 50, seed=2)
        cfg = _cfg(losses={name: 1.0}, init_from_teacher=False, steps=4, schedule="constant",
                   freeze_embeddings=name != "embedding_mse")
        d = Distiller(None if name == "simcse" else teacher, student, tok, cfg)
        if width != 32:
            want = {"sentence_mse": {"sentence"}, "sentence_cosine": {"sentence"}, "hidden_mse": {"hidden_mse"},
                    "embedding_mse": {"embedding_mse"}}.get(name, set())
            assert set(d.projections) == want, name
        batch = d._tokenize(TEXTS[:4])
        torch.manual_seed(0)
        before = d.compute_loss(batch)[1][name]
        for _ in range(cfg.steps):
            d.train_step(batch)
        torch.manual_seed(0)  # the same dropout masks as the "before" measurement
        after = d.compute_loss(batch)[1][name]
        assert torch.isfinite(torch.tensor(before)) and after < before, (name, before, after)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_logit_losses_need_logits(tok):
    with pytest.raises(ValueError, match="logits"):
        d = Distiller(tiny(2), tiny(1), tok, _cfg(losses={"soft_target": 1.0}))
        d.train_step(d._tokenize(TEXTS[:2]))


def test_config_errors(tok):
    with pytest.raises(ValueError, match="unknown loss"):
        DistillConfig(losses={"kl": 1.0}).validate()
    with pytest.raises(ValueError, match="precision"):
        DistillConfig(precision="bf16").validate()
    with pytest.raises(ValueError, match="teacher is None"):
        Distiller(None, tiny(1), tok, _cfg())
    with pytest.raises(ValueError, match="equal widths"):
        Distiller(tiny(2), tiny(1, hidden=24, ffn=50), tok, _cfg(losses={"patient": 1.0}, init_from_teacher=False))
    with pytest.raises(ValueError, match="nothing to train"):
        Distiller(tiny(2), tiny(1), tok, _cfg(losses={"embedding_mse": 1.0}, freeze_embeddings=True))
    with pytest.raises(ValueError, match="student_dropout"):
        DistillConfig(student_dropout=1.0).validate()


def test_student_dropout_zero_makes_training_passes_deterministic(tok):
    """student_dropout=0.0 sets every dropout of the student (attention probabilities included): two
    training-mode passes agree; with the config's own 0.1 they differ."""
    batch = dict(tok(TEXTS[:4], padding=True, truncation=True, max_length=24, return_tensors="pt"))
    for p, same in ((0.0, True), (None, False)):
        student = tiny(1)
        Distiller(tiny(2), student, tok, _cfg(student_dropout=p)).student.train()
        h1, h2 = (student(**batch).last_hidden_state for _ in range(2))
        assert torch.equal(h1, h2) == same, f"student_dropout={p}"


def test_resume_is_bit_identical(tok, tmp_path):
    """N steps in one go == N/2 steps, checkpoint, a new Distiller resumed from it, N/2 more — with dropout,
    bf16 stochastic rounding, AdamW state and a learned projection in play."""
    cfg = dict(losses={"hidden_mse": 1.0, "sentence_cosine": 0.5, "attention_kl": 1.0}, steps=4,
               precision="bf16-stochastic", freeze_embeddings=True, init_from_teacher=False, seed=5,
               warmup_steps=2)
    teacher = tiny(3, seed=1)

    torch.manual_seed(0)
    a = Distiller(teacher, tiny(2, hidden=24, ffn=50, seed=2), tok, _cfg(**cfg))
    a.fit(TEXTS)

    torch.manual_seed(0)
    b = Distiller(teacher, tiny(2, hidden=24, ffn=50, seed=2), tok, _cfg(**cfg, checkpoint_dir=str(tmp_path)))
    b.fit(TEXTS, stop_at=2)
    path = tmp_path / "step-000002.safetensors"
    assert path.is_file()
    torch.rand(1000)  # move the global RNG: resume must restore it
    c = Distiller(teacher, tiny(2, hidden=24, ffn=50, seed=9), tok, _cfg(**cfg))
    c.fit(TEXTS, resume_from=path)

    assert c.step == a.step == 4
    assert c.history["loss"] == a.history["loss"]
    for (name, pa), pc in zip(list(a.student.named_parameters()) + list(a.projections.named_parameters()),
                              list(c.student.parameters()) + list(c.projections.parameters())):
        assert torch.equal(pa, pc), name
    # and it really trained: the resumed run is not the init
    assert not torch.equal(c.student.encoder.layer[0].attention.self.query.weight,
                           tiny(2, hidden=24, ffn=50, seed=2).encoder.layer[0].attention.self.query.weight)


def test_checkpoint_errors(tok, tmp_path):
    d = Distiller(tiny(2), tiny(1), tok, _cfg())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        d.load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a bertsilicon.distill checkpoint"):
        d.load_checkpoint(tmp_path / "other.safetensors")


def test_bf16_weights_stochastic_rounding_keeps_small_updates(tok):
    """Weights kept as bf16 values only: with updates far below half a bf16 ulp, round-to-nearest throws
    every update away (the weights never move), stochastic rounding moves them (unbiased in expectation)."""
    teacher = tiny(2, seed=1)
    moved = {}
    for precision in ("bf16-nearest", "bf16-stochastic"):
        student = tiny(1, seed=2)
        cfg = _cfg(losses={"sentence_mse": 1.0}, precision=precision, lr=1e-6, weight_decay=0.0, steps=3,
                   schedule="constant", freeze_embeddings=True, grad_clip=None, init_from_teacher=False)
        d = Distiller(teacher, student, tok, cfg)
        w = student.encoder.layer[0].intermediate.dense.weight
        start = w.detach().clone()
        assert torch.equal(start, start.bfloat16().float())  # rounded to bf16 at construction
        d.fit(TEXTS[:8])
        assert torch.equal(w, w.bfloat16().float()), precision  # still bf16 values after the steps
        big = start.abs() > 1e-2  # 1e-6 << half an ulp (>= 2^-15) of these
        moved[precision] = float((w != start)[big].double().mean())
    assert moved["bf16-nearest"] == 0.0
    assert moved["bf16-stochastic"] > 0.001


def test_periodic_evaluation_and_history(tok):
    calls = []

    def eval_fn(model):
        assert not model.training
        calls.append(1)
        return {"n": float(len(calls))}

    d = Distiller(tiny(2), tiny(1), tok, _cfg(steps=5, eval_every=2, losses={"sentence_mse": 1.0}), eval_fn=eval_fn)
    hist = d.fit(TEXTS[:10])
    assert [e["step"] for e in hist["eval"]] == [2, 4, 5]
    assert hist["step"] == [1, 2, 3, 4, 5] and len(hist["loss"]) == 5
    # batches: each epoch is a permutation of all texts
    seen = [i for s in range(5) for i in d.batch_indices(s, 10)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
