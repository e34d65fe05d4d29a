"""round_to and Philox: nearest-even bit-exact against torch's casts; stochastic rounding properties;
the Philox stream equal to Triton's tl.randint."""
import math

import pytest
import torch

from bertsilicon import formats, ops

TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
if hasattr(torch, "float8_e4m3fn"):
    TORCH_DTYPE.update({"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Elementwise int64 work on a shared 2-core machine: one intra-op thread is ~10x faster under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wide_fp32(n, seed):
    """fp32 values over a wide exponent range, both signs, with subnormals, ties and exact values."""
    g = torch.Generator().manual_seed(seed)
    mant = torch.rand(n, generator=g) + 1
    exp = torch.randint(-150, 128, (n,), generator=g).float()
    x = (mant * torch.exp2(exp)) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    # random fp32 bit patterns too (covers every mantissa tail)
    bits = torch.randint(0, 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    return torch.cat([x, bits.view(torch.float32), torch.tensor([0.0, -0.0, 1.0, 65504.0, 65520.0, 448.0, 464.0, 480.0])])


@pytest.mark.parametrize("fmt", sorted(TORCH_DTYPE))
def test_nearest_is_bit_exact_with_torch_cast(fmt):
    x = _wide_fp32(100_000, seed=len(fmt))
    x = x[torch.isfinite(x)]
    expect = x.to(TORCH_DTYPE[fmt]).float()
    got = formats.round_to(x, fmt, "nearest")
    same = (got.view(torch.int32) == expect.view(torch.int32)) | (torch.isnan(got) & torch.isnan(expect))
    assert bool(same.all()), f"{int((~same).sum())} mismatches, e.g. x={x[~same][:4].tolist()} got={got[~same][:4].tolist()} torch={expect[~same][:4].tolist()}"


def test_every_bf16_pattern_roundtrips_and_fp16_nearest():
    # every bf16 value is exact: round_to must return it unchanged (NaN stays NaN)
    allbf = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    got = formats.round_to(allbf, "bf16")
    assert bool(((got.view(torch.int32) == allbf.view(torch.int32)) | (torch.isnan(got) & torch.isnan(allbf))).all())
    # every fp16 value is exact in fp16
    allh = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    goth = formats.round_to(allh, "fp16")
    assert bool(((goth.view(torch.int32) == allh.view(torch.int32)) | (torch.isnan(goth) & torch.isnan(allh))).all())


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2"])
def test_stochastic_is_a_neighbour_unbiased_and_p_up_matches(fmt):
    f = formats.FORMATS[fmt]
    g = torch.Generator().manual_seed(1)
    base = torch.tensor([1.0, -3.0, 0.75]) * (2.0 ** min(f.emax - 2, 4))
    ulp = torch.exp2(torch.floor(torch.log2(base.abs())) - f.mbits)
    frac = torch.tensor([0.1, 0.5, 0.8125])
    n = 20_000
    x = (base + torch.sign(base) * frac * ulp).repeat(n, 1)
    y = ops.round_to(x, fmt, "stochastic", seed=1234, backend="reference")
    lo, hi = base, base + torch.sign(base) * ulp
    assert bool(((y == lo) | (y == hi)).all()), "stochastic result is not one of the two neighbours"
    p_up = (y == hi).double().mean(0)
    z = (p_up - frac.double()) / torch.sqrt(frac.double() * (1 - frac.double()) / n)
    assert bool((z.abs() < 5).all()), f"P(round up) {p_up.tolist()} != fractions {frac.tolist()} (z={z.tolist()})"
    mean_err = (y.double() - x.double()).mean(0) / ulp.double()
    assert bool((mean_err.abs() < 5 * 0.5 / math.sqrt(n)).all()), f"biased: {mean_err.tolist()} ulp"


def test_stochastic_exact_nan_seed():
    x = torch.tensor([1.0, 0.5, -2.0, float("nan"), float("inf"), 0.0, -0.0])
    y = formats.round_to(x, "bf16", "stochastic", seed=3)
    assert torch.equal(y[:3], x[:3]) and bool(torch.isnan(y[3])) and y[4] == float("inf")
    assert y[6].item() == 0 and math.copysign(1, y[6].item()) < 0
    r = torch.randn(1000)
    a = formats.round_to(r, "fp16", "stochastic", seed=9)
    assert torch.equal(a, formats.round_to(r, "fp16", "stochastic", seed=9))
    assert not torch.equal(a, formats.round_to(r, "fp16", "stochastic", seed=10))


def test_overflow_policies():
    x = torch.tensor([1e6, -1e6, 500.0])
    assert formats.round_to(x, "fp16").tolist()[:2] == [float("inf"), float("-inf")]
    assert formats.round_to(x, "fp16", overflow="saturate").tolist()[:2] == [65504.0, -65504.0]
    e = formats.round_to(x, "e4m3", overflow="inf")
    assert bool(torch.isnan(e).all()), "e4m3 has no inf: overflow='inf' gives its NaN"
    assert formats.round_to(x, "e4m3", overflow="saturate").tolist() == [448.0, -448.0, 448.0]


def test_round_to_keeps_dtype():
    x = torch.randn(64).to(torch.bfloat16)
    y = ops.round_to(x, "e4m3")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.float(), formats.round_to(x.float(), "e4m3"))


def test_philox_matches_triton_randint():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def _randint_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        r = tl.randint(seed, offs)
        tl.store(out_ptr + offs, r.to(tl.int32, bitcast=True), mask=offs < n)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 1000
    for seed in (0, 12345, 2 ** 40 + 7):
        out = torch.empty(n, dtype=torch.int32, device=device)
        _randint_kernel[(triton.cdiv(n, 256),)](out, seed, n, BLOCK=256)
        ours = formats.random_bits(seed, n)
        assert torch.equal(out.cpu().to(torch.int64) & 0xFFFFFFFF, ours)


@pytest.mark.parametrize("bad", [dict(fmt="fp7"), dict(fmt="bf16", rounding="up"), dict(fmt="bf16", rounding="stochastic")])
def test_round_to_bad_arguments(bad):
    with pytest.raises(ValueError):
        ops.round_to(torch.randn(4), **bad)
    with pytest.raises(ValueError, match="dtype"):
        ops.round_to(torch.randn(4, dtype=torch.float64), "bf16")


# ------------------------------------------------------------------------------------------------ #
# Integer formats with a scale, fixed point, custom floats, bad input                              #
# ------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_token"])
def test_int8_nearest_matches_reference_quantize(granularity):
    from bertsilicon import reference

    x = torch.randn(37, 77, generator=torch.Generator().manual_seed(3)) * torch.logspace(-2, 2, 77)
    q, s = formats.quantize(x, "int8", granularity)
    q_ref, s_ref = reference.quantize(x, "int8", granularity)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    y = formats.round_to(x, "int8", granularity=granularity)
    assert torch.equal(y, q_ref.float() * s_ref)


def test_int4_per_group_against_float64_model():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 96, generator=g)
    x[2, 32:64] = 0.0  # an all-zero group gets scale 1
    q, s = formats.quantize(x, "int4", "per_group", group_size=32)
    assert q.dtype == torch.int8 and s.shape == (6, 3)
    amax = x.double().reshape(6, 3, 32).abs().amax(-1)
    s64 = torch.where(amax == 0, torch.ones_like(amax), amax / 7)
    assert torch.equal(s, s64.float())
    y = x.double() / s.double().repeat_interleave(32, -1)
    expect = torch.round(y.float().double()).clamp(-7, 7)  # x / scale formed in fp32, then round-half-even
    assert torch.equal(q.double(), expect) and int(q.abs().max()) == 7
    deq = formats.round_to(x, "int4", granularity="per_group", group_size=32)
    assert torch.equal(deq, formats.dequantize(q, s, group_size=32))


def test_int8_stochastic_is_unbiased_with_explicit_scale():
    n = 40_000
    x = torch.full((n,), 0.3)
    scale = torch.tensor(0.25)
    y = formats.round_to(x, "int8", "stochastic", seed=11, scale=scale)  # 0.3 / 0.25 = 1.2 steps: P(up) = 0.2
    assert set(torch.unique(y).tolist()) == {0.25, 0.5}
    p_up = float((y == 0.5).double().mean())
    assert abs(p_up - 0.2) < 5 * math.sqrt(0.2 * 0.8 / n)
    sat = formats.round_to(torch.tensor([1e3, -1e3, float("nan")]), "int8", scale=scale)
    assert sat[:2].tolist() == [127 * 0.25, -127 * 0.25] and bool(torch.isnan(sat[2]))


def test_fixed_point_grid_and_two_complement_saturation():
    f = formats.get_format("q3.4")
    assert (f.int_bits, f.frac_bits, f.max_finite, f.min_value) == (3, 4, 8 - 1 / 16, -8.0)
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2)) * 6
    y = formats.round_to(x, "q3.4")
    expect = torch.round(x.double() * 16).clamp(-128, 127) / 16
    assert torch.equal(y.double(), expect)
    tz = formats.round_to(x, "q3.4", "toward_zero")
    assert torch.equal(tz.double(), torch.trunc(x.double() * 16).clamp(-128, 127) / 16)
    assert formats.round_to(torch.tensor([100.0, -100.0, float("inf")]), "q3.4").tolist() == [8 - 1 / 16, -8.0, 8 - 1 / 16]
    sr = formats.round_to(torch.full((20000,), 0.5 + 1 / 64), "q3.4", "stochastic", seed=1)
    assert abs(float(sr.double().mean()) - (0.5 + 1 / 64)) < 5 * (1 / 16) * 0.5 / math.sqrt(20000)


