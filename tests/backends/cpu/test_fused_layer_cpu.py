"""The one-call cpu path of FusedEncoderLayer (csrc/encoder_layer.cpp, bertsilicon/backends/cpu/layer.py).

Contract: bit-identical (``torch.equal``) to the per-op path (``layer.one_call = False``: the same kernels
called one by one from Python), which the rest of the suite checks against Hugging Face and float64. Here:
every GEMM precision mix the model wrapper builds (fp32, bf16, int8 with and without SmoothQuant, int8
layers with bf16 / fp32 fallback GEMMs, fp16 as fp16 operands on the fp32 kernel, alone and mixed), every activation, head dims 32 and 26, ragged lengths with 1 and
77, packed and padded forms, every ISA path; weights changed in place; bad input.
"""
import contextlib
import copy

import pytest
import torch
import transformers
from transformers.models.bert import modeling_bert

import bertsilicon
from bertsilicon.models import encoder
from bertsilicon.models.adapters import bert
from bertsilicon.models.layers import GEMMS, FusedEncoderLayer
from cpu_isa import cpu_isas, isa, needs_cpu, use_path  # noqa: F401  (isa: fixture)
from numerics import poison_allocator, ragged_mask

pytestmark = needs_cpu

HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
LENGTHS = (77, 1, 13)  # packed: ragged, with a length-1 sequence; padded adds a fully padded row
SHAPES = {"h384": (384, 12, 200), "h312": (312, 12, 100)}  # hidden, heads (head dim 32 / 26), FFN width
# (GEMM precisions, compute dtype, SmoothQuant?, activation): the mixes optimize() builds, plus int8 and
# bf16 GEMMs on bf16 activations; activations spread over the mixes (all three on every ISA and shape).
MIXES = {
    "fp32": (dict.fromkeys(GEMMS, "fp32"), torch.float32, False, "gelu"),
    "bf16": (dict.fromkeys(GEMMS, "bf16"), torch.bfloat16, False, "gelu_tanh"),
    "int8": (dict.fromkeys(GEMMS, "int8"), torch.float32, False, "relu"),
    "int8-smooth": (dict.fromkeys(GEMMS, "int8"), torch.float32, True, "gelu"),
    "int8-bf16-fp32": ({"qkv": "int8", "o": "bf16", "up": "fp32", "down": "int8"}, torch.float32, True, "gelu_tanh"),
    "int8-bf16-on-bf16": ({"qkv": "bf16", "o": "int8", "up": "int8", "down": "bf16"}, torch.bfloat16, True, "relu"),
    # fp16 on a CPU: fp16 operands on the fp32 kernel, fp32 activations (optimize's fp16 mix), and fp16 next
    # to every other GEMM precision the per-op path runs on fp32 activations
    "fp16": (dict.fromkeys(GEMMS, "fp16"), torch.float32, False, "gelu"),
    "fp16-int8-bf16-fp32": ({"qkv": "fp16", "o": "int8", "up": "bf16", "down": "fp32"}, torch.float32, True, "relu"),
}


def _hf_layer(shape: str, activation: str, seed: int = 0):
    hidden, heads, ffn = SHAPES[shape]
    cfg = transformers.BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                                  hidden_act=HF_ACT[activation], num_hidden_layers=1, layer_norm_eps=1e-12)
    torch.manual_seed(seed)
    layer = modeling_bert.BertLayer(cfg).eval()
    with torch.no_grad():  # LayerNorm weights ones / biases zeros would hide a swapped or unread parameter
        for ln in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0.0, 0.1)
    return layer, cfg


