"""The C++ GEMM family (linear, quantize, int8_linear) on every ISA path, against float64 / int64.

* linear: the numerics rule against a float64 reference, plain torch at the same dtype as the peer;
  fp32 and bf16, K 384/768/1536/26, M 1/7/77/1024, every activation, bias or not, odd N.
* quantize: bit-identical to bertsilicon.reference.quantize (fp32 and bf16 input, every granularity,
  ties, NaN/inf groups, all-zero groups).
* int8_linear: the int32 sums exact against int64 matmul (adversarial +-127 / -128 inputs that make
  the classic vpmaddubsw path saturate), then the dequant + bias + activation epilogue by the rule.
"""
import pytest
import torch
import torch.nn.functional as F

from bertsilicon import ops
from bertsilicon import reference as ref
from bertsilicon.backends import registry, routing
from numerics import assert_numerics, poison_allocator
from cpu_isa import cpu_isas, isa  # noqa: F401  (isa is a fixture)

pytestmark = pytest.mark.skipif(registry.load("cpu") is not None, reason="C++ extension not built")

ISAS = cpu_isas(older_avx512=True)  # pack layouts depend on AVX512_BF16 and VNNI
ACTS = [None, "gelu", "gelu_tanh", "relu"]
# (M, K, N): BERT-student K, odd M and N (tails of the 6-row and 64/16-column tiles), one 1024-token M
SHAPES = [(1, 384, 384), (7, 768, 200), (77, 1536, 70), (1024, 26, 129), (130, 384, 1536)]


def _gemm_module():
    from bertsilicon.backends.cpu import gemm as _cpu_gemm

    return _cpu_gemm


def _float_inputs(M, K, N, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(M, K, generator=g) + 0.1).to(dtype)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
    b = (torch.randn(N, generator=g) * 0.5).to(dtype) if bias else None
    return x, w, b


def _torch_linear(x, w, b, act):
    """Plain torch at the inputs' dtype: F.linear, then the activation (in that dtype)."""
    return ref.activate(F.linear(x, w, b), act)


def _check_linear(x, w, b, act, what):
    ref64 = ref.linear(x.double(), w.double(), None if b is None else b.double(), act)
    poison_allocator(ref64.to(x.dtype))
    out = ops.linear(x, w, b, act, backend="cpu")
    assert out.dtype == x.dtype and out.shape == ref64.shape
    assert_numerics(out, ref64, _torch_linear(x, w, b, act), what)
    return out


# ---------------------------------------------------------------------------------------------- #
# linear                                                                                          #
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear(isa, dtype, act, M, K, N):
    x, w, b = _float_inputs(M, K, N, dtype, seed=M * 7 + K + N)
    _check_linear(x, w, b, act, f"linear[{isa}] {dtype} {act} M={M} K={K} N={N}")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
