"""bertsilicon.optimize on the real all-MiniLM-L6-v2 and real text (the accuracy contract).

fp32: relative error <= 1e-5 vs HF fp32. bf16/fp16: numerics rule vs HF run in the same dtype, both
measured against HF in float64. int8 (SmoothQuant alpha 0.5 + per-layer fallback): mean-pooled
cosine >= 0.995 for every sentence vs HF fp32, kNN module accuracy within 1 point of fp32.
Works through transformers.pipeline and sentence_transformers.SentenceTransformer.
"""
import copy

import pytest
import torch

import bertsilicon
from bertsilicon.models.eval import embed, knn_accuracy, mean_pool, pooled_cosines
from numerics import assert_numerics


@pytest.fixture(scope="module")
def tok():
    return bertsilicon.load_tokenizer()


@pytest.fixture(scope="module")
def texts():
    # real text, a few dozen sentences: short docstrings and long documentation paragraphs (<= 128 tokens)
    return (bertsilicon.data.corpus("docstrings").subset(12, seed=7).texts
            + bertsilicon.data.corpus("pydoc").subset(12, seed=7).texts)


@pytest.fixture(scope="module")
def batch(tok, texts):
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture(scope="module")
def hf_fp32(batch):
    m = bertsilicon.load_student("minilm-l6")
    with torch.no_grad():
        return m(**batch)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("unpad", [True, False])
def test_fp32_matches_hf(batch, hf_fp32, unpad):
    m = bertsilicon.load_student("minilm-l6")
    bertsilicon.optimize(m, "fp32", unpad=unpad)
    assert type(m).__name__ == "BertModel"
    with torch.no_grad():
        out = m(**batch)
    real = batch["attention_mask"].bool()
    assert _rel(out.last_hidden_state[real], hf_fp32.last_hidden_state[real]) <= 1e-5
    assert _rel(out.pooler_output, hf_fp32.pooler_output) <= 1e-5
    if unpad:  # padding-free: padded positions are 0 (documented)
        assert torch.equal(out.last_hidden_state[~real], torch.zeros_like(out.last_hidden_state[~real]))
    else:  # padded path: padded positions as HF computes them
        assert _rel(out.last_hidden_state, hf_fp32.last_hidden_state) <= 1e-5
    report = m.bertsilicon_report
    assert report.replaced == list(range(6)) and not report.kept
    assert all(r.rel_error < 1e-5 for r in report.layers)
    assert "fused" in str(report) and "rel err" in str(report)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precisions_follow_the_tolerance_rule(batch, precision, dtype):
    batch = {k: v[8:16] for k, v in batch.items()}  # 4 docstrings + 4 paragraphs: HF fp16/fp64 on CPU are slow
    ref_model = bertsilicon.load_student("minilm-l6").double()
    with torch.no_grad():
        ref64 = ref_model(**batch).last_hidden_state
        hf_half = bertsilicon.load_student("minilm-l6", dtype=dtype)(**batch).last_hidden_state
    m = bertsilicon.optimize(bertsilicon.load_student("minilm-l6"), precision)
    with torch.no_grad():
        out = m(**batch).last_hidden_state
    assert out.dtype == torch.float32  # outputs in the model's dtype
    real = batch["attention_mask"].bool()
    assert_numerics(out[real], ref64[real], hf_half[real], f"optimize({precision}) vs HF {dtype}")
    assert {g for r in m.bertsilicon_report.layers for g in r.gemms.values()} == {precision}


@pytest.fixture(scope="module")
def int8_model():
    calib = bertsilicon.data.corpus("pydoc").subset(8, seed=11).texts  # disjoint from the test texts' seed
    return bertsilicon.optimize(bertsilicon.load_student("minilm-l6"), "int8", smooth=0.5, calibration=calib)


def test_int8_pooled_cosine_every_sentence(int8_model, tok, texts):
    ref = embed(bertsilicon.load_student("minilm-l6"), tok, texts)
    got = embed(int8_model, tok, texts)
    cos = pooled_cosines(got, ref)
    assert float(cos.min()) >= 0.995, f"worst sentence cosine {float(cos.min()):.5f}"
    report = int8_model.bertsilicon_report
    assert report.smooth == 0.5 and report.error_budget is not None
    # Pinned: with SmoothQuant 0.5 every one of the real MiniLM's 24 GEMMs stays int8 (each layer's int8 error is
    # well inside the budget). A wrapper that quietly moved a broken int8 GEMM to bf16 / fp32 would still pass the
    # cosine above; it fails here.
    assert [dict(r.gemms) for r in report.layers] == [dict.fromkeys(("qkv", "o", "up", "down"), "int8")] * 6
    for r in report.layers:  # every fallback is reported with its reason
        assert len(r.fallbacks) == sum(g != "int8" for g in r.gemms.values())


