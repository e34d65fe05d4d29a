"""bertsilicon.optimize on the families whose encoder layers are BertLayer clones: RoBERTa (DistilRoBERTa,
all-distilroberta-v1), XLM-RoBERTa (multilingual MiniLM students), CamemBERT and ELECTRA, on small random
models: every head, odd shapes (head dim 26, length 77, ragged padding with a fully padded row), the
position table's edges (RoBERTa-style positions start at pad_token_id + 1), refusals, a wrapper."""
import copy

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon.models.optimize import DEFAULT_INT8_BUDGET, supported_classes
from hf_parity import assert_fp32_head_matches_hf, draw_norms_and_biases
from hf_parity import rel_error as _compare
from numerics import assert_numerics, ragged_mask

B, L = 4, 77
MAX_POSITIONS = 80   # RoBERTa-style: 80 - pad_token_id (1) - 1 = 78 tokens at most; ELECTRA: 80
SMALL = dict(num_hidden_layers=2, hidden_size=78, num_attention_heads=3, intermediate_size=100,
             max_position_embeddings=MAX_POSITIONS, vocab_size=1000)
# class-name prefix -> (config class, what differs from SMALL, the report's family); ELECTRA-small-like
# embedding_size != hidden_size exercises embeddings_project (run by HF before the encoder, untouched by optimize)
FAMILIES = {"Roberta": (transformers.RobertaConfig, dict(pad_token_id=1), "RoBERTa"),
            "XLMRoberta": (transformers.XLMRobertaConfig, dict(pad_token_id=1), "XLM-RoBERTa"),
            "Camembert": (transformers.CamembertConfig, dict(pad_token_id=1), "CamemBERT"),
            "Electra": (transformers.ElectraConfig, dict(pad_token_id=0, embedding_size=32), "ELECTRA")}
BASES = [f"{prefix}Model" for prefix in FAMILIES]
HEADS = [n for n in supported_classes() if n.startswith(tuple(FAMILIES))]


def _family(cls_name):
    return next(p for p in FAMILIES if cls_name.startswith(p))


def _config(cls_name, **overrides):
    config_class, family, _ = FAMILIES[_family(cls_name)]
    return config_class(**{**SMALL, **family, **overrides})


def _build(cls_name, seed=0, **overrides):
    """HF's init makes every LayerNorm (1, 0) and every bias 0: a swapped LayerNorm or bias would go unseen, so
    they are drawn at random here too."""
    torch.manual_seed(seed + list(FAMILIES).index(_family(cls_name)))  # not the same weights in every family
    return draw_norms_and_biases(getattr(transformers, cls_name)(_config(cls_name, **overrides)).eval())


