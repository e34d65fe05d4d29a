"""bertsilicon.optimize on MobileBERT (FusedMobileBertLayer): every head, every layer variant of the config
(bottleneck flags, NoNorm / LayerNorm, stacked FFNs), odd sizes (head dim 26, length 77, ragged padding with
a fully padded row), bf16 / fp16 by the numerics rule, int8 with and without SmoothQuant, weights changed
after optimize, refusals. Small random models: no MobileBERT weights ship with the package."""
import copy

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon.models.layers import FusedMobileBertLayer
from bertsilicon.models.optimize import supported_classes
from cpu_isa import cpu_available, cpu_isas, isa  # noqa: F401  (the isa fixture)
from hf_parity import assert_fp32_head_matches_hf, draw_norms_and_biases
from numerics import assert_numerics, ragged_mask
from test_optimize_graphs import captures  # noqa: F401  (the graph path's CPU stand-in for a capture)

B, L = 4, 77
# 3 heads of 26 on a 78-wide bottleneck, 120-wide residual stream, 2 layers of 3 stacked FFNs
SMALL = dict(num_hidden_layers=2, hidden_size=120, intra_bottleneck_size=78, num_attention_heads=3,
             intermediate_size=100, embedding_size=40, num_feedforward_networks=3, max_position_embeddings=128)
VARIANTS = {  # name -> config overrides: each a different data flow through the layer
    "released": {},                                                   # q, k from the shared bottleneck, v from x
    "layer_norm": dict(normalization_type="layer_norm"),
    "bottleneck_attention": dict(use_bottleneck_attention=True),     # q, k, v from the input bottleneck
    "no_shared_bottleneck": dict(key_query_shared_bottleneck=False, hidden_size=78),  # q, k, v from x
    "no_bottleneck": dict(use_bottleneck=False, hidden_size=78),    # no bottlenecks at all
    "one_ffn_gelu": dict(num_feedforward_networks=1, hidden_act="gelu"),
}
HEADS = [n for n in supported_classes() if n.startswith("MobileBert")]


def _build(cls_name="MobileBertModel", seed=0, dtype=None, shapes=SMALL, **overrides):
    """A random MobileBERT (``shapes``: SMALL, or ``{}`` for the released ones), eval mode. Weights are drawn with std 1 / sqrt(bottleneck width) instead of HF's
    0.02, so q and k have std ~1 and the attention scores a spread of a few units (with 0.02 every softmax is
    flat and a wrong scale, mask or q/k order hardly moves the output); Norms and biases drawn too."""
    cfg = bertsilicon.student_config("mobilebert", **{**shapes, **overrides})
    cfg.initializer_range = cfg.true_hidden_size ** -0.5
    torch.manual_seed(seed)
    m = draw_norms_and_biases(getattr(transformers, cls_name)(cfg).eval())
    return m if dtype is None else m.to(dtype)


def _inputs(cls_name="MobileBertModel", seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 2, L) if "MultipleChoice" in cls_name else (B, L)
    mask = ragged_mask(shape[0] * (shape[1] if len(shape) == 3 else 1), L, g).reshape(shape)
    return {"input_ids": torch.randint(1000, 30000, shape, generator=g), "attention_mask": mask}


def _rel(got, want, sel):
    return float((got[sel].double() - want[sel].double()).norm() / want[sel].double().norm())


def test_mobilebert_heads_are_served():
    assert {"MobileBertModel", "MobileBertForSequenceClassification", "MobileBertForMaskedLM"} <= set(HEADS)


@pytest.mark.parametrize("cls_name", HEADS)
def test_every_head_fp32(cls_name):
    m = _build(cls_name)
    report = assert_fp32_head_matches_hf(m, _inputs(cls_name), unpad=True)
    assert report.replaced == [0, 1] and report.family == "MobileBERT"
    bertsilicon.optimize(m, "fp32")
    assert all(isinstance(layer, FusedMobileBertLayer) for layer in m.base_model.encoder.layer)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("unpad", [True, False])
def test_every_layer_variant_fp32(variant, unpad):
    m = _build(**VARIANTS[variant])
    ref = copy.deepcopy(m)
    inputs = _inputs()
    bertsilicon.optimize(m, "fp32", unpad=unpad)
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert _rel(got, want, real) <= 1e-5
    if unpad:
        assert torch.equal(got[~real], torch.zeros_like(got[~real]))
    else:  # padded positions as HF computes them (rows with a real token; the fully padded row is undefined)
        rows = real.any(1)
        assert _rel(got[rows], want[rows], slice(None)) <= 1e-5
    layer = m.encoder.layer[0]
    names = tuple(layer.gemm_precision)
    assert names == FusedMobileBertLayer.gemm_names(layer.parts) and names[0] == "x_proj"
    call = m.bertsilicon_report.layers[0].call
    if cpu_available():
        assert call == ("per op (normalization_type='layer_norm': the one-call plan runs NoNorm)"
                        if variant == "layer_norm" else "one C++ call")


