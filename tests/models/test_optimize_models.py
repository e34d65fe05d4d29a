"""bertsilicon.optimize mechanics on small random BERT / DistilBERT models (MobileBERT: test_optimize_mobilebert.py): every head, odd
shapes (head dim 26, length 77, ragged padding with a fully padded row), fallbacks, refusals, bad input."""
import copy
import warnings

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon.models.optimize import supported_classes
from hf_parity import assert_fp32_head_matches_hf, draw_norms_and_biases
from hf_parity import rel_error as _compare
from numerics import ragged_mask

B, L = 4, 77
SMALL_BERT = dict(num_hidden_layers=2, hidden_size=78, num_attention_heads=3, intermediate_size=100,
                  max_position_embeddings=128)
SMALL_DISTIL = dict(n_layers=2, dim=78, n_heads=3, hidden_dim=100, max_position_embeddings=128)


def _build(cls_name, seed=0, **overrides):
    cls = getattr(transformers, cls_name)
    family = "distilbert" if cls_name.startswith("DistilBert") else "bert-base"
    small = SMALL_DISTIL if family == "distilbert" else SMALL_BERT
    cfg = bertsilicon.student_config(family, **{**small, **overrides})
    torch.manual_seed(seed)
    return draw_norms_and_biases(cls(cfg).eval())


def _inputs(cls_name, seed=1, fully_padded_row=True):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 2, L) if "MultipleChoice" in cls_name else (B, L)
    mask = ragged_mask(shape[0] * (shape[1] if len(shape) == 3 else 1), L, g, fully_padded_row).reshape(shape)
    ids = torch.randint(1000, 30000, shape, generator=g)
    return {"input_ids": ids, "attention_mask": mask}


HEADS = [n for n in supported_classes() if n.startswith(("Bert", "DistilBert"))]  # other families: test_optimize_roberta.py


@pytest.mark.parametrize("cls_name", HEADS)
@pytest.mark.parametrize("unpad", [True, False])
def test_every_head_fp32(cls_name, unpad):
    assert assert_fp32_head_matches_hf(_build(cls_name), _inputs(cls_name), unpad).replaced == [0, 1]


@pytest.mark.parametrize("cls_name", ["BertModel", "DistilBertModel"])
def test_unpad_equals_padded_path_at_real_positions(cls_name):
    inputs = _inputs(cls_name, seed=5)
    outs = {}
    for unpad in (True, False):
        m = bertsilicon.optimize(_build(cls_name), "fp32", unpad=unpad)
        with torch.no_grad():
            outs[unpad] = m(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert torch.allclose(outs[True][real], outs[False][real], rtol=1e-5, atol=1e-5)
    assert not torch.isnan(outs[True]).any() and torch.equal(outs[True][~real], torch.zeros_like(outs[True][~real]))
    assert not real[-1].any()  # the fully padded row is all zeros on the padding-free path


def test_no_padding_and_explicit_reference_backend():
    m = _build("BertModel")
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "bf16", backend="reference")
    assert set(m.bertsilicon_report.backends_used.values()) == {"reference"}
    ids = _inputs("BertModel")["input_ids"]
    with torch.no_grad():
        got, want = m(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state
    assert got.dtype == torch.float32
    assert float((got - want).norm() / want.norm()) < 2e-2  # bf16 GEMMs


def test_int8_fallback_rule_moves_gemms_to_fp32():
    m = _build("BertModel", hidden_act="relu")
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "int8", error_budget=1e-9)  # nothing fits: every GEMM falls back
    for layer in m.bertsilicon_report.layers:
        assert set(layer.gemms.values()) == {"fp32"} and len(layer.fallbacks) == 4
        assert layer.rel_error < 1e-5
    assert "int8 -> fp32" in str(m.bertsilicon_report)
    inputs = _inputs("BertModel")
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    assert float((got[real] - want[real]).norm() / want[real].norm()) <= 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_int8_fallback_steps_through_bf16_where_it_is_native(monkeypatch, native):
    """A layer over budget moves GEMMs int8 -> bf16 first where bf16 is native, fp32 otherwise; the
    fused layers meet the budget they report, and the model's output follows them. (This small random
    model: int8 layer error ~3.5e-4, one GEMM int8 alone ~1e-4..2.2e-4, all four bf16 ~1e-4: a budget of
    2e-4 needs a few GEMMs moved and bf16 is enough for them.)"""
    from bertsilicon.backends import routing

    monkeypatch.setattr(routing, "native_bf16_gemm", lambda device, backend: native)
    m = _build("BertModel", hidden_act="relu")
    ref = copy.deepcopy(m)
    # all-int8 layers: 3.9e-4, 4.5e-4; with every GEMM bf16 ~2.5e-4: the budget is met within the bf16 steps
    bertsilicon.optimize(m, "int8", error_budget=3e-4)
    report = m.bertsilicon_report
    moved = {g for layer in report.layers for g in layer.gemms.values()} - {"int8"}
    assert moved == ({"bf16"} if native else {"fp32"})
    assert all(layer.rel_error <= 3e-4 for layer in report.layers)
    assert f"int8 -> {'bf16' if native else 'fp32'}" in str(report)
    inputs = _inputs("BertModel")
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    assert got.dtype == torch.float32
    assert float((got[real] - want[real]).norm() / want[real].norm()) < 3e-2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_cpu_gemms_called_directly_equal_the_public_ops(monkeypatch, precision):
    """PreparedLinear calls the cpu backend's packed GEMMs directly; the public ops give the same bits."""
    from bertsilicon.models import layers as fused_layer
    from bertsilicon.backends import registry, routing

    if registry.load("cpu") is not None:
        pytest.skip("C++ extension not built")
    m = bertsilicon.optimize(_build("BertModel", hidden_act="relu"), precision, smooth=0.5 if precision == "int8" else None)
    inputs = _inputs("BertModel")
    with torch.no_grad():
        direct = m(**inputs).last_hidden_state
        monkeypatch.setattr(fused_layer.PreparedLinear, "_cpu_gemm", lambda self, x: None)
        via_ops = m(**inputs).last_hidden_state
    torch.testing.assert_close(direct, via_ops, rtol=0, atol=0)