def test_int8_knn_module_accuracy_within_one_point(int8_model, tok):
    docs = bertsilicon.data.corpus("docstrings")  # all ~770 texts: at 120 one text is almost a point
    fp32 = bertsilicon.load_student("minilm-l6")
    acc32 = knn_accuracy(embed(fp32, tok, docs.texts, batch_size=32, max_length=64), docs.labels)
    acc8 = knn_accuracy(embed(int8_model, tok, docs.texts, batch_size=32, max_length=64), docs.labels)
    assert acc32 > 0.3  # the task is real: far above chance (56 modules)
    assert acc8 >= acc32 - 0.01, f"int8 kNN accuracy {acc8:.3f} vs fp32 {acc32:.3f}"


def test_pipeline_feature_extraction(tok, texts):
    from transformers import pipeline

    m = bertsilicon.load_student("minilm-l6")
    pipe = pipeline("feature-extraction", model=m, tokenizer=tok, framework="pt") if _pipeline_takes_framework() \
        else pipeline("feature-extraction", model=m, tokenizer=tok)
    before = [torch.tensor(o[0]) for o in pipe(texts[:4])]
    bertsilicon.optimize(pipe.model, "fp32")
    assert pipe.model is m and hasattr(m, "bertsilicon_report")
    after = [torch.tensor(o[0]) for o in pipe(texts[:4])]
    for a, b in zip(after, before):
        assert a.shape == b.shape and _rel(a, b) <= 1e-5


def _pipeline_takes_framework():
    import inspect

    from transformers import pipeline

    return "framework" in inspect.signature(pipeline).parameters


def test_sentence_transformers(texts):
    from sentence_transformers import SentenceTransformer

    texts = texts[8:16]
    st = SentenceTransformer(str(bertsilicon.models.minilm_path()), device="cpu", local_files_only=True)
    before = st.encode(texts, convert_to_tensor=True, batch_size=8)
    hf_model = st[0].auto_model
    assert bertsilicon.optimize(st, "fp32") is st
    assert hf_model.bertsilicon_report.replaced == list(range(6))
    after = st.encode(texts, convert_to_tensor=True, batch_size=8)
    assert _rel(after, before) <= 1e-5
    bertsilicon.restore(st)
    assert not hasattr(hf_model, "bertsilicon_report")
    assert torch.equal(st.encode(texts, convert_to_tensor=True, batch_size=8), before)


def test_restore_is_exact_and_state_dict_unchanged(batch, hf_fp32):
    m = bertsilicon.load_student("minilm-l6")
    keys = list(m.state_dict())
    params = [id(p) for p in m.parameters()]
    bertsilicon.optimize(m, "bf16")
    assert list(m.state_dict()) == keys and [id(p) for p in m.parameters()] == params
    assert type(m.encoder.layer[0]).__name__ == "FusedEncoderLayer"
    bertsilicon.restore(m)
    assert type(m.encoder.layer[0]).__name__ == "BertLayer"
    with torch.no_grad():
        out = m(**batch)
    assert torch.equal(out.last_hidden_state, hf_fp32.last_hidden_state)


def test_hidden_states_and_attentions(batch):
    batch = {k: v[8:16] for k, v in batch.items()}
    m = bertsilicon.load_student("minilm-l6")
    m.config._attn_implementation = "eager"  # sdpa returns no attention weights
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp32")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = ref(**batch, output_hidden_states=True, output_attentions=True)
        got = m(**batch, output_hidden_states=True)
        assert len(got.hidden_states) == len(want.hidden_states) == 7
        for g, w in zip(got.hidden_states, want.hidden_states):
            assert _rel(g[real], w[real]) <= 1e-5
        # attentions are not computed by the fused kernels: the call runs the original layers, exactly HF
        got = m(**batch, output_attentions=True)
    assert len(got.attentions) == len(want.attentions) == 6
    for g, w in zip(got.attentions, want.attentions):
        assert torch.equal(g, w)
    assert m.bertsilicon_report.runtime_fallbacks["output_attentions requested"] == 1
    assert "output_attentions requested x1" in str(m.bertsilicon_report)