ONE_CALL_CASES = {  # precision -> optimize kwargs ("int8-mixed": a budget that moves some GEMMs, not all)
    "fp32": {}, "bf16": {}, "fp16": {}, "int8": dict(smooth=0.5), "int8-mixed": {}}


def _mixing_budget(variant, unpad) -> float:
    """An int8 error budget under which some GEMMs of ``variant`` stay int8 and others move, on any CPU: the
    smaller of the two layers' all-int8 errors (that layer stays int8, the other moves at least one GEMM).
    A fixed budget cannot do this: the ladder's rungs depend on the CPU (int8 -> bf16 -> fp32 with native bf16,
    int8 -> fp32 without), and a budget below every single GEMM's int8 error takes them all to fp32."""
    probe = bertsilicon.optimize(_build(**VARIANTS[variant]), "int8", unpad=unpad, calibration=_inputs(seed=99),
                                 error_budget=1.0)  # nothing falls back: each layer's all-int8 error
    errors = sorted(layer.rel_error for layer in probe.bertsilicon_report.layers)
    assert errors[-1] > 1.02 * errors[0], errors  # else no budget separates the layers
    return 1.01 * errors[0]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "layer_norm"])
@pytest.mark.parametrize("case", ONE_CALL_CASES)
@pytest.mark.parametrize("unpad", [True, False])
def test_one_cpp_call_equals_the_per_op_path(variant, case, unpad):
    """The whole layer as one C++ call (MobileBertLayerPlan) gives the per-op path's bits: same GEMM kernels and
    packs, attention on the same q, k, v, NoNorm rounded step by step as torch's in-place ops."""
    if not cpu_available():
        pytest.skip("C++ extension not built")
    precision = case.split("-")[0]
    kwargs = dict(ONE_CALL_CASES[case], error_budget=_mixing_budget(variant, unpad)) if case == "int8-mixed" \
        else ONE_CALL_CASES[case]
    m = bertsilicon.optimize(_build(**VARIANTS[variant]), precision, unpad=unpad, calibration=_inputs(seed=99),
                             **kwargs)
    layers = list(m.encoder.layer)
    assert all(layer.call_path() == "one C++ call" for layer in layers)
    if case == "int8-mixed":
        assert len({p for layer in layers for p in layer.gemm_precision.values()}) > 1
    inputs = _inputs(seed=13)
    with torch.no_grad():
        one_call = m(**inputs).last_hidden_state
        for layer in layers:
            layer.one_call = False
        per_op = m(**inputs).last_hidden_state
    assert torch.equal(one_call, per_op)


@pytest.mark.parametrize("isa", cpu_isas(older_avx512=True), indirect=True)
@pytest.mark.parametrize("case", ["fp32", "bf16", "int8"])
def test_one_cpp_call_equals_the_per_op_path_on_every_kernel_path(isa, case):
    m = bertsilicon.optimize(_build(), case, calibration=_inputs(seed=99))
    inputs = _inputs(seed=15)
    with torch.no_grad():
        one_call = m(**inputs).last_hidden_state
        for layer in m.encoder.layer:
            layer.one_call = False
        assert torch.equal(one_call, m(**inputs).last_hidden_state)


def test_more_ffns_than_the_plan_takes_run_per_op():
    if not cpu_available():
        pytest.skip("C++ extension not built")
    from bertsilicon import _C

    n = _C.MOBILEBERT_MAX_STACKED_FFNS + 2
    shapes = dict(num_hidden_layers=1, hidden_size=32, intra_bottleneck_size=16, num_attention_heads=2,
                  intermediate_size=24, embedding_size=16, num_feedforward_networks=n)
    m = _build(shapes=shapes)
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp32")
    assert m.bertsilicon_report.layers[0].call == f"per op ({n} FFNs: the one-call plan takes up to {n - 1})"
    inputs = _inputs(seed=16)
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    assert _rel(got, want, inputs["attention_mask"].bool()) <= 1e-5