def _fused(shape: str, mix: str, seed: int = 0, activation=None) -> FusedEncoderLayer:
    gemms, dtype, smooth, act = MIXES[mix]
    layer, cfg = _hf_layer(shape, activation or act, seed)
    parts = bert.ADAPTER.layer_parts(layer, cfg)
    factors = None
    if smooth:
        g = torch.Generator().manual_seed(seed + 1)
        k = {"qkv": cfg.hidden_size, "o": cfg.hidden_size, "up": cfg.hidden_size, "down": cfg.intermediate_size}
        factors = {n: torch.rand(k[n], generator=g) * 1.5 + 0.25 for n in GEMMS}
    return FusedEncoderLayer(layer, parts, gemms, dtype, smooth=factors)


def _packed_inputs(hidden: int, dtype, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(LENGTHS)
    cu = torch.zeros(len(LENGTHS) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    x = torch.randn(int(cu[-1]), hidden, generator=g).to(dtype)
    return x, cu, int(lengths.max())


def _padded_inputs(hidden: int, dtype, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    mask = ragged_mask(4, 77, g).bool()  # row 0 full (77), random rows, last row fully padded
    mask[1] = False
    mask[1, 0] = True  # a length-1 row
    return torch.randn(4, 77, hidden, generator=g).to(dtype), mask


class _Counter:
    """Counts the one-call C++ entry points (so a test knows the one-call path really ran)."""

    def __init__(self, monkeypatch):
        from bertsilicon.backends.cpu import layer as _cpu_layer

        self.calls = {"packed": 0, "padded": 0}
        for form in self.calls:
            name = f"encoder_layer_{form}"
            real = getattr(_cpu_layer._C, name)

            def counted(*args, _real=real, _form=form):
                self.calls[_form] += 1
                return _real(*args)

            monkeypatch.setattr(_cpu_layer._C, name, counted)


def _both_paths(layer, run, like):
    """run() on the one-call path (memory of the output's size, ``like``, NaN-poisoned first), then on the
    per-op path."""
    layer.one_call = True
    poison_allocator(like)
    one = run()
    layer.one_call = False
    per_op = run()
    layer.one_call = True
    return one, per_op


@pytest.mark.parametrize("isa", cpu_isas(older_avx512=True), indirect=True)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mix", list(MIXES))
def test_one_call_is_bit_identical_to_per_op(isa, shape, mix, monkeypatch):
    layer = _fused(shape, mix)
    counter = _Counter(monkeypatch)
    x, cu, max_len = _packed_inputs(layer.hidden, layer.compute_dtype)
    xp, mask = _padded_inputs(layer.hidden, layer.compute_dtype)
    with torch.no_grad():
        one, per_op = _both_paths(layer, lambda: layer.forward_packed(x, cu, max_len), x)
        one_p, per_op_p = _both_paths(layer, lambda: layer.forward_padded(xp, mask), xp)
    assert counter.calls == {"packed": 1, "padded": 1}
    assert layer.call_path() == "one C++ call"  # what the report says is what ran
    for got, want in ((one, per_op), (one_p, per_op_p)):
        assert got.dtype == layer.compute_dtype and got.shape == want.shape
        assert not got.isnan().any()
        assert torch.equal(got, want)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("mix", ["fp32", "bf16", "int8-smooth"])
def test_every_activation_on_the_best_path(activation, mix):
    layer = _fused("h312", mix, seed=4, activation=activation)
    assert layer.activation == activation
    x, cu, max_len = _packed_inputs(layer.hidden, layer.compute_dtype, seed=5)
    xp, _ = _padded_inputs(layer.hidden, layer.compute_dtype, seed=6)
    with torch.no_grad():
        for got, want in (_both_paths(layer, lambda: layer.forward_packed(x, cu, max_len), x),
                          _both_paths(layer, lambda: layer.forward_padded(xp, None), xp)):
            assert torch.equal(got, want)


def test_calibration_stats_and_disabled_flag_take_the_per_op_path(monkeypatch):
    layer = _fused("h312", "fp32")
    counter = _Counter(monkeypatch)
    x, cu, max_len = _packed_inputs(layer.hidden, torch.float32)
    stats = {}
    with torch.no_grad():
        layer.forward_packed(x, cu, max_len, stats=stats)
        layer.one_call = False
        layer.forward_packed(x, cu, max_len)
    assert counter.calls["packed"] == 0 and set(stats) == set(GEMMS)
    with torch.no_grad():  # an explicit reference backend never reaches the C++ call either
        ref = FusedEncoderLayer(layer.__dict__["original"], layer.parts, dict.fromkeys(GEMMS, "fp32"),
                                torch.float32, backend="reference")
        ref.forward_packed(x, cu, max_len)
    assert counter.calls["packed"] == 0
    assert ref.call_path() == "per op (backend='reference')" and layer.call_path() == "per op (layer.one_call = False)"
    assert layer._per_op_reason(torch.device("cuda")) == "CUDA: Triton per op"  # the reason alone: no GPU here
    assert ref._per_op_reason(torch.device("cuda")) == "backend='reference'"
    original, parts = layer.__dict__["original"], layer.parts
    fp16_on_bf16 = FusedEncoderLayer(original, parts, dict.fromkeys(GEMMS, "fp16"), torch.bfloat16)
    assert fp16_on_bf16.call_path() == "per op (fp16 GEMMs need fp32 activations)"
    assert FusedEncoderLayer(original, parts, dict.fromkeys(GEMMS, "fp16"), torch.float16).call_path() == \
        "per op (float16 activations)"


@pytest.fixture(scope="module")
def small_bert():
    cfg = bertsilicon.student_config("bert-base", num_hidden_layers=2, hidden_size=78, num_attention_heads=3,
                                     intermediate_size=100, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    mask = ragged_mask(4, 77, g)
    return model, {"input_ids": torch.randint(1000, 30000, (4, 77), generator=g), "attention_mask": mask}


def _rel(got, want, real):
    return float((got[real] - want[real]).double().norm() / want[real].double().norm())


@pytest.mark.parametrize("unpad", [True, False])
def test_optimize_end_to_end_matches_hf(small_bert, unpad, monkeypatch):
    base, inputs = small_bert
    m = bertsilicon.optimize(copy.deepcopy(base), "fp32", unpad=unpad)
    counter = _Counter(monkeypatch)
    with torch.no_grad():
        got, want = m(**inputs).last_hidden_state, base(**inputs).last_hidden_state
    assert counter.calls["packed" if unpad else "padded"] == 2  # both layers, one call each
    real = inputs["attention_mask"].bool()
    assert _rel(got, want, real) <= 1e-5


@pytest.mark.parametrize("unpad", [True, False])
def test_optimize_fp16_runs_one_call_per_layer(small_bert, unpad, monkeypatch):
    """optimize(model, "fp16") on a CPU: fp16 operands on the fp32 kernel, each layer one C++ call,
    bit-identical to the per-op path (ops.round_to + the fp32 GEMM, which test_optimize_models checks)."""
    base, inputs = small_bert
    m = bertsilicon.optimize(copy.deepcopy(base), "fp16", unpad=unpad)
    counter = _Counter(monkeypatch)
    with torch.no_grad():
        one = m(**inputs).last_hidden_state
        for layer in m.encoder.layer:
            layer.one_call = False
        per_op = m(**inputs).last_hidden_state
    assert counter.calls["packed" if unpad else "padded"] == 2
    assert not one.isnan().any() and torch.equal(one, per_op)


def test_weights_changed_in_place_after_optimize(small_bert):
    """fp32 GEMMs read the model's weights (and every path reads LayerNorm parameters): changed in place,
    they are picked up on the next call. bf16 / int8 GEMMs and the concatenated qkv weight are prepared
    copies, re-derived in place on the next call (sync_prepared; tests/models/test_prepared_sync.py): both paths
    see the change alike."""
    base, inputs = small_bert
    real = inputs["attention_mask"].bool()
    m = bertsilicon.optimize(copy.deepcopy(base), "fp32")
    hf_layer = m.encoder.__dict__["original"].layer[0]
    with torch.no_grad():
        before = m(**inputs).last_hidden_state
        hf_layer.output.dense.weight.mul_(1.5)  # down GEMM, read directly
        hf_layer.attention.output.LayerNorm.weight.add_(0.25)
        after = m(**inputs).last_hidden_state
        want = bertsilicon.restore(m)(**inputs).last_hidden_state  # HF on the changed weights
    assert _rel(after, want, real) <= 1e-5 and _rel(after, before, real) > 1e-3

    q = bertsilicon.optimize(copy.deepcopy(base), "bf16")
    with torch.no_grad():
        before = q(**inputs).last_hidden_state
        q.encoder.__dict__["original"].layer[0].output.dense.weight.mul_(1.5)
        after = q(**inputs).last_hidden_state
        for layer in q.encoder.layer:
            layer.one_call = False
        per_op = q(**inputs).last_hidden_state
    assert not torch.equal(after, before) and torch.equal(after, per_op)


@pytest.mark.parametrize("precision", ["int8", "int8-fp32-attention", "bf16"])
def test_isa_switch_after_optimize_repacks(small_bert, precision):
    """Switching the kernel path (also to an older AVX-512 CPU's, by hiding features) after optimize: the
    one-call layers re-make their plans for the new packs and attention dtype (int8 layers attend in bf16
    only with AVX512_BF16), so they still equal the per-op path. int8 with fp32 attention gives the same
    bits on every AVX-512 path, VNNI or not."""
    base, inputs = small_bert
    int8 = precision.startswith("int8")
    m = bertsilicon.optimize(copy.deepcopy(base), precision[:4], smooth=0.5 if int8 else None)
    for layer in m.encoder.layer:
        layer.bf16_attention = precision == "int8"
    from bertsilicon import _C
    from bertsilicon.backends.cpu import layer as _cpu_layer
    from bertsilicon.backends import cpu as _cpu
    from bertsilicon.backends.cpu import gemm as _cpu_gemm

    before, outputs = _C.active_isa(), {}
    try:
        paths = cpu_isas(older_avx512=True)
        for path in paths + paths[-2::-1]:  # narrowest to widest and back: each switch in both directions
            use_path(path)
            with torch.no_grad():
                one = m(**inputs).last_hidden_state
                for layer in m.encoder.layer:
                    layer.one_call = False
                per_op = m(**inputs).last_hidden_state
                for layer in m.encoder.layer:
                    layer.one_call = True
            assert torch.equal(one, per_op), path
            for layer in m.encoder.layer:  # the plan points at packs made for this path's kernels
                snap = _cpu_layer.snapshot(layer)
                packs = [p for p in snap.held if isinstance(p, _cpu_gemm._Pack)]
                assert packs and all(p.kind == _C.gemm_pack_kind(_cpu_gemm.ELEM[p.source.dtype], p.weight_7bit)
                                     for p in packs)
                bf16_attention = precision == "int8" and _cpu.native_bf16_attention()
                assert layer.attention_dtype(torch.device("cpu")) == (torch.bfloat16 if bf16_attention
                                                                      else layer.compute_dtype)
                assert snap.plan.attention_bf16 == bf16_attention, path
            outputs[path] = one
    finally:
        _cpu.hide_cpu_features([])
        _cpu.set_isa(before)
    if precision == "int8-fp32-attention":  # VNNI and the int16-pair kernel both sum exactly in int32
        avx512 = [path for path in outputs if path.startswith("avx512")]
        assert all(torch.equal(outputs[path], outputs[avx512[-1]]) for path in avx512)


def test_bad_input_is_a_clear_error():
    layer = _fused("h312", "int8")
    x, cu, max_len = _packed_inputs(layer.hidden, torch.float32)
    with torch.no_grad():
        with pytest.raises(ValueError, match="hidden size 312"):
            layer.forward_packed(x[:, :300].contiguous(), cu, max_len)
        with pytest.raises(ValueError, match=r"expected \[T, H\]"):
            layer.forward_packed(x[None], cu, max_len)
        with pytest.raises(ValueError, match="end at T=90"):
            layer.forward_packed(x[:90], cu, max_len)
        bad = cu.clone()
        bad[2] = bad[1] - 1
        with pytest.raises(ValueError, match="non-decreasing"):
            layer.forward_packed(x, bad, max_len)
        with pytest.raises(ValueError, match="cu_seqlens has dtype torch.int64"):
            layer.forward_packed(x, cu.long(), max_len)
        with pytest.raises(ValueError, match="max_seqlen=76 is smaller"):
            layer.forward_packed(x, cu, 76)
        with pytest.raises(ValueError, match="max_seqlen must be"):
            layer.forward_packed(x, cu, -1)
        xp, mask = _padded_inputs(layer.hidden, torch.float32)
        with pytest.raises(ValueError, match="key_mask has shape"):
            layer.forward_padded(xp, mask[:, :70])
        with pytest.raises(ValueError, match=r"expected \[B, L, H\]"):
            layer.forward_padded(xp[0], None)
        empty = layer.forward_packed(x[:0], torch.zeros(1, dtype=torch.int32), 0)
        assert empty.shape == (0, layer.hidden)
    from bertsilicon import _C

    with pytest.raises(ValueError, match="GEMM qkv"):  # a plan with no weights set never runs
        _C.EncoderLayerPlan(0, 312, 12, 100, 1, 0.2).check()
    with pytest.raises(ValueError, match="multiple of heads"):
        _C.EncoderLayerPlan(0, 312, 11, 100, 1, 0.2)


def test_the_layers_of_one_forward_share_one_scratch_block(monkeypatch):
    """A layer scratch block over the 64 MB keep size (here ~75 MB: 16384 tokens) stays with the thread for the
    whole layer loop of a forward, instead of being freed after each layer and page-faulted in again by the next
    (~35 ms a layer for DistilBERT on 8 x 512 tokens); it is freed when the loop ends. Same bits either way."""
    from bertsilicon import _C
    from bertsilicon.models import optimize as opt

    cfg = bertsilicon.student_config("bert-base", num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                                     intermediate_size=512)
    torch.manual_seed(0)
    model = bertsilicon.optimize(transformers.BertModel(cfg).eval(), "fp32", backend="cpu")
    ids = torch.randint(1000, 30000, (128, 128))
    seen = []
    real_forward = FusedEncoderLayer.forward_packed

    def recording(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        seen.append(_C.layer_scratch_bytes())
        return out
    monkeypatch.setattr(FusedEncoderLayer, "forward_packed", recording)
    mask = torch.ones(128, 128, dtype=torch.int64)
    mask[0, 100:] = 0  # padding: the packed path
    with torch.no_grad():
        held = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert len(seen) == 2 and all(n > 64 << 20 for n in seen), seen  # held across both layers
        assert _C.layer_scratch_bytes() == 0  # freed after the loop
        seen.clear()
        monkeypatch.setattr(encoder, "_layer_scratch_held", lambda device: contextlib.nullcontext())
        freed = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert seen == [0, 0]  # without the hold: freed after every layer
    assert torch.equal(held, freed)
    _C.hold_layer_scratch(False)  # an unmatched release is harmless
    assert _C.layer_scratch_bytes() == 0


@pytest.mark.parametrize("isa", cpu_isas(older_avx512=True), indirect=True)
def test_report_names_the_cpu_kernels(small_bert, isa):
    """The report says which C++ path and GEMM instructions run, and where a precision buys no speed here."""
    from bertsilicon.backends import cpu as _cpu

    base, _ = small_bert
    int8 = bertsilicon.optimize(copy.deepcopy(base), "int8").bertsilicon_report.cpu_kernels
    bf16 = bertsilicon.optimize(copy.deepcopy(base), "bf16").bertsilicon_report.cpu_kernels
    has = _cpu.cpu_features()  # less the features the path hides
    assert int8.startswith(f"{_cpu.kernel_path()} path, int8 GEMM") and bf16.startswith(f"{_cpu.kernel_path()} path")
    avx512 = isa.startswith("avx512")
    vnni, native_bf16 = avx512 and has["avx512_vnni"], avx512 and has["avx512_bf16"]
    expected_int8 = {"scalar": "raw (scalar)",
                     "avx2": "u8s7x16 (vpmaddubsw ymm) on 7-bit weights, s16x16 (vpmaddwd ymm) on 8-bit ones"}.get(
        isa, "u8s8x64 (vpdpbusd zmm)" if vnni else "s16x64 (vpmaddwd zmm)")
    assert f"int8 GEMM {expected_int8}" in int8
    assert ("no VNNI here" in int8) == (not vnni and isa != "scalar")
    assert ("bf16 GEMM bf16x64 (vdpbf16ps zmm), bf16 attention vdpbf16ps" in bf16) == native_bf16
    assert ("no AVX512_BF16 here" in bf16) == (not native_bf16)
    assert f"cpu kernels: {int8}" in str(bertsilicon.optimize(copy.deepcopy(base), "int8").bertsilicon_report)


def _native_bf16_attention() -> bool:
    from bertsilicon.backends import cpu as _cpu

    return _cpu.native_bf16_attention()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_int8_layer_attends_in_bf16_where_that_is_faster(shape):
    """An int8 layer on a CPU with AVX512_BF16 rounds q, k, v to bf16 and runs the vdpbf16ps attention: the
    same result as doing that by hand (the qkv GEMM, a bf16 cast, bf16 attention, the rest of the layer), an
    error against HF fp32 no larger than 1.1x the fp32-attention layer's, and different bits from it."""
    if not _native_bf16_attention():
        pytest.skip("needs AVX512_BF16 on the avx512 path (elsewhere int8 layers attend in fp32: tested above)")
    from bertsilicon import ops

    layer = _fused(shape, "int8-smooth", seed=7)
    hf, _ = _hf_layer(shape, MIXES["int8-smooth"][3], seed=7)
    assert layer.attention_dtype(torch.device("cpu")) == torch.bfloat16
    x, cu, max_len = _packed_inputs(layer.hidden, torch.float32, seed=8)
    with torch.no_grad():
        got = layer.forward_packed(x, cu, max_len)
        T, n, d = x.shape[0], layer.num_heads, layer.head_dim
        q, k, v = layer.qkv(x).to(torch.bfloat16).view(T, 3, n, d).unbind(1)
        ctx = ops.attention_varlen(q, k, v, cu, max_len, layer.scale, backend="cpu").reshape(T, n * d).float()
        parts = layer.parts
        h = ops.add_layernorm(layer.o(ctx), x, parts.ln1.weight, parts.ln1.bias, parts.ln1.eps, backend="cpu")
        by_hand = ops.add_layernorm(layer.down(layer.up(h, layer.activation)), h, parts.ln2.weight, parts.ln2.bias,
                                    parts.ln2.eps, backend="cpu")
        layer.bf16_attention = False
        fp32_attention = layer.forward_packed(x, cu, max_len)
        layer.bf16_attention = True
        mask = torch.zeros(len(LENGTHS), max_len, dtype=torch.bool)
        for b, length in enumerate(LENGTHS):
            mask[b, :length] = True
        padded = torch.zeros(len(LENGTHS), max_len, layer.hidden)
        padded[mask] = x
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        want = hf(padded, attention_mask=ext)
        want = (want[0] if isinstance(want, tuple) else want)[mask].double()
    assert torch.equal(got, by_hand)
    assert not torch.equal(got, fp32_attention)
    err = lambda y: float((y.double() - want).norm() / want.norm())  # noqa: E731
    assert err(got) <= 1.1 * err(fp32_attention), (err(got), err(fp32_attention))