def _inputs(cls_name, seed=1):
    """Ids drawn away from the special ids (0..2) and the pad id at padded positions, as a tokenizer pads."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 2, L) if "MultipleChoice" in cls_name else (B, L)
    mask = ragged_mask(B, L, g).reshape(shape)
    ids = torch.randint(3, SMALL["vocab_size"], shape, generator=g)
    ids = ids.masked_fill(mask == 0, _config(cls_name).pad_token_id)
    return {"input_ids": ids, "attention_mask": mask}


def test_every_family_exports_its_heads():
    assert set(BASES) <= set(HEADS)
    for prefix in FAMILIES:  # base model + at least masked LM, sequence / token classification, QA, multiple choice
        assert sum(n.startswith(prefix) for n in HEADS) >= 6, prefix


@pytest.mark.parametrize("cls_name", HEADS)
@pytest.mark.parametrize("unpad", [True, False])
def test_every_head_fp32(cls_name, unpad):
    report = assert_fp32_head_matches_hf(_build(cls_name), _inputs(cls_name), unpad)
    assert report.replaced == [0, 1] and report.family == FAMILIES[_family(cls_name)][2]
    assert "random token ids" in report.calibration  # vocabulary 1000: not the built-in WordPiece


def test_electra_embeddings_project_is_kept():
    m = bertsilicon.optimize(_build("ElectraModel"), "fp32")
    assert isinstance(m.embeddings_project, torch.nn.Linear) and m.embeddings_project.in_features == 32
    assert m.bertsilicon_report.family == "ELECTRA"


@pytest.mark.parametrize("cls_name", BASES)
def test_bf16_follows_the_tolerance_rule(cls_name):
    """numerics rule: max error against HF in float64 <= 2x that of HF run in bf16 (+ one fp32 ulp)."""
    m = _build(cls_name)
    inputs = _inputs(cls_name)
    with torch.no_grad():
        ref64 = copy.deepcopy(m).double()(**inputs).last_hidden_state
        hf_bf16 = copy.deepcopy(m).to(torch.bfloat16)(**inputs).last_hidden_state
        out = bertsilicon.optimize(m, "bf16")(**inputs).last_hidden_state
    assert out.dtype == torch.float32
    real = inputs["attention_mask"].bool()
    assert_numerics(out[real], ref64[real], hf_bf16[real], f"optimize(bf16) {cls_name} vs HF bf16")
    assert {g for r in m.bertsilicon_report.layers for g in r.gemms.values()} == {"bf16"}


@pytest.mark.parametrize("cls_name", BASES)
def test_int8_runs_and_reports(cls_name):
    m = _build(cls_name)
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "int8", smooth=0.5)
    report = m.bertsilicon_report
    assert report.replaced == [0, 1] and report.error_budget == DEFAULT_INT8_BUDGET
    for r in report.layers:  # within budget after the fallback rule; every GEMM moved is reported with its reason
        assert 0 < r.rel_error <= DEFAULT_INT8_BUDGET and set(r.gemms) == {"qkv", "o", "up", "down"}
        assert len(r.fallbacks) == sum(g != "int8" for g in r.gemms.values())
    assert report.end_to_end["sentences"] == 8 and report.end_to_end["min_pooled_cosine"] >= 0.995  # DESIGN target
    assert f"({report.family}), precision=int8" in str(report)
    inputs = _inputs(cls_name)
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    # the stack's error is about the sum of its layers' (post-LayerNorm layers do not amplify it): what the report
    # measured on the calibration batch, x2 for another batch (measured: 3.8e-4..8.6e-4 against sums of 5.7e-4..1.1e-3)
    err = _compare(got, want, inputs["attention_mask"], padded_positions_too=False)
    assert 0 < err <= 2 * sum(r.rel_error for r in report.layers)


@pytest.mark.parametrize("cls_name,longest", [(c, MAX_POSITIONS - 2) for c in ("RobertaModel", "XLMRobertaModel", "CamembertModel")]
                         + [("ElectraModel", MAX_POSITIONS)])
def test_position_table_edges(cls_name, longest):
    """The longest input HF can embed is accepted (and matches HF); one token more is a clear ValueError naming
    the limit, where HF itself fails in its embeddings (index out of range or size mismatch; CUDA: a device assert)."""
    m = _build(cls_name)
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp32")
    ids = torch.randint(3, SMALL["vocab_size"], (2, longest + 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = m(input_ids=ids[:, :longest]).last_hidden_state, ref(input_ids=ids[:, :longest]).last_hidden_state
        assert float((got - want).norm() / want.norm()) <= 1e-5
        with pytest.raises((IndexError, RuntimeError)):  # HF: index out of range, or a size mismatch
            ref(input_ids=ids)
        with pytest.raises(ValueError, match=f"input length {longest + 1} exceeds.*max_length={longest}\\)") as err:
            m(input_ids=ids)
        embeds = torch.randn(1, longest + 1, m.config.embedding_size if cls_name == "ElectraModel" else 78)
        with pytest.raises(ValueError, match=f"max_length={longest}\\)"):  # inputs_embeds: positions numbered alike
            m(inputs_embeds=embeds)
        assert m(inputs_embeds=embeds[:, :longest]).last_hidden_state.shape == (1, longest, 78)
    if cls_name == "ElectraModel":
        assert f"(max_position_embeddings={MAX_POSITIONS})" in str(err.value)
    else:
        assert (f"(max_position_embeddings={MAX_POSITIONS} with positions numbered from pad_token_id + 1 = 2: "
                f"at most {longest} tokens)") in str(err.value)


def test_position_limit_follows_pad_token_id():
    m = bertsilicon.optimize(_build("RobertaModel", pad_token_id=0), "fp32")  # positions from 1: 79 tokens
    ids = torch.randint(3, 1000, (1, MAX_POSITIONS))
    with torch.no_grad():
        assert m(input_ids=ids[:, :-1]).last_hidden_state.shape[1] == MAX_POSITIONS - 1
        with pytest.raises(ValueError, match="pad_token_id \\+ 1 = 1: at most 79 tokens"):
            m(input_ids=ids)


@pytest.mark.parametrize("vocab_size", [30522, 1000])  # the built-in tokenizer's texts / random ids
def test_calibration_fits_a_short_position_table(vocab_size):
    """The calibration batch is cut to the adapter's limit (40 - 1 - 1 = 38 tokens), not to
    max_position_embeddings: one token more and HF's own embeddings index past the table."""
    m = bertsilicon.optimize(_build("RobertaModel", max_position_embeddings=40, vocab_size=vocab_size), "fp32")
    report = m.bertsilicon_report
    assert report.replaced == [0, 1] and report.end_to_end["rel_error"] <= 1e-5