def test_one_cpp_call_follows_weight_changes_and_refuses_a_bad_plan():
    from bertsilicon import _C

    m = bertsilicon.optimize(_build(), "int8")
    inputs = _inputs(seed=14)
    with torch.no_grad():
        before = m(**inputs).last_hidden_state
        m.encoder.layer[1].output.bottleneck.LayerNorm.weight.mul_(2)  # a NoNorm gamma, in place
        after = m(**inputs).last_hidden_state
        m.encoder.layer[1].one_call = False
        assert torch.equal(after, m(**inputs).last_hidden_state) and not torch.equal(after, before)
    plan = _C.MobileBertLayerPlan(0, 120, 3, 26, 100, 3, 26 ** -0.5)
    with pytest.raises(ValueError, match="GEMM x_proj: no weight set|NoNorm|exactly one"):
        plan.check()


def test_gemms_sharing_an_input_are_one_gemm():
    """The released layout reads x once for the input bottleneck, the shared bottleneck and V, and the shared
    bottleneck once for Q and K: 2 + 1 + 2 x 3 + 1 GEMMs for 3 stacked FFNs."""
    m = bertsilicon.optimize(_build(), "fp32")
    layer = m.encoder.layer[0]
    assert list(layer.gemm_precision) == ["x_proj", "attn_proj", "o", "ffn1_up", "ffn1_down", "ffn2_up", "ffn2_down",
                                          "up", "down", "out_bottleneck"]
    assert (layer.x_proj.out_features, layer.x_proj.in_features) == (3 * 78, 120)
    assert (layer.attn_proj.out_features, layer.attn_proj.in_features) == (2 * 78, 78)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precisions_follow_the_tolerance_rule(precision, dtype):
    inputs = _inputs(seed=4)
    with torch.no_grad():
        ref64 = _build(dtype=torch.float64)(**inputs).last_hidden_state
        hf_half = _build(dtype=dtype)(**inputs).last_hidden_state
        m = bertsilicon.optimize(_build(), precision)
        out = m(**inputs).last_hidden_state
    assert out.dtype == torch.float32
    real = inputs["attention_mask"].bool()
    assert_numerics(out[real], ref64[real], hf_half[real], f"MobileBERT optimize({precision}) vs HF {dtype}")
    assert {p for r in m.bertsilicon_report.layers for p in r.gemms.values()} == {precision}


@pytest.mark.parametrize("smooth", [None, 0.5])
def test_int8_is_close_and_reports_its_gemms(smooth):
    m = _build()
    ref = copy.deepcopy(m)
    inputs = _inputs(seed=6)
    bertsilicon.optimize(m, "int8", smooth=smooth)
    report = m.bertsilicon_report
    for layer in report.layers:
        assert len(layer.gemms) == 10 and layer.rel_error <= report.error_budget
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert _rel(got, want, real) < 3e-2  # int8 per-channel weights / per-token activations through 2 layers
    counts = bertsilicon.models.report._precision_counts(report.layers[0].gemms)
    assert counts in str(report) and "gemms" in str(report)


def test_int8_fallback_moves_gemms_up():
    m = _build()
    bertsilicon.optimize(m, "int8", error_budget=1e-9)  # nothing fits: every GEMM falls back
    for layer in m.bertsilicon_report.layers:
        assert set(layer.gemms.values()) <= {"bf16", "fp32"} and len(layer.fallbacks) == 10
        assert "fp32" in layer.gemms.values()


def test_weights_changed_after_optimize_are_followed():
    m = _build()
    bertsilicon.optimize(m, "bf16")
    inputs = _inputs(seed=8)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "encoder" in name:
                p.mul_(0.9)
        got = m(**inputs).last_hidden_state
    fresh = _build()
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if "encoder" in name:
                p.mul_(0.9)
    bertsilicon.optimize(fresh, "bf16")
    with torch.no_grad():
        assert torch.equal(got, fresh(**inputs).last_hidden_state)


def test_unsupported_activation_is_kept_with_reason():
    m = _build(hidden_act="silu")
    with pytest.warns(UserWarning, match="unsupported activation"):
        bertsilicon.optimize(m, "fp32")
    assert m.bertsilicon_report.replaced == [] and "silu" in m.bertsilicon_report.refused
    assert type(m.encoder.layer[0]).__name__ == "MobileBertLayer"


def test_position_table_and_bad_input():
    m = bertsilicon.optimize(_build(), "fp32")
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        m(input_ids=torch.randint(1000, 2000, (1, 129)))
    with torch.no_grad():
        assert m(input_ids=torch.randint(1000, 2000, (1, 128))).last_hidden_state.shape == (1, 128, 120)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("unpad", [True, False])