def test_custom_float_matches_named_and_subnormals_off():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(4)) * 1e-3
    for name, (e, m) in {"bf16": (8, 7), "fp16": (5, 10), "e5m2": (5, 2)}.items():
        assert torch.equal(formats.round_to(x, formats.float_format(e, m)), formats.round_to(x, name))
    assert formats.get_format("e4m3fn") == formats.float_format(4, 3, ieee=False)
    assert torch.equal(formats.round_to(x, "e4m3fn"), formats.round_to(x, "e4m3"))
    nosub = formats.get_format("e5m10-nosub")
    assert nosub.smallest_subnormal == 2.0 ** -14
    tiny = torch.tensor([2.0 ** -15, 2.0 ** -15 + 2.0 ** -20, 2.0 ** -16, -3 * 2.0 ** -16, 2.0 ** -14 + 2.0 ** -24])
    assert formats.round_to(tiny, nosub).tolist() == [0.0, 2.0 ** -14, 0.0, -(2.0 ** -14), 2.0 ** -14 + 2.0 ** -24]
    assert formats.round_to(tiny, "fp16").tolist() == tiny.half().float().tolist()


@pytest.mark.parametrize("call, match", [
    (lambda: formats.round_to(torch.randn(4), "fp7"), "fmt='fp7' is unknown"),
    (lambda: formats.round_to(torch.randn(4), "e9m2"), "ebits=9 is out of range"),
    (lambda: formats.round_to(torch.randn(4), "e4m24"), "mbits=24 is out of range"),
    (lambda: formats.float_format(1, 3), "ebits=1 is out of range"),
    (lambda: formats.float_format(8, 3, ieee=False), "beyond float32's range"),
    (lambda: formats.round_to(torch.randn(4), "q20.10"), "int_bits \\+ frac_bits = 30"),
    (lambda: formats.round_to(torch.randn(4), "int8"), "int8 needs a scale"),
    (lambda: formats.round_to(torch.randn(4), "int4", granularity="per_row"), "granularity='per_row'"),
    (lambda: formats.round_to(torch.randn(4, 6), "int4", granularity="per_group", group_size=4), "must divide"),
    (lambda: formats.round_to(torch.randn(4, 6), "int4", granularity="per_group"), "needs group_size"),
    (lambda: formats.round_to(torch.randn(4, 6), "int8", scale=torch.ones(5)), "scale has shape"),
    (lambda: formats.round_to(torch.randn(4), "bf16", scale=torch.ones(1)), "integer formats only"),
    (lambda: formats.round_to(torch.randn(4), "q3.4", overflow="inf"), "has no inf"),
    (lambda: formats.round_to(torch.randn(4), "bf16", overflow="wrap"), "overflow='wrap'"),
    (lambda: formats.int_format(1), "bits=1 is out of range"),
])
def test_bad_format_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
