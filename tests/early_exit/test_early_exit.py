"""Early exit (FastBERT) on small random BERT / DistilBERT classifiers: speed=0 is the plain model bit for bit,
exit layers and logits against a float64 reference that runs each sample alone, compaction against masking
only, input order, and the argument checks."""
import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

import bertsilicon
from bertsilicon import early_exit as ee_mod
from bertsilicon.early_exit.branches import normalized_entropy
from bertsilicon.early_exit.inference import exit_layers, layer_logits

LENGTHS = (13, 1, 5, 9, 13, 2, 7)  # ragged, a length-1 sample, odd batch


def bert(seed=0, layers=4):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=211, hidden_size=96, num_hidden_layers=layers, num_attention_heads=3,
                     intermediate_size=200, num_labels=5, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def distilbert(seed=0):
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=211, dim=64, n_layers=3, n_heads=2, hidden_dim=130, num_labels=3,
                           max_position_embeddings=64)
    return DistilBertForSequenceClassification(cfg).eval()


def with_branches(model, seed=1):
    """Branches with spread-out confidence (a freshly initialised head is near-uniform: nothing would exit)."""
    ee = ee_mod.attach_branches(model)
    g = torch.Generator().manual_seed(seed)
    for l, b in enumerate(ee.branches):
        b.classifier.weight.data = torch.randn(b.classifier.weight.shape, generator=g) * (1.5 + l)
    return ee.eval()


def batch(lengths=LENGTHS, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 211, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids, mask


_OPTIMIZED = {}


def optimized(family, precision):
    """``with_branches(family())`` optimized at ``precision`` (built once per test run: calibration is the cost)."""
    key = (family.__name__, precision)
    if key not in _OPTIMIZED:
        ee = with_branches(family())
        bertsilicon.optimize(ee.model, precision)
        _OPTIMIZED[key] = ee.eval()
    return _OPTIMIZED[key]


def reference(ee, ids, mask):
    """Per sample alone, in float64: every classifier's logits ``[N, layers, C]`` and uncertainty ``[N, layers]``."""
    model = copy.deepcopy(ee.model).double()
    branches = copy.deepcopy(ee.branches).double()
    logits = []
    for i in range(len(ids)):
        one = ids[i:i + 1, :int(mask[i].sum())]
        states = model.base_model(input_ids=one, output_hidden_states=True).hidden_states[1:]
        per_layer = [b(states[l][:, 0]) for l, b in enumerate(branches)] + [model(input_ids=one).logits]
        logits.append(torch.cat(per_layer))
    logits = torch.stack(logits)
    return logits, normalized_entropy(logits)


def clear_speed(uncertainty, near=1e-3):
    """A speed that makes samples leave at different layers, at least ``near`` from every uncertainty (so a
    rounding difference cannot move a decision)."""
    u = uncertainty[:, :-1].flatten().sort().values
    for q in (0.5, 0.4, 0.6, 0.3, 0.7):
        s = float(torch.quantile(u.detach(), q))
        s += near * 2 if (u - s).abs().min() < near else 0.0
        if (u - s).abs().min() >= near and len(set(exit_layers(uncertainty, s).tolist())) > 1:
            return s
    raise AssertionError("no clear speed: the test's branches are not spread out")


@pytest.mark.parametrize("precision", [None, "fp32", "bf16", "int8"])  # None: the plain HF model
@pytest.mark.parametrize("family", [bert, distilbert])
def test_speed_zero_is_the_plain_model(family, precision):
    ee = with_branches(family()) if precision is None else optimized(family, precision)
    for lengths in (LENGTHS, (6, 6, 6)):  # ragged (the packed path) and no padding (the padded path)
        ids, mask = batch(lengths)
        plain = ee.model(input_ids=ids, attention_mask=mask).logits
        out = ee_mod.classify(ee, ids, mask, speed=0)
        assert torch.equal(out.logits, plain), lengths
        assert out.exit_layer.tolist() == [ee.num_layers] * len(lengths)
        assert torch.equal(layer_logits(ee, ids, mask)[:, -1], plain)


@pytest.mark.parametrize("family", [bert, distilbert])
def test_exit_layers_and_logits_against_float64_alone(family):
    ee = with_branches(family())
    ids, mask = batch()
    ref_logits, ref_u = reference(ee, ids, mask)
    speed = clear_speed(ref_u)
    out = ee_mod.classify(ee, ids, mask, speed=speed)
    expected = exit_layers(ref_u, speed)
    assert out.exit_layer.tolist() == expected.tolist()
    assert 1 < len(set(expected.tolist()))
    ref = ref_logits[torch.arange(len(ids)), expected - 1]
    # plain torch in fp32 (the HF layers), each sample alone, against the same float64 reference: the error budget
    alone = torch.cat([layer_logits(ee, ids[i:i + 1, :int(mask[i].sum())]) for i in range(len(ids))])
    budget = 2 * (alone.double() - ref_logits).abs().max() + 1e-5
    assert (out.logits.double() - ref).abs().max() <= budget
    assert (layer_logits(ee, ids, mask).double() - ref_logits).abs().max() <= budget
    assert torch.allclose(out.uncertainty.double(), ref_u[torch.arange(len(ids)), expected - 1], atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_fused_compaction_order_and_alone(precision):
    ee = optimized(bert, precision)
    ids, mask = batch()
    # every classifier's logits for each sample run alone at this precision: the reference decisions
    alone = torch.cat([layer_logits(ee, ids[i:i + 1, :int(mask[i].sum())]) for i in range(len(ids))])
    u = normalized_entropy(alone)
    speed = clear_speed(u)
    expected = exit_layers(u, speed)
    compact = ee_mod.classify(ee, ids, mask, speed=speed)
    masked = ee_mod.classify(ee, ids, mask, speed=speed, compact=False)
    assert compact.exit_layer.tolist() == expected.tolist()
    assert torch.equal(compact.logits, masked.logits) and torch.equal(compact.exit_layer, masked.exit_layer)
    ref = alone[torch.arange(len(ids)), expected - 1]
    assert torch.allclose(compact.logits, ref, rtol=1e-4, atol=1e-4)
    # rows each layer ran on: the samples still in (compaction), the whole batch (masking only)
    still_in = [(expected > l).sum().item() for l in range(ee.num_layers)]
    assert compact.rows_per_layer == still_in
    last = int(expected.max())
    assert masked.rows_per_layer == [len(ids)] * last + [0] * (ee.num_layers - last)
    # input order: a permuted batch gives the permuted outputs
    perm = torch.tensor([3, 0, 6, 2, 5, 1, 4])
    shuffled = ee_mod.classify(ee, ids[perm], mask[perm], speed=speed)
    assert shuffled.exit_layer.tolist() == compact.exit_layer[perm].tolist()
    assert torch.allclose(shuffled.logits, compact.logits[perm], rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    ee = with_branches(bert(layers=2))
    ids, mask = batch()
    for speed in (-0.1, 1.5, "fast", True):
        with pytest.raises(ValueError, match="speed"):
            ee_mod.classify(ee, ids, mask, speed=speed)
    with pytest.raises(TypeError, match="ee must be"):
        ee_mod.classify(ee.model, ids, mask)
    with pytest.raises(TypeError, match="sequence classifier"):
        ee_mod.attach_branches(ee.model.bert)
    with pytest.raises(ValueError, match="branches must hold"):
        ee_mod.EarlyExitModel(ee.model, [])
    ee.train()
    with pytest.raises(ValueError, match="training mode"):
        ee_mod.classify(ee, ids, mask)