def test_linear_no_bias_3d(isa, dtype, act):
    x, w, _ = _float_inputs(2 * 77, 312, 77, dtype, seed=5, bias=False)
    _check_linear(x.reshape(2, 77, 312), w, None, act, f"linear[{isa}] no bias 3-D")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_linear_nan_and_empty(isa):
    x, w, b = _float_inputs(9, 64, 20, torch.float32, seed=3)
    x[4, 10] = float("nan")
    out = _check_linear(x, w, b, "gelu", "linear NaN row")
    assert bool(torch.isnan(out[4]).all()) and bool(torch.isfinite(out[[0, 1, 2, 3, 5, 6, 7, 8]]).all())
    for shape in [(0, 64), (3, 0)]:  # no tokens; K = 0 (the output is act(bias))
        xe = torch.randn(shape)
        we = torch.randn(20, shape[1])
        torch.testing.assert_close(ops.linear(xe, we, b, "relu", backend="cpu"), ref.linear(xe, we, b, "relu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_torch_gemm_candidate(dtype):
    """The measured alternative (torch's GEMM + our in-place epilogue) obeys the same rule."""
    G = _gemm_module()
    x, w, b = _float_inputs(77, 384, 130, dtype, seed=11)
    for act in ACTS:
        ref64 = ref.linear(x.double(), w.double(), b.double(), act)
        torch_out = _torch_linear(x, w, b, act)
        assert_numerics(G.linear_torch_gemm(x, w, b, act), ref64, torch_out, f"torch gemm + epilogue {act}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weight_matches_and_refreshes(dtype):
    G = _gemm_module()
    x, w, b = _float_inputs(13, 384, 100, dtype, seed=2)
    pw = G.pack_linear(w)
    torch.testing.assert_close(G.linear_packed(x, pw, b, "gelu"), ops.linear(x, w, b, "gelu", backend="cpu"),
                               rtol=0, atol=0)
    with torch.no_grad():
        w.mul_(-2.0)  # in place: the pack's version is stale and must be rebuilt, not reused
    torch.testing.assert_close(G.linear_packed(x, pw, b), ops.linear(x, w, b, backend="cpu"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="contiguous"):
        G.linear_packed(x.t().contiguous().t(), pw)
    with pytest.raises(ValueError, match="dtype"):
        G.pack_linear(w.half())


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("M,K,N,act", [(77, 384, 130, "gelu"), (1, 26, 7, None), (130, 1537, 64, "relu")])
def test_linear_fp32_activations_on_bf16_weight(isa, M, K, N, act):
    """fp32 x with a bf16 packed W: x rounded to bf16 as the GEMM reads it (odd K included), exact
    products, fp32 sum and epilogue, fp32 out — the rule against float64 of the rounded operands."""
    G = _gemm_module()
    x, w, b = _float_inputs(M, K, N, torch.float32, seed=M + K + N)
    wb = w.to(torch.bfloat16)
    out = G.linear_packed(x, G.pack_linear(wb), b, act)
    assert out.dtype == torch.float32
    xr = x.to(torch.bfloat16)
    ref64 = ref.linear(xr.double(), wb.double(), b.double(), act)
    torch_out = _torch_linear(xr.float(), wb.float(), b, act)  # the same arithmetic in plain fp32 torch
    assert_numerics(out, ref64, torch_out, f"linear[{isa}] fp32 x bf16 W {act} K={K}")
    # and not what an unrounded x would give (x's rounding is part of the contract)
    unrounded = ref.linear(x.double(), wb.double(), b.double(), act)
    assert float((out.double() - unrounded).abs().max()) > float((out.double() - ref64).abs().max())


@pytest.mark.skipif("avx2" not in ISAS, reason="needs AVX2")
def test_packed_weight_follows_isa_switch():
    G = _gemm_module()
    from bertsilicon.backends import cpu as _cpu

    x, w, b = _float_inputs(8, 96, 40, torch.float32, seed=9)
    before = _cpu.runtime._C.active_isa()
    pw = G.pack_linear(w)
    try:
        _cpu.set_isa("avx2")
        assert G.linear_packed(x, pw, b).shape == (8, 40) and pw.layout == "f32x16"
    finally:
        _cpu.set_isa(before)


# What each path packs fp32 / bf16 / int8 weights as: the micro-kernel that runs (scalar reads the weight)
LAYOUTS = {"scalar": ("raw", "raw", "raw"), "avx2": ("f32x16", "f32x16", "s16x16"),
           "avx512-novnni": ("f32x64", "f32x64", "s16x64"), "avx512-nobf16": ("f32x64", "f32x64", "u8s8x64")}


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_pack_layout_per_path(isa):
    """Each path packs for the kernel its CPU can run: AVX-512 without BF16 widens bf16 weights to the fp32
    kernel, without VNNI int8 takes the int16-pair kernel; a pack made before the switch is re-made."""
    from bertsilicon.backends import cpu as _cpu

    G = _gemm_module()
    has = _cpu.cpu_features()
    full = ("f32x64", "bf16x64" if has["avx512_bf16"] else "f32x64", "u8s8x64" if has["avx512_vnni"] else "s16x64")
    expected = LAYOUTS.get(isa, full)
    w = torch.randn(40, 96)
    packs = [G.pack_linear(w), G.pack_linear(w.to(torch.bfloat16)), G.pack_int8(torch.randint(-128, 128, (40, 96),
                                                                                              dtype=torch.int8))]
    assert tuple(p.layout for p in packs) == expected
    assert G.native_bf16() == (expected[1] == "bf16x64")
    other = "avx2" if isa != "avx2" else "scalar"
    _cpu.set_isa(other)
    assert tuple(p.layout for p in packs) == LAYOUTS[other]


# ---------------------------------------------------------------------------------------------- #
# quantize                                                                                        #
# ---------------------------------------------------------------------------------------------- #
def _quant_input(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand(shape[:1] + (1,) * (len(shape) - 1), generator=g) * 4
    return x.to(dtype)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["per_token", "per_channel", "per_tensor"])
@pytest.mark.parametrize("shape", [(77, 384), (7, 26), (3, 5, 33), (1, 1), (1024, 768)])
def test_quantize_bit_identical(isa, dtype, granularity, shape):
    x = _quant_input(shape, dtype, seed=sum(shape))
    if x.dim() == 2 and shape[0] > 3 and shape[1] > 8:
        x[1] = 0.0                                     # all-zero group: scale 1, q 0
        x[2, :8] = torch.tensor([2.5, -2.5, 3.5, -0.5, 0.5, 1.5, -127.0, 127.0])  # ties at scale 1
        x[2, 8:] = x[2, 8:].clamp(-127, 127)
        x[3, 5] = float("nan")                         # NaN group: scale NaN, q 0
    q, scale = ops.quantize(x, "int8", granularity, backend="cpu")
    q_ref, scale_ref = ref.quantize(x, "int8", granularity)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert scale.shape == scale_ref.shape and q.shape == q_ref.shape
    assert torch.equal(q, q_ref), f"q differs at {int((q != q_ref).sum())} places"
    assert torch.equal(scale.isnan(), scale_ref.isnan())
    assert torch.equal(torch.nan_to_num(scale, nan=-1.0), torch.nan_to_num(scale_ref, nan=-1.0))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_quantize_inf_and_empty(isa):
    x = _quant_input((4, 40), torch.float32, seed=1)
    x[0, 3] = float("inf")
    x[2, 0] = float("-inf")
    for gran in ["per_token", "per_tensor"]:
        q, s = ops.quantize(x, "int8", gran, backend="cpu")
        q_ref, s_ref = ref.quantize(x, "int8", gran)
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    q, s = ops.quantize(torch.empty(0, 384), "int8", "per_token", backend="cpu")
    assert q.shape == (0, 384) and s.shape == (0, 1)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_quantize_near_ties_bit_identical(isa):
    """The vector paths multiply by 1/scale and divide only near a half-integer (csrc/quantize.cpp):
    values within a few ulp of (k + 1/2) * scale, at awkward scales, must still round as x / scale does.
    Also a row whose scale is subnormal (1/scale overflows: the divide path) and one near FLT_MAX."""
    g = torch.Generator().manual_seed(7)
    amaxes = torch.cat([torch.rand(40, generator=g) * 10 + 1e-3, torch.tensor([3.0, 0.1, 1e-30, 1e30])])
    rows = []
    for amax in amaxes.tolist():
        scale = torch.tensor(amax, dtype=torch.float32) / 127.0
        halves = (torch.arange(-127, 127, dtype=torch.float32) + 0.5) * scale   # RN((k + 1/2) scale)
        ulp = torch.nextafter(halves, torch.full_like(halves, float("inf"))) - halves
        near = torch.cat([halves + d * ulp for d in (-2, -1, 0, 1, 2)])
        rows.append(torch.cat([near.clamp(-amax, amax), torch.tensor([amax])]))
    x = torch.stack(rows)
    x = torch.cat([x, torch.full((1, x.shape[1]), 1e-41), torch.full((1, x.shape[1]), 3e38)])  # subnormal scale, huge
    x[-2, ::3] = -3e-42
    x[-1, ::5] = -1e38
    q, s = ops.quantize(x, "int8", "per_token", backend="cpu")
    q_ref, s_ref = ref.quantize(x, "int8", "per_token")
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref), f"q differs at {int((q != q_ref).sum())} of {q.numel()} near-tie values"


# ---------------------------------------------------------------------------------------------- #
# int8_linear                                                                                     #
# ---------------------------------------------------------------------------------------------- #
def _adversarial(M, K, N, seed):
    """Rows/columns of all +127, all -127, all -128 and alternating signs: the pair sums that
    saturate vpmaddubsw's int16 (255 * 127 * 2 > 32767), next to random full-range values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    x[0], w[0] = 127, 127
    x[1 % M], w[1 % N] = -127, 127
    x[2 % M], w[2 % N] = -128, -128
    alt = torch.tensor([127, -127], dtype=torch.int8).repeat((K + 1) // 2)[:K]
    x[3 % M], w[3 % N] = alt, -alt
    return x, w


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("M,K,N", [(6, 384, 64), (77, 1000, 129), (1, 26, 7), (130, 1536, 80), (9, 4001, 33)])
def test_int8_sums_exact(isa, M, K, N):
    G = _gemm_module()
    x, w = _adversarial(M, K, N, seed=M + K + N)
    exact = x.long() @ w.long().t()
    assert torch.equal(G.int8_matmul(x, w).long(), exact)
    # through the public op with unit scales (exact while |sum| < 2^24)
    if K * 128 * 128 < 2 ** 24:
        out = ops.int8_linear(x, torch.ones(()), w, torch.ones(()), backend="cpu")
        assert torch.equal(out.double(), exact.double())


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("scales", ["token_channel", "tensor_tensor", "token_flat"])
def test_int8_linear_epilogue(isa, out_dtype, act, scales):
    M, K, N = 77, 384, 130
    g = torch.Generator().manual_seed(ACTS.index(act) * 3 + ["token_channel", "tensor_tensor", "token_flat"].index(scales))
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) * K ** -0.5
    gran_x, gran_w = ("per_tensor", "per_tensor") if scales == "tensor_tensor" else ("per_token", "per_channel")
    x_q, x_s = ref.quantize(x, "int8", gran_x)
    w_q, w_s = ref.quantize(w, "int8", gran_w)
    if scales == "token_flat":
        x_s, w_s = x_s.reshape(-1), w_s.reshape(-1)
    bias = torch.randn(N, generator=g) * 0.5 if act != "relu" else None
    ref64 = ref.int8_linear(x_q, x_s, w_q, w_s, bias, act, torch.float64)
    acc = (x_q.long() @ w_q.long().t()).float()  # plain torch: exact sums, fp32 epilogue, then cast
    y = acc * x_s.reshape(-1, 1) * w_s.reshape(-1) if x_s.numel() > 1 else acc * x_s * w_s
    torch_out = ref.activate(y if bias is None else y + bias, act).to(out_dtype)
    out = ops.int8_linear(x_q, x_s, w_q, w_s, bias, act, out_dtype, backend="cpu")
    assert out.dtype == out_dtype
    assert_numerics(out, ref64, torch_out, f"int8_linear[{isa}] {act} {scales} -> {out_dtype}")
    pq = _gemm_module().pack_int8(w_q)
    torch.testing.assert_close(_gemm_module().int8_linear_packed(x_q, x_s, pq, w_s, bias, act, out_dtype), out,
                               rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("act", ACTS)
def test_int8_linear_infinite_bias(isa, act):
    """The epilogue at +-inf and NaN: gelu(-inf) = 0, gelu(+inf) = +inf (the reference's limits)."""
    g = torch.Generator().manual_seed(4)
    x_q = torch.randint(-127, 128, (7, 40), generator=g, dtype=torch.int8)
    w_q = torch.randint(-127, 128, (20, 40), generator=g, dtype=torch.int8)
    x_s, w_s = torch.rand(7, 1, generator=g) * 0.01, torch.rand(20, generator=g) * 0.01
    bias = torch.randn(20, generator=g)
    bias[[2, 5, 17]] = torch.tensor([float("-inf"), float("inf"), float("nan")])
    out = ops.int8_linear(x_q, x_s, w_q, w_s, bias, act, backend="cpu")
    ref64 = ref.int8_linear(x_q, x_s, w_q, w_s, bias, act, torch.float64)
    assert torch.equal(out[:, [2, 5]].double(), ref64[:, [2, 5]]) and bool(out[:, 17].isnan().all())
    finite = [n for n in range(20) if n not in (2, 5, 17)]
    torch_out = ref.activate((x_q.long() @ w_q.long().t()).float() * x_s * w_s + bias, act)
    assert_numerics(out[:, finite], ref64[:, finite], torch_out[:, finite], f"int8_linear[{isa}] inf bias {act}")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("M,K,N,act", [(77, 384, 130, "gelu"), (1, 26, 7, None), (130, 1001, 64, "relu"),
                                        (9, 1536, 33, "gelu_tanh")])
def test_int8_linear_dynamic_equals_quantize_then_int8_linear(isa, dtype, smooth, M, K, N, act):
    """The fused form (quantize into the GEMM's operand) is bit-identical to the two ops it replaces,
    including a NaN row (scale NaN, q 0: its outputs NaN), an all-zero row and K not a multiple of 4."""
    G = _gemm_module()
    g = torch.Generator().manual_seed(M * K + N + smooth)
    x = (torch.randn(M, K, generator=g) * torch.rand(M, 1, generator=g) * 3).to(dtype)
    if M > 2:
        x[1] = 0.0
        x[2, K // 2] = float("nan")
    w_q, w_s = ref.quantize(torch.randn(N, K, generator=g) * K ** -0.5, "int8", "per_channel")
    bias = torch.randn(N, generator=g)
    inv_smooth = (torch.rand(K, generator=g) * 4 + 0.25) if smooth else None
    xs = x * inv_smooth if smooth else x
    x_q, x_s = ops.quantize(xs.contiguous(), "int8", "per_token", backend="cpu")
    composed = ops.int8_linear(x_q, x_s, w_q, w_s.reshape(-1), bias, act, dtype, backend="cpu")
    fused = G.int8_linear_dynamic(x, w_q, w_s.reshape(-1), bias, act, inv_smooth)
    assert fused.dtype == dtype and fused.shape == composed.shape
    torch.testing.assert_close(fused, composed, rtol=0, atol=0, equal_nan=True)
    if M > 2:
        assert bool(fused[2].isnan().all()) and not bool(fused[0].isnan().any())


def test_int8_linear_dynamic_refuses_bad_input():
    G = _gemm_module()
    w_q = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    w_s = torch.rand(8)
    with pytest.raises(ValueError, match=r"x must be a contiguous float32 or bfloat16 CPU tensor \[\.\.\., 16\]"):
        G.int8_linear_dynamic(torch.randn(4, 16, dtype=torch.float16), w_q, w_s)
    with pytest.raises(ValueError, match="x must be a contiguous"):
        G.int8_linear_dynamic(torch.randn(16, 4).t(), w_q, w_s)
    with pytest.raises(ValueError, match=r"inv_smooth must be a contiguous float32 tensor \[16\]"):
        G.int8_linear_dynamic(torch.randn(4, 16), w_q, w_s, inv_smooth=torch.ones(15))
    with pytest.raises(ValueError, match="w_scale"):
        G.int8_linear_dynamic(torch.randn(4, 16), w_q, torch.rand(7))
    with pytest.raises(ValueError, match="bias"):
        G.int8_linear_dynamic(torch.randn(4, 16), w_q, w_s, torch.rand(9))


# ---------------------------------------------------------------------------------------------- #
# bad input                                                                                       #
# ---------------------------------------------------------------------------------------------- #
def test_cpu_refuses_what_it_cannot_do():
    x, w, b = _float_inputs(4, 64, 8, torch.float16, seed=0)
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float16"):
        ops.linear(x, w, b, backend="cpu")
    x32, w32, b32 = _float_inputs(4, 64, 8, torch.float32, seed=0)
    with pytest.raises(ValueError, match="not contiguous"):
        ops.linear(x32.t().contiguous().t(), w32, b32, backend="cpu")
    assert ops.which_backend("linear", x32, w32, b32, None) == "cpu"
    assert ops.which_backend("linear", x, w, b, None) == "reference"
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float16"):
        ops.quantize(x, "int8", "per_token", backend="cpu")
    with pytest.raises(ValueError, match="not contiguous"):
        ops.quantize(x32.t(), "int8", "per_token", backend="cpu")
    x_q, x_s = ref.quantize(x32, "int8", "per_token")
    w_q, w_s = ref.quantize(w32, "int8", "per_channel")
    with pytest.raises(ValueError, match="not contiguous"):
        ops.int8_linear(x_q.t().contiguous().t(), x_s, w_q, w_s, backend="cpu")
    # a transposed (non-contiguous) weight is fine: it is packed from a contiguous copy
    wt = w32.t().contiguous().t()
    torch.testing.assert_close(ops.linear(x32, wt, b32, backend="cpu"), ops.linear(x32, w32, b32, backend="cpu"),
                               rtol=0, atol=0)


def test_plain_ops_pack_each_weight_once_and_notice_changes():
    """ops.linear keeps one pack per weight tensor (dropped with the tensor, refreshed on in-place change)."""
    import gc

    from bertsilicon.backends.cpu import gemm as _cpu_gemm

    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 64, generator=g)
    w = torch.randn(32, 64, generator=g)
    y1 = ops.linear(x, w, backend="cpu")
    pw = _cpu_gemm._PACK_CACHE[id(w)]
    ops.linear(x, w, backend="cpu")
    assert _cpu_gemm._PACK_CACHE[id(w)] is pw
    w.mul_(2)  # in place: the cached pack must be refreshed, not reused stale
    torch.testing.assert_close(ops.linear(x, w, backend="cpu"), 2 * y1, rtol=1e-6, atol=1e-5)
    key = id(w)
    del w, pw
    gc.collect()
    assert key not in _cpu_gemm._PACK_CACHE