def test_cuda_graph_path_equals_eager(captures, precision, unpad):
    """The graph path (CPU, eager stand-in for the capture: tests/models/test_optimize_graphs.py) on MobileBERT's layers:
    the eager path's output bit for bit, packed or padded."""
    eager = bertsilicon.optimize(_build(), precision, unpad=unpad, calibration=_inputs(seed=99))
    graphs = copy.deepcopy(eager)
    encoder = graphs.encoder
    encoder.cuda_graphs = True
    inputs = _inputs(seed=10)
    with torch.no_grad():
        got, want = graphs(**inputs).last_hidden_state, eager(**inputs).last_hidden_state
    assert len(encoder.graphs.graphs) == 1 and len(captures) == 1
    assert torch.equal(got, want)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_gradients_are_the_original_layers(precision):
    """Outside no_grad the fused forward runs and backward recomputes HF's layers: HF's gradients, bit for bit,
    for a loss on the real tokens."""
    hf = _build()
    inputs = _inputs(seed=12)
    weight = torch.randn(B, L, SMALL["hidden_size"], generator=torch.Generator().manual_seed(3))
    weight = weight * inputs["attention_mask"][..., None]

    def grads_of(model):
        model.zero_grad()
        embeds = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).last_hidden_state
        (out * weight).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, embeds.grad

    _, hf_grads, hf_input_grad = grads_of(hf)
    model = bertsilicon.optimize(copy.deepcopy(hf), precision, calibration=_inputs(seed=99))
    with torch.no_grad():
        fused_out = model(**inputs).last_hidden_state
    out, grads, input_grad = grads_of(model)
    assert torch.equal(out, fused_out) and model.bertsilicon_report.recomputed_backward == 1
    assert grads.keys() == hf_grads.keys() and any("encoder.layer" in n for n in grads)
    assert all(torch.equal(grads[n], hf_grads[n]) for n in grads)
    assert torch.equal(input_grad, hf_input_grad)


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), pytest.param("bf16", torch.bfloat16, marks=pytest.mark.gpu)])
def test_triton_backend_follows_the_tolerance_rule(triton_device, precision, dtype):
    """backend="triton": on a GPU at MobileBERT's own shapes (4 layers of the released config); in CI on CPU under
    the Triton interpreter at one small layer (3 sequences <= 13 tokens, the last fully padded)."""
    if triton_device == "cuda":
        shapes, batch, length = dict(num_hidden_layers=4), 6, 77
    else:
        shapes, batch, length = dict(num_hidden_layers=1, hidden_size=64, intra_bottleneck_size=52, num_attention_heads=2,
                                     intermediate_size=40, num_feedforward_networks=2), 3, 13

    def build(dt=None):
        return _build(dtype=dt, shapes=shapes)
    g = torch.Generator().manual_seed(5)
    mask = ragged_mask(batch, length, g)
    inputs = {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g).to(triton_device),
              "attention_mask": mask.to(triton_device)}
    with torch.no_grad():
        ref64 = build(torch.float64).to(triton_device)(**inputs).last_hidden_state
        hf_half = build(dtype).to(triton_device)(**inputs).last_hidden_state
        m = bertsilicon.optimize(build().to(triton_device), precision, backend="triton",
                                 calibration={k: v[:2] for k, v in inputs.items()})
        out = m(**inputs).last_hidden_state
    assert set(m.bertsilicon_report.backends_used.values()) == {"triton"}
    real = inputs["attention_mask"].bool()
    assert_numerics(out[real].cpu(), ref64[real].cpu(), hf_half[real].cpu(), f"MobileBERT triton {precision}")



def test_hidden_states_and_attentions():
    """output_hidden_states: every layer's output from the fused layers (as HF's within 1e-5);
    output_attentions: the call runs the original layers, counted in the report."""
    m = _build()
    ref = copy.deepcopy(m)
    bertsilicon.optimize(m, "fp32")
    inputs = _inputs(seed=17)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        got, want = m(**inputs, output_hidden_states=True), ref(**inputs, output_hidden_states=True)
        assert len(got.hidden_states) == len(want.hidden_states) == SMALL["num_hidden_layers"] + 1
        for g, w in zip(got.hidden_states, want.hidden_states):
            assert _rel(g, w, real) <= 1e-5
        assert torch.equal(m(**inputs, output_attentions=True).last_hidden_state,
                           ref(**inputs, output_attentions=True).last_hidden_state)
    assert m.bertsilicon_report.runtime_fallbacks["output_attentions requested"] == 1
