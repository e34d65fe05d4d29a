"""Early-exit models on disk (plain and optimized), self-distillation of the branches, and the profiler's
expected cost from an exit-layer histogram."""
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import bertsilicon
from bertsilicon import early_exit as ee_mod
from bertsilicon.early_exit.artifact import BRANCH_MANIFEST, BRANCH_TENSORS
from bertsilicon.early_exit.inference import layer_logits
from bertsilicon.profiler.early_exit import early_exit_cost
from bertsilicon.tasks import task
from test_early_exit import batch, optimized, with_branches, bert, clear_speed


@pytest.mark.parametrize("precision", [None, "int8"])
def test_save_load_same_outputs_and_exit_layers(tmp_path, precision):
    ee = with_branches(bert()) if precision is None else optimized(bert, precision)
    ids, mask = batch()
    speed = clear_speed(ee_mod.normalized_entropy(layer_logits(ee, ids, mask)))
    before = ee_mod.classify(ee, ids, mask, speed=speed)
    ee_mod.save(ee, tmp_path / "ee")
    loaded = ee_mod.load(tmp_path / "ee")
    after = ee_mod.classify(loaded, ids, mask, speed=speed)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.exit_layer, before.exit_layer)
    assert 1 < len(set(before.exit_layer.tolist()))
    assert hasattr(loaded.model, "bertsilicon_report") == (precision is not None)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=BRANCH_MANIFEST):
        ee_mod.load(tmp_path)
    ee = with_branches(bert(layers=2))
    ee_mod.save(ee, tmp_path / "ee")
    (tmp_path / "ee" / BRANCH_MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        ee_mod.load(tmp_path / "ee")
    ee_mod.save(with_branches(bert(layers=3)), tmp_path / "ee3")
    (tmp_path / "ee" / BRANCH_MANIFEST).write_text((tmp_path / "ee3" / BRANCH_MANIFEST).read_text())
    with pytest.raises(ValueError, match="branches must hold|does not hold"):
        ee_mod.load(tmp_path / "ee")
    (tmp_path / "ee3" / BRANCH_TENSORS).unlink()
    with pytest.raises(FileNotFoundError, match=BRANCH_TENSORS):
        ee_mod.load(tmp_path / "ee3")


def test_self_distillation_moves_branches_only():
    torch.manual_seed(3)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96, num_labels=4)
    ee = with_branches(BertForSequenceClassification(cfg).eval())  # branches far from the final head
    tok = bertsilicon.load_tokenizer()
    texts = list(task().train.texts[:48])
    backbone = {k: v.clone() for k, v in ee.model.state_dict().items()}
    losses = ee_mod.train_branches(ee, tok, texts, steps=30, batch_size=16, max_length=32, progress=False)
    assert losses[0] > 0.1 and losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, ee.model.state_dict()[k]) for k, v in backbone.items())
    with pytest.raises(ValueError, match="steps"):
        ee_mod.train_branches(ee, tok, texts, steps=0)


def test_expected_cost_from_the_histogram():
    cfg = BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=96, num_labels=4)
    model = BertForSequenceClassification(cfg)
    parts = bertsilicon.profile(model, batch_size=1, seq_len=24, hardware="xeon-8380").per_layer()
    head = parts["pooler"]["flops"] + parts["head"]["flops"]
    everyone_last = early_exit_cost(model, [0, 0, 0, 5], batch_size=1, seq_len=24, hardware="xeon-8380")
    # every sample runs every layer and a classifier after each: the full model plus three branches
    assert everyone_last["expected_flops"] == everyone_last["full_flops"] + 3 * head
    # two samples: one leaves after layer 1, one after layer 4: layers 2..4 and their classifiers at half
    half = early_exit_cost(model, [1, 0, 0, 1], batch_size=1, seq_len=24, hardware="xeon-8380")
    layer = [parts[f"layer {i}"]["flops"] for i in range(4)]
    expected = parts["embeddings"]["flops"] + layer[0] + head + 0.5 * sum(x + head for x in layer[1:])
    assert half["expected_flops"] == pytest.approx(expected, rel=1e-12)
    assert half["reach"] == [1.0, 0.5, 0.5, 0.5]
    assert half["latency_speedup"] > 1 and half["mean_exit_layer"] == 2.5
    with pytest.raises(ValueError, match="exit_counts has 3 entries"):
        early_exit_cost(model, [1, 0, 1], hardware="xeon-8380")
    with pytest.raises(ValueError, match="exit_counts must be"):
        early_exit_cost(model, [0, 0, 0, 0], hardware="xeon-8380")


