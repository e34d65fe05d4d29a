"""optimize(..., keep_original=False): the original weights of the GEMMs that run on prepared copies become ``meta``
placeholders, outputs stay bit-identical to the model that keeps them, every call that would need them is a clear
error, and the report's ``weights held`` line counts what is held, by role. Small random BERT with odd sizes (head
dim 26, length 37) and ragged padding."""
import pytest
import torch
import transformers

import bertsilicon
from hf_parity import draw_norms_and_biases
from numerics import ragged_mask

B, L = 4, 37
BERT = dict(num_hidden_layers=2, hidden_size=78, num_attention_heads=3, intermediate_size=100,
            max_position_embeddings=64)


def _model(seed: int = 0) -> torch.nn.Module:
    cfg = bertsilicon.student_config("tinybert4", **BERT)
    cfg.initializer_range = 0.2
    torch.manual_seed(seed)
    return draw_norms_and_biases(transformers.BertForSequenceClassification(cfg).eval())


def _inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (B, L), generator=g), "attention_mask": ragged_mask(B, L, g)}


def _gemm_sources(model) -> list:
    return [lin for layer in model.bert.encoder.layer
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                        layer.attention.output.dense, layer.intermediate.dense, layer.output.dense)]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_dropping_the_originals_changes_no_output(precision):
    kept = bertsilicon.optimize(_model(), precision)
    dropped = bertsilicon.optimize(_model(), precision, keep_original=False)
    inputs = _inputs(seed=torch.randint(1 << 30, ()).item())
    with torch.no_grad():
        want = kept(**inputs).logits
    assert torch.equal(dropped(**inputs).logits, want)  # frozen: a call outside no_grad runs the same path
    gone = [lin for lin in _gemm_sources(dropped) if lin.weight.device.type == "meta"]
    # int8 and bf16 prepare every GEMM; fp32 copies only the q, k, v weights it concatenates
    assert len(gone) == (6 if precision == "fp32" else 12)
    assert all(lin.bias.device.type == "meta" for lin in gone)
    assert not any(p.requires_grad for p in dropped.parameters())


def test_calls_that_need_the_originals_are_clear_errors():
    model = bertsilicon.optimize(_model(), "int8", keep_original=False)
    inputs = _inputs(seed=3)
    with pytest.raises(ValueError, match=r"keep_original=False\) dropped them\), so there is nothing to restore"):
        bertsilicon.restore(model)
    with pytest.raises(ValueError, match=r"needs the original layers \(output_attentions"):
        model(**inputs, output_attentions=True)
    with pytest.raises(ValueError, match=r"needs the original layers \(training mode"):
        model.train()(**inputs)


def test_weights_held_counts_each_role_once():
    """int8: per GEMM an int8 [N, K] weight and fp32 scales and bias [N]; the originals as fp32 [N, K] + [N]."""
    kept = bertsilicon.optimize(_model(), "int8")
    dropped = bertsilicon.optimize(_model(), "int8", keep_original=False)
    sources = _gemm_sources(kept)
    int8_bytes = sum(lin.out_features * lin.in_features + 8 * lin.out_features for lin in sources)
    fp32_bytes = sum(4 * (lin.out_features * lin.in_features + lin.out_features) for lin in sources)
    tensors = {t.untyped_storage().data_ptr(): t for t in [*kept.bert.parameters(), *kept.bert.buffers()]}
    everything = sum(t.untyped_storage().nbytes() for t in tensors.values())  # SmoothQuant factors included
    w = kept.bertsilicon_report.weights
    assert w["int8 prepared"] == int8_bytes
    assert w["originals of prepared GEMMs"] == fp32_bytes
    assert w["other"] == everything - fp32_bytes - int8_bytes
    w = dropped.bertsilicon_report.weights
    assert "originals of prepared GEMMs" not in w and w["int8 prepared"] == int8_bytes
    assert w["other"] == everything - fp32_bytes - int8_bytes
    assert "weights held: int8 prepared" in str(dropped.bertsilicon_report)


def test_a_model_without_originals_saves_and_loads(tmp_path):
    model = bertsilicon.optimize(_model(), "int8", keep_original=False)
    inputs = _inputs(seed=5)
    with torch.no_grad():
        want = model(**inputs).logits
    loaded = bertsilicon.load(bertsilicon.save(model, tmp_path / "artifact"))
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, want)
    assert "originals of prepared GEMMs" not in loaded.bertsilicon_report.weights