def test_int8_smooth_on_random_distilbert_with_odd_vocab():
    m = _build("DistilBertModel", vocab_size=997)  # not the built-in tokenizer: random-id calibration
    bertsilicon.optimize(m, "int8", smooth=0.5, error_budget=1.0)
    rep = m.bertsilicon_report
    assert "random token ids" in rep.calibration
    assert all(set(r.gemms.values()) == {"int8"} for r in rep.layers)
    assert rep.end_to_end["min_pooled_cosine"] > 0.99
    assert all(0 < r.rel_error < 0.1 for r in rep.layers)


def test_training_mode_runs_original_layers():
    m = _build("BertModel", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp32")
    m.train()
    ref.train()
    inputs = _inputs("BertModel")
    assert torch.equal(m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state)
    assert m.bertsilicon_report.runtime_fallbacks["training mode (fused layers are inference-only)"] == 1
    m.eval()
    bertsilicon.restore(m)
    assert not m.training and not m.encoder.training


@pytest.mark.parametrize("overrides,cls_name,match", [
    (dict(hidden_act="silu"), "BertModel", "unsupported activation"),
    (dict(is_decoder=True), "BertLMHeadModel", "decoder"),
])
def test_unsupported_layers_are_kept_with_reason(overrides, cls_name, match):
    m = _build(cls_name, **overrides)
    with pytest.warns(UserWarning, match=match):
        bertsilicon.optimize(m, "fp32")
    rep = m.bertsilicon_report
    assert rep.replaced == [] and len(rep.kept) == 2 and all(match in why for _, why in rep.kept)
    assert type(m.base_model.encoder.layer[0]).__name__ == "BertLayer"


def test_bad_input():
    with pytest.raises(TypeError, match="BertModel.*DistilBertModel"):
        bertsilicon.optimize(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="not optimized"):
        bertsilicon.restore(_build("BertModel"))
    for kwargs, match in [(dict(precision="int4"), "precision"), (dict(backend="gpu"), "backend"),
                          (dict(smooth=0.5), "smooth"), (dict(precision="int8", smooth=1.5), "smooth"),
                          (dict(cuda_graphs=True), "cuda_graphs"), (dict(error_budget=-1.0), "error_budget")]:
        m = _build("BertModel")
        with pytest.raises(ValueError, match=match):
            bertsilicon.optimize(m, **kwargs)
        assert not hasattr(m, "bertsilicon_report") and type(m.encoder.layer[0]).__name__ == "BertLayer"
    with torch.device("meta"):
        meta = transformers.BertModel(bertsilicon.student_config("bert-base", **SMALL_BERT))
    with pytest.raises(ValueError, match="meta"):
        bertsilicon.optimize(meta)

    m = bertsilicon.optimize(_build("BertModel"), "fp32")
    report = m.bertsilicon_report
    with pytest.warns(UserWarning, match="already optimized"):
        assert bertsilicon.optimize(m, "int8") is m
    assert m.bertsilicon_report is report and report.precision == "fp32"
    too_long = torch.randint(1000, 2000, (1, 129))
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        m(input_ids=too_long)
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        m(too_long)  # positional: bound to forward's parameters
    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        m(too_long[:, :10].float(), None)
    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        m(input_ids=too_long[:, :10].float())
    with pytest.raises(ValueError, match="attention_mask has length"):
        m(input_ids=too_long[:, :10], attention_mask=torch.ones(1, 9, dtype=torch.long))


@pytest.mark.parametrize("backend", ["reference", None])  # per-op path, and the cpu one-call path where built
def test_forward_never_reads_cu_seqlens_on_the_host(monkeypatch, backend):
    """The unpadded path builds cu_seqlens from the key mask once per forward, so no layer checks its values
    again (ops.check_cu_seqlens reads them on the host: on CUDA, one device sync per layer)."""
    m = _build("BertModel")
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp32", backend=backend)
    inputs = _inputs("BertModel")
    calls = []
    real_check = bertsilicon.ops.check_cu_seqlens
    monkeypatch.setattr(bertsilicon.ops, "check_cu_seqlens", lambda *a: calls.append(a) or real_check(*a))
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    assert calls == []
    assert _compare(got, want, inputs["attention_mask"], padded_positions_too=False) < 1e-5
    with pytest.raises(ValueError, match="end at T=5"):  # the public op still checks what it is given
        q = torch.randn(5, 3, 26)
        bertsilicon.ops.attention_varlen(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4)
    assert len(calls) == 1


def test_report_end_to_end_skips_fully_padded_calibration_rows():
    """A calibration batch with a fully padded row: that row pools to zeros on both sides (cosine 0 by
    definition), so the report's minimum cosine and sentence count are over the rows with real tokens."""
    m = _build("BertModel")
    inputs = _inputs("BertModel", fully_padded_row=True)
    assert not inputs["attention_mask"].any(1).all()
    bertsilicon.optimize(m, "fp32", calibration=inputs)
    e2e = m.bertsilicon_report.end_to_end
    assert e2e["sentences"] == int(inputs["attention_mask"].any(1).sum())
    assert e2e["min_pooled_cosine"] > 1 - 1e-9  # fp32: the same function within rounding


def test_fp16_on_cpu_is_fp16_operands_on_the_fp32_kernel():
    """An fp16 GEMM on a CPU (no fp16 arithmetic) runs on the cpu backend's fp32 kernel with fp16 operands:
    exactly linear(round_to(x, fp16), w.half().float()) — products exact, fp32 sums and output — and the
    layer's activations are fp32. Against float64 on the same fp16 operands it is fp32-accurate."""
    from bertsilicon.models.layers import PreparedLinear
    from bertsilicon.backends.cpu import gemm as _cpu_gemm

    if bertsilicon.ops.backend_status()["cpu"] is not None:
        pytest.skip("C++ extension not built")
    g = torch.Generator().manual_seed(3)
    K, N = 77, 130
    w, b, x = torch.randn(N, K, generator=g) * 0.2, torch.randn(N, generator=g), torch.randn(13, K, generator=g) * 3
    lin = PreparedLinear(w, b, "fp16")
    out = lin(x, "gelu")
    x16, w16 = x.half().float(), w.half().float()
    assert torch.equal(bertsilicon.ops.round_to(x, "fp16", backend="cpu"), x16)
    assert torch.equal(out, _cpu_gemm.linear_packed(x16, _cpu_gemm.pack_linear(w16), b.half(), "gelu"))
    ref = torch.nn.functional.gelu(x16.double() @ w16.double().T + b.half().double())
    assert out.dtype == torch.float32 and float((out.double() - ref).norm() / ref.norm()) < 1e-6

    m = _build("BertModel")
    hf = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp16")
    rep = m.bertsilicon_report
    assert rep.backends_used["linear[fp16]"] == "cpu" and any("fp16 on this CPU" in n for n in rep.notes)
    assert all(layer.compute_dtype == torch.float32 for layer in m.encoder.layer)
    inputs = _inputs("BertModel")
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, hf(**inputs).last_hidden_state
    assert _compare(got, want, inputs["attention_mask"], padded_positions_too=False) < 5e-3  # fp16 operands
    bertsilicon.optimize(bertsilicon.restore(m), "fp16", backend="reference")  # the reference keeps fp16 activations
    assert all(layer.compute_dtype == torch.float16 for layer in m.encoder.layer)


def test_fp16_on_the_reference_backend_keeps_no_fp32_weight_copy():
    from bertsilicon.models.layers import PreparedLinear

    w = torch.randn(8, 6)
    assert "weight_fp16_in_fp32" not in PreparedLinear(w, None, "fp16", backend="reference")._buffers


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8"])
def test_report_says_how_each_layer_runs(precision, monkeypatch):
    """model.bertsilicon_report: per fused layer, "one C++ call" (cpu backend) or "per op (why)"."""
    from bertsilicon.models.layers import base as layer_base

    inputs = _inputs("BertModel")
    if bertsilicon.ops.backend_status()["cpu"] is None:
        m = bertsilicon.optimize(_build("BertModel"), precision, backend="cpu", calibration=inputs)
        rep = m.bertsilicon_report
        assert [r.call for r in rep.layers] == ["one C++ call"] * 2 and "one C++ call" in str(rep)
        m.encoder.layer[1].one_call = False
        assert m.encoder.layer[1].call_path() == "per op (layer.one_call = False)"
        monkeypatch.setattr(layer_base, "ONE_CALL", False)  # what BERTSILICON_LAYER_ONE_CALL=0 sets
        off = bertsilicon.optimize(_build("BertModel"), precision, backend="cpu", calibration=inputs)
        assert [r.call for r in off.bertsilicon_report.layers] == ["per op (layer.one_call = False)"] * 2
    ref = bertsilicon.optimize(_build("BertModel"), precision, backend="reference", calibration=inputs)
    assert [r.call for r in ref.bertsilicon_report.layers] == ["per op (backend='reference')"] * 2
    assert "per op (backend='reference')" in str(ref.bertsilicon_report)


# ---------------------------------------------------------------------------------------------- #
# the encoder's mask: HF hands it 2-D, 4-D bool or 4-D additive                                   #
# ---------------------------------------------------------------------------------------------- #
@pytest.fixture
def host_reads(monkeypatch):
    """How often a tensor is read on the host (``tolist`` / ``bool`` / ``item``: a device sync each on CUDA)."""
    count = [0]
    for name in ("tolist", "__bool__", "item"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            count[0] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


def test_key_padding_mask_from_every_form_hf_passes(host_reads):
    from bertsilicon.models.encoder import NotKeyPadding, key_padding_mask

    g = torch.Generator().manual_seed(40)
    real = ragged_mask(5, 13, g).bool()
    as_bool = real[:, None, None, :].expand(5, 1, 13, 13)          # HF's SDPA mask: True = attend
    additive = torch.zeros(5, 1, 13, 13).masked_fill(~as_bool, torch.finfo(torch.float32).min)
    for form in (real.long(), as_bool, additive, additive.half().masked_fill(~as_bool, torch.finfo(torch.half).min)):
        host_reads[0] = 0
        assert torch.equal(key_padding_mask(form, 5, 13), real)
        assert host_reads[0] == 1, "every check must be read back at once (one device sync)"
    assert key_padding_mask(torch.ones(5, 13), 5, 13) is None  # no padding: the padded path
    causal = torch.ones(13, 13).tril().bool()[None, None].expand(5, 1, 13, 13)
    bias = additive.clone()
    bias[0, 0, 3, 4] = -2.0  # an additive bias that is not a mask (ALiBi-like)
    for not_key_padding in (causal, bias, real[:, None, :]):
        with pytest.raises(NotKeyPadding):
            key_padding_mask(not_key_padding, 5, 13)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        key_padding_mask(real[:, :12], 5, 13)


@pytest.mark.parametrize("precision,smooth,tolerance", [("fp32", None, 1e-5), ("int8", None, 1e-5),
                                                         ("int8", "auto", 1e-3)])
def test_torch_compile_of_an_optimized_model(precision, smooth, tolerance):
    """``torch.compile(optimize(model))``: dynamo traces the fused layers through the ops' custom ops (the one
    C++ call per layer is not traceable: under tracing each layer runs per op) and breaks the graph where the
    wrapper reads the token count; the compiled model gives the eager optimized model's outputs (fp32: HF's
    too, at real positions) on ragged padding with a fully padded row, and again on a second batch. int8 with
    SmoothQuant (the default): the traced per-op path is not bit-identical to the one C++ call (relative
    difference ~4e-5, two orders below int8's own error), so it is held to 1e-3."""
    torch._dynamo.reset()
    hf = _build("BertModel", seed=3)
    inputs = _inputs("BertModel", seed=4)
    with torch.no_grad():
        reference = hf(**inputs).last_hidden_state
    model = bertsilicon.optimize(copy.deepcopy(hf), precision, smooth=smooth)
    compiled = torch.compile(model)
    mask, second = inputs["attention_mask"], _inputs("BertModel", seed=5)
    with torch.no_grad():
        eager = model(**inputs).last_hidden_state
        out = compiled(**inputs).last_hidden_state
        again = compiled(**second).last_hidden_state
    assert out.shape == eager.shape and not torch.isnan(out[mask.bool()]).any()
    assert _compare(out, eager, mask, False) <= tolerance
    if precision == "fp32":
        assert _compare(out, reference, mask, False) <= 1e-5
    with torch.no_grad():
        assert _compare(again, model(**second).last_hidden_state, second["attention_mask"], False) <= tolerance


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("convert", ["double", "half", "float", "bfloat16"])
def test_dtype_conversion_after_optimize_is_refused(precision, convert):
    """``.half()`` / ``.double()`` / ``.to(dtype)`` after optimize changes tensors the fused layers were prepared
    for (``.float()`` widens a bf16 GEMM's prepared weight): the next forward is a ValueError naming the change and
    what to do (before: a KeyError deep in the C++ GEMM's packing, or a silently mixed-precision forward). A
    conversion that changes nothing runs as before; restore, convert, optimize works."""
    inputs = _inputs("BertModel", seed=6)
    model = bertsilicon.optimize(_build("BertModel", seed=2), precision)
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    getattr(model, convert)()
    if convert == "float" and precision != "bf16":  # nothing changed dtype: runs as before
        with torch.no_grad():
            assert torch.equal(model(**inputs).last_hidden_state, before)
        return
    with pytest.raises(ValueError, match=r"changed dtype after bertsilicon.optimize \(.*->.*\).*bertsilicon.restore"):
        model(**inputs)
    bertsilicon.restore(model)  # then convert, then optimize: an fp64 model gets fp32 GEMM copies, fp64 outputs
    with torch.no_grad():
        want = model.double()(**inputs).last_hidden_state
        got = bertsilicon.optimize(model, "fp32")(**inputs).last_hidden_state
    assert got.dtype == torch.float64 and _compare(got, want, inputs["attention_mask"], False) <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8"])
def test_new_storage_after_optimize_is_followed(precision):
    """What ``.to(device)`` does to every parameter and buffer, done on CPU: the same values in new storage. The
    output is unchanged, and a weight changed in place afterwards is followed (equal to optimizing the changed
    model), so neither the one-call snapshots nor the packs kept reading the old storage."""
    inputs = _inputs("BertModel", seed=7)
    base = _build("BertModel", seed=4)
    # int8 without SmoothQuant: optimizing the changed model re-calibrates its factors, following a change keeps them
    model = bertsilicon.optimize(copy.deepcopy(base), precision, smooth=None)
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
        model._apply(lambda t: t.clone())
        assert torch.equal(model(**inputs).last_hidden_state, before)
        model.encoder.layer[0].intermediate.dense.weight.mul_(2)
        base.encoder.layer[0].intermediate.dense.weight.mul_(2)
        want = bertsilicon.optimize(base, precision, smooth=None)(**inputs).last_hidden_state
        assert torch.equal(model(**inputs).last_hidden_state, want)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_concurrent_calls_from_threads_equal_sequential_calls(precision):
    """A server thread pool calling one optimized model at once: each C++ layer call releases the GIL and works
    in its calling thread's own scratch, snapshots are never modified once built, so every call gives the bits
    it gives alone (different batch shapes interleaved, ragged padding)."""
    from concurrent.futures import ThreadPoolExecutor

    model = bertsilicon.optimize(_build("BertModel", seed=8), precision)
    batches = [_inputs("BertModel", seed=s, fully_padded_row=s % 2 == 0) for s in range(6)]
    batches = [{k: v[: 1 + s % 4] for k, v in b.items()} for s, b in enumerate(batches)]
    with torch.no_grad():
        alone = [model(**b).last_hidden_state for b in batches]

    def call(i):
        with torch.no_grad():
            return i % len(batches), model(**batches[i % len(batches)]).last_hidden_state

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(4 * len(batches))))
    assert all(torch.equal(out, alone[i]) for i, out in results)
