"""Prepared copies follow the model's parameters (FusedEncoderLayer.sync_prepared).

The fused layers hold copies made at optimize time (concatenated qkv weight and bias, bf16 / fp16 casts,
the fp16 weight's values in fp32, int8 weights, scales and biases). Changed afterwards — ``load_state_dict``
of another checkpoint (copies into the existing parameters), an in-place ``mul_``, a new ``nn.Parameter`` —
the next forward must use the new values: bit-identical to a model optimized from them directly, written
into the same tensors (data_ptr unchanged: captured CUDA graphs read them), on the cpu and reference
backends, packed and padded. A shape change is a clear error.
"""
import copy

import pytest
import torch
import transformers
from torch import nn

import bertsilicon
from bertsilicon import quant
from bertsilicon.models.layers import GEMMS
from numerics import ragged_mask

CPU_BUILT = bertsilicon.ops.backend_status()["cpu"] is None
BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not CPU_BUILT, reason="C++ extension not built")),
            "reference"]


def _bert(seed: int) -> transformers.BertModel:
    cfg = bertsilicon.student_config("bert-base", num_hidden_layers=2, hidden_size=78, num_attention_heads=3,
                                     intermediate_size=100, max_position_embeddings=128)
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def _inputs(seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (4, 77), generator=g), "attention_mask": ragged_mask(4, 77, g)}


def _optimize(model, precision, backend, unpad=True):
    # int8: no SmoothQuant (its factors come from calibration, which differs per checkpoint) and a budget no
    # layer exceeds (so both models keep every GEMM int8)
    kw = {"error_budget": 1.0, "smooth": None} if precision == "int8" else {}
    return bertsilicon.optimize(model, precision, backend=backend, unpad=unpad, calibration=_inputs(9), **kw)


def _prepared(model) -> dict:
    """{(layer, gemm, buffer): tensor} of every prepared copy."""
    return {(i, g, name): t for i, layer in enumerate(model.encoder.layer) for g in GEMMS
            for name, t in layer._modules[g].prepared_tensors().items() if t is not None}


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8"])
def test_load_state_dict_after_optimize_equals_optimizing_that_checkpoint(precision, backend):
    inputs = _inputs()
    m = _optimize(_bert(0), precision, backend)
    checkpoint = _bert(1)
    direct = _optimize(copy.deepcopy(checkpoint), precision, backend)
    assert [r.gemms for r in m.bertsilicon_report.layers] == [r.gemms for r in direct.bertsilicon_report.layers]
    before = _out(m, inputs)
    prepared = _prepared(m)
    assert prepared and {g for (_, g, _) in prepared} >= {"qkv"}  # fp32 too: the concatenated qkv weight
    ptrs = {k: t.data_ptr() for k, t in prepared.items()}

    m.load_state_dict(checkpoint.state_dict())
    assert all(layer.sync_prepared() for layer in m.encoder.layer)  # something was re-derived in each
    assert not any(layer.sync_prepared() for layer in m.encoder.layer)  # then nothing is stale
    got, want = _out(m, inputs), _out(direct, inputs)
    assert not torch.equal(got, before)
    assert torch.equal(got, want)
    after = _prepared(m)
    assert after.keys() == prepared.keys() and all(after[k] is prepared[k] for k in prepared)
    assert {k: t.data_ptr() for k, t in after.items()} == ptrs
    for k, t in _prepared(direct).items():
        assert torch.equal(after[k], t), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_change_and_replacement_reach_both_paths(backend):
    """bf16 padded (unpad=False): in place on one weight, then a new Parameter for a q bias; each time the
    output changes and equals a model optimized from the changed weights, on the one-call and per-op path."""
    inputs = _inputs()
    ref = _bert(0)  # the same changes applied to a plain HF copy, optimized afresh each time
    m = _optimize(copy.deepcopy(ref), "bf16", backend, unpad=False)
    hf = m.encoder.__dict__["original"].layer
    before = _out(m, inputs)
    with torch.no_grad():
        hf[1].intermediate.dense.weight.mul_(2)
        ref.encoder.layer[1].intermediate.dense.weight.mul_(2)
    changed = _out(m, inputs)
    want = _out(_optimize(copy.deepcopy(ref), "bf16", backend, unpad=False), inputs)
    assert not torch.equal(changed, before) and torch.equal(changed, want)

    q = hf[0].attention.self.query
    new_bias = torch.randn_like(q.bias)
    q.bias = nn.Parameter(new_bias.clone())  # replaced, not written: its identity changed
    with torch.no_grad():
        ref.encoder.layer[0].attention.self.query.bias.copy_(new_bias)
    replaced = _out(m, inputs)
    for layer in m.encoder.layer:
        layer.one_call = False
    per_op = _out(m, inputs)
    want = _out(_optimize(copy.deepcopy(ref), "bf16", backend, unpad=False), inputs)
    assert not torch.equal(replaced, changed) and torch.equal(replaced, want) and torch.equal(per_op, want)


@pytest.mark.skipif(not CPU_BUILT, reason="C++ extension not built")
def test_int8_requantizes_with_the_calibrated_smoothing_factors():
    inputs = _inputs()
    m = bertsilicon.optimize(_bert(0), "int8", smooth=0.5, error_budget=1.0, calibration=_inputs(9))
    layer = m.encoder.layer[0]
    o = layer.o
    smooth, inv_smooth = o.smooth.clone(), o.inv_smooth.clone()
    ptr = o.w_q.data_ptr()
    before = _out(m, inputs)
    dense = m.encoder.__dict__["original"].layer[0].attention.output.dense
    with torch.no_grad():
        dense.weight.mul_(-1.5)
        dense.bias.add_(0.5)
    got = _out(m, inputs)
    w_q, w_scale = quant.quantize_weight(dense.weight, smooth)
    assert torch.equal(o.w_q, w_q) and torch.equal(o.w_scale, w_scale) and torch.equal(o.bias, dense.bias)
    assert torch.equal(o.smooth, smooth) and torch.equal(o.inv_smooth, inv_smooth) and o.w_q.data_ptr() == ptr
    assert not torch.equal(got, before)
    for fused in m.encoder.layer:
        fused.one_call = False
    assert torch.equal(_out(m, inputs), got)


def test_a_shape_change_is_a_clear_error():
    m = _optimize(_bert(0), "fp32", "reference")
    q = m.encoder.__dict__["original"].layer[0].attention.self.query
    q.weight = nn.Parameter(torch.randn(q.weight.shape[0] + 1, q.weight.shape[1]))
    with pytest.raises(ValueError, match=r"GEMM \[234, 78\].*now weight \(235, 78\).*restore.*optimize"):
        _out(m, _inputs())