def test_cli_optimize_and_eval(tmp_path, capsys):
    from bertsilicon.cli import main

    assert main(["early-exit", "eval", str(tmp_path)]) != 0  # not an early-exit folder: a one-line error
    assert "early_exit.json" in capsys.readouterr().err
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, num_labels=41)
    torch.manual_seed(4)
    ee_mod.save(with_branches(BertForSequenceClassification(cfg).eval()), tmp_path / "plain")
    assert main(["early-exit", "optimize", str(tmp_path / "plain"), "--precision", "fp32",
                 "--out", str(tmp_path / "fp32")]) == 0
    assert main(["early-exit", "eval", str(tmp_path / "fp32"), "--split", "dev", "--limit", "40", "--speed", "0", "0.5",
                 "--json", str(tmp_path / "eval.json")]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r["speed"] for r in rows] == [0.0, 0.5] and rows[0]["mean_exit_layer"] == 2.0
    assert rows[0]["layers_run_fraction"] == 1.0 and rows[1]["layers_run_fraction"] <= 1.0


@pytest.mark.parametrize("batch_size", [1, 3])
def test_expected_latency_with_the_measured_overhead(batch_size):
    """Every sample leaving after layer 1 against every sample running to the last: the roofline's layers and
    classifiers plus the per-batch setup and a check at every layer the samples pass before the last."""
    cfg = BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=96, num_labels=4)
    model = BertForSequenceClassification(cfg)
    parts = bertsilicon.profile(model, batch_size=batch_size, seq_len=17, hardware="xeon-8380").per_layer()
    lat = {k: v["latency_s"] for k, v in parts.items()}
    head = lat["pooler"] + lat["head"]
    overhead = {"setup": (3e-5, 2e-6), "check": (1.1e-5, 7e-7)}
    setup, check = 3e-5 + 2e-6 * batch_size, 1.1e-5 + 7e-7 * batch_size

    def cost(counts, over=overhead):
        return early_exit_cost(model, counts, batch_size=batch_size, seq_len=17, hardware="xeon-8380", overhead=over)

    first = cost([batch_size, 0, 0, 0])
    assert first["expected_latency_s"] == pytest.approx(lat["embeddings"] + lat["layer 0"] + head + setup + check,
                                                        rel=1e-12)
    assert first["expected_flops"] == pytest.approx(sum(parts[k]["flops"] for k in ("embeddings", "layer 0", "pooler",
                                                                                     "head")), rel=1e-12)
    last = cost([0, 0, 0, batch_size])
    assert last["full_latency_s"] == pytest.approx(sum(lat.values()), rel=1e-12)
    assert last["expected_latency_s"] == pytest.approx(sum(lat.values()) + 3 * head + setup + 3 * check, rel=1e-12)
    assert [row.get("check_s") for row in last["per_layer"]] == pytest.approx([check] * 3 + [None])
    roofline_only = cost([0, 0, 0, batch_size], over=None)
    assert roofline_only["expected_latency_s"] == pytest.approx(sum(lat.values()) + 3 * head, rel=1e-12)
    assert first["latency_speedup"] > 1 > last["latency_speedup"]
    for bad in ({"setup": (1e-5, 0.0)}, {"setup": (1e-5,), "check": (0, 0)}, {"setup": (-1, 0), "check": (0, 0)}, 3):
        with pytest.raises(ValueError, match="overhead must be"):
            cost([0, 0, 0, batch_size], over=bad)


def test_overhead_fit_shape_and_arguments():
    from bertsilicon.early_exit.overhead import exit_overhead_fit

    ee = ee_mod.attach_branches(bert(layers=2)).eval()  # branches copy the untrained head: no sample leaves
    tok = bertsilicon.load_tokenizer()

    def small_vocab(texts, **kw):  # the test model's 211-token vocabulary
        enc = tok(texts, **kw)
        return {"input_ids": enc["input_ids"] % 211, "attention_mask": enc["attention_mask"]}

    texts = list(task().dev.texts[:4])
    fit = exit_overhead_fit(ee, small_vocab, texts, batch_sizes=(1, 4), max_length=24, calls=2)
    assert sorted(fit["seconds"]) == [1, 4]
    assert all(len(fit[p]) == 2 and min(fit[p]) >= 0 for p in ("setup", "check"))
    with pytest.raises(ValueError, match="batch_sizes"):
        exit_overhead_fit(ee, small_vocab, texts, batch_sizes=(4, 1))
    with pytest.raises(ValueError, match="batch_sizes"):
        exit_overhead_fit(ee, small_vocab, texts, batch_sizes=(1, 5))