@pytest.mark.parametrize("overrides,cls_name,match", [
    (dict(is_decoder=True), "RobertaForCausalLM", "decoder"),
    (dict(is_decoder=True, add_cross_attention=True), "XLMRobertaForCausalLM", "cross-attention"),
    (dict(hidden_act="silu"), "CamembertModel", "unsupported activation hidden_act='silu'"),
    (dict(hidden_act="gelu_fast"), "ElectraForPreTraining", "unsupported activation"),
    (dict(position_embedding_type="relative_key"), "RobertaModel", "relative positions"),
])
def test_unsupported_layers_are_kept_with_reason(overrides, cls_name, match):
    m = _build(cls_name, **overrides)
    ref = copy.deepcopy(m)
    with pytest.warns(UserWarning, match=match):
        bertsilicon.optimize(m, "fp32")
    rep = m.bertsilicon_report
    assert rep.replaced == [] and len(rep.kept) == 2 and all(match in why for _, why in rep.kept)
    assert match in rep.refused and "NOT optimized" in str(rep)
    assert type(m.base_model.encoder.layer[0]).__name__.endswith("Layer")
    inputs = _inputs(cls_name)
    with torch.no_grad():
        assert torch.equal(m(**inputs)[0], ref(**inputs)[0])
    bertsilicon.restore(m)


def test_model_inside_a_wrapper_is_found():
    class Encoder(torch.nn.Module):  # e.g. a sentence embedder holding a RobertaModel
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.proj = torch.nn.Linear(78, 16)

        def forward(self, **inputs):
            return self.proj(self.model(**inputs).last_hidden_state)

    inner = _build("RobertaModel")
    wrapper = Encoder(inner)
    ref = copy.deepcopy(wrapper)
    inputs = _inputs("RobertaModel")
    assert bertsilicon.optimize(wrapper, "fp32") is wrapper
    assert wrapper.bertsilicon_report is inner.bertsilicon_report and inner.bertsilicon_report.family == "RoBERTa"
    with torch.no_grad():
        got, want = wrapper(**inputs), ref(**inputs)
        assert _compare(got, want, inputs["attention_mask"], padded_positions_too=False) <= 1e-5
        bertsilicon.restore(wrapper)
        assert not hasattr(inner, "bertsilicon_report") and torch.equal(wrapper(**inputs), want)


def test_unsupported_model_error_names_the_new_families():
    with pytest.raises(TypeError, match="RobertaModel.*XLMRobertaModel") as err:
        bertsilicon.optimize(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    for name in ("CamembertModel", "ElectraModel", "RobertaForSequenceClassification"):
        assert name in str(err.value)
