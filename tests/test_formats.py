"""round_to and Philox: nearest-even bit-exact against torch's casts; stochastic rounding properties;
the Philox stream equal to Triton's tl.randint."""
import math

import pytest
import torch

from bertsilicon import formats, ops

TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
if hasattr(torch, "float8_e4m3fn"):
    TORCH_DTYPE.update({"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2})


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
