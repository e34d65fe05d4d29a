"""The AVX2 int8 kernel on 7-bit weights (``u8s7x16``: vpmaddubsw + vpmaddwd) on every ISA path.

* sums exact against int64 matmul with the extreme operands: shifted activations at 255 (q = +127) and 0
  (q = -128) against weights at +-63, alternating signs, next to random values (the largest int16 pair sum
  the kernel can form, 2 * 255 * 63 = 32130);
* full 8-bit weights never reach it (they take the int16-pair kernel) and stay exact: the adversarial
  +-127 case that would saturate vpmaddubsw;
* the fused dynamic form bit-identical to quantize + int8_linear on 7-bit weights;
* the pack refuses weights outside [-63, 63]; a pack follows an in-place change that widens its weight;
* ``quant.quantize_rows`` (the 7-bit weight quantizer) against a float64 rounding bound.
"""
import pytest
import torch

from bertsilicon import _C, ops, quant
from bertsilicon import reference as ref
from bertsilicon.backends import registry
from cpu_isa import cpu_isas, isa  # noqa: F401  (isa is a fixture)
from numerics import assert_numerics

pytestmark = pytest.mark.skipif(registry.load("cpu") is not None, reason="C++ extension not built")

ISAS = cpu_isas(older_avx512=True)
# M and N odd (tails of the 6-row tile and its 4-row sub-tiles, of the 16-column panel), K not a multiple of 4
SHAPES = [(6, 384, 64), (77, 1000, 129), (1, 26, 7), (130, 1536, 80), (9, 4001, 33)]


def _gemm():
    from bertsilicon.backends.cpu import gemm as _cpu_gemm

    return _cpu_gemm


def _extreme(M, K, N, wmax, seed):
    """int8 activations and weights in [-wmax, wmax]: all-extreme rows and columns next to random ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-wmax, wmax + 1, (N, K), generator=g, dtype=torch.int8)
    x[0], w[0] = 127, wmax
    x[1 % M], w[1 % N] = -128, -wmax
    x[2 % M], w[2 % N] = 127, -wmax
    alt = torch.tensor([127, -128], dtype=torch.int8).repeat((K + 1) // 2)[:K]
    x[3 % M], w[3 % N] = alt, torch.where(alt > 0, wmax, -wmax).to(torch.int8)
    return x, w


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_7bit_weight_sums_exact(isa, M, K, N):
    G = _gemm()
    x, w = _extreme(M, K, N, _C.INT8_7BIT_MAX, seed=M + K + N)
    packed = G.pack_int8(w)
    if isa == "avx2":
        assert packed.layout == "u8s7x16"
    assert torch.equal(G.int8_matmul(x, packed).long(), x.long() @ w.long().t())


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("M,K,N", SHAPES[:3])
def test_8bit_weights_take_the_exact_pair_kernel(isa, M, K, N):
    """Weights at +-127 against activations at 127 / -128: vpmaddubsw would saturate (2 * 255 * 127 > 32767);
    the pack sends them to a kernel that cannot."""
    G = _gemm()
    x, w = _extreme(M, K, N, 127, seed=3 * M + K)
    packed = G.pack_int8(w)
    if isa == "avx2":
        assert packed.layout == "s16x16"
    assert torch.equal(G.int8_matmul(x, packed).long(), x.long() @ w.long().t())


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K,N,act", [(77, 384, 130, "gelu"), (1, 26, 7, None), (130, 1001, 64, "relu")])
def test_dynamic_on_7bit_weights_equals_quantize_then_int8_linear(isa, dtype, M, K, N, act):
    G = _gemm()
    g = torch.Generator().manual_seed(M * K + N)
    x = (torch.randn(M, K, generator=g) * torch.rand(M, 1, generator=g) * 3).to(dtype)
    if M > 2:
        x[1] = 0.0
        x[2, K // 2] = float("nan")
    w_q, w_s = quant.quantize_rows(torch.randn(N, K, generator=g) * K ** -0.5, _C.INT8_7BIT_MAX)
    bias = torch.randn(N, generator=g)
    inv_smooth = torch.rand(K, generator=g) * 4 + 0.25
    x_q, x_s = ops.quantize((x * inv_smooth).contiguous(), "int8", "per_token", backend="cpu")
    composed = ops.int8_linear(x_q, x_s, w_q, w_s, bias, act, dtype, backend="cpu")
    fused = G.int8_linear_dynamic(x, G.pack_int8(w_q), w_s, bias, act, inv_smooth)
    torch.testing.assert_close(fused, composed, rtol=0, atol=0, equal_nan=True)
    ref64 = ref.int8_linear(x_q, x_s, w_q, w_s, bias, act, torch.float64)
    torch_out = ref.activate((x_q.long() @ w_q.long().t()).float() * x_s.reshape(-1, 1) * w_s + bias, act).to(dtype)
    real = ~ref64.isnan().any(dim=1)
    assert int(real.sum()) >= M - 1
    assert_numerics(fused[real], ref64[real], torch_out[real], f"int8 7-bit weights [{isa}] {act} {dtype}")


@pytest.mark.skipif("avx2" not in ISAS, reason="needs AVX2")
def test_pack_refuses_wide_weights_and_follows_widening():
    from bertsilicon.backends import cpu as _cpu

    G = _gemm()
    before = _cpu.runtime._C.active_isa()
    try:
        _cpu.set_isa("avx2")
        kind = int(_C.PackKind.U8S7x16)
        w = torch.full((16, 8), 64, dtype=torch.int8)
        dst = torch.empty(_C.gemm_packed_bytes(kind, 16, 8), dtype=torch.uint8)
        with pytest.raises(ValueError, match=r"outside \[-63, 63\].*7-bit weights only"):
            _C.gemm_pack(kind, w.data_ptr(), int(_C.ElemType.I8), 16, 8, dst.data_ptr(), 1)
        w = torch.randint(-63, 64, (20, 40), dtype=torch.int8)
        x = torch.randint(-128, 128, (5, 40), dtype=torch.int8)
        packed = G.pack_int8(w)
        assert packed.layout == "u8s7x16" and G.int8_weight_max() == 63
        w[3, 7] = -100  # in place: the pack must move to the 8-bit kernel, not saturate
        assert torch.equal(G.int8_matmul(x, packed).long(), x.long() @ w.long().t())
        assert packed.layout == "s16x16"
    finally:
        _cpu.set_isa(before)


def test_quantize_rows_bound_and_special_rows():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(33, 70, generator=g) * torch.rand(33, 1, generator=g) * 5
    w[4] = 0.0
    w[5, 9] = float("nan")
    q, s = quant.quantize_rows(w, 63)
    assert q.dtype == torch.int8 and s.shape == (33,)
    ok = [i for i in range(33) if i not in (4, 5)]
    assert int(q.abs().max()) <= 63 and int(q[ok].abs().amax(dim=1).min()) == 63  # the range is used
    err = (q[ok].double() * s[ok, None].double() - w[ok].double()).abs()
    assert bool((err <= s[ok, None].double() * (0.5 + 1e-6)).all())  # round to nearest: half a step
    assert float(s[4]) == 1.0 and bool((q[4] == 0).all())
    assert bool(s[5].isnan()) and bool((q[5] == 0).all())
    with pytest.raises(ValueError, match="qmax must be an int in"):
        quant.quantize_rows(w, 128)
