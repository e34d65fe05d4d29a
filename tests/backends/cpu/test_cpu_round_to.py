"""C++ round_to: bit-identical to bertsilicon.formats.round_to (nearest-even and stochastic, same seed)
on every ISA path, for every format and input dtype; and its Philox4x32-10 stream."""
import functools

import pytest
import torch

from bertsilicon import formats, ops
from cpu_isa import cpu_isas, isa, needs_cpu  # noqa: F401  (isa is a fixture)

pytestmark = needs_cpu
ISAS = cpu_isas()
FMTS = ["bf16", "fp16", "e4m3", "e5m2", "e3m4", "e2m1fn", "e8m22",  # + custom floats (subnormals on);
        "e5m23", "e3m0"]  # these two take the general (double) path of csrc/rounding_impl.h, the rest the fp32 one
BITS_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _hard_fp32(n: int, seed: int) -> torch.Tensor:
    """Random exponents over the whole fp32 range (subnormals included), random bit patterns (NaN and
    inf among them), exact ties and near-ties of every target format, and the special values."""
    g = torch.Generator().manual_seed(seed)
    mant = torch.rand(n, generator=g) + 1
    exp = torch.randint(-150, 128, (n,), generator=g).float()
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    wide = mant * torch.exp2(exp) * sign
    bits = torch.randint(-(2 ** 31), 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32).view(torch.float32)
    parts = [wide, bits]
    for f in map(formats.get_format, FMTS):  # midpoints between neighbours (ties) and one fp32 ulp either side
        k = torch.randint(0, 2 ** (f.mbits + 1), (n // 8,), generator=g).double()
        e = torch.randint(f.emin - f.mbits - 2, f.emax + 2, (n // 8,), generator=g).double()
        tie = ((2 * k + 1) * torch.exp2(e - f.mbits - 1)).float()
        parts += [tie, torch.nextafter(tie, torch.tensor(0.0)), torch.nextafter(tie, torch.tensor(float("inf")))]
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1.0, -1.0, 65504.0, 65520.0,
                            65519.0, 448.0, 464.0, 480.0, 57344.0, 61440.0, 3.4028235e38, 1e-45, -1e-45, 1.1754942e-38])
    x = torch.cat(parts + [special, -special])
    return x[torch.randperm(x.numel(), generator=g)]


def _assert_bit_equal(got: torch.Tensor, expect: torch.Tensor, x: torch.Tensor, what: str):
    gb, eb = got.view(BITS_VIEW[got.dtype]), expect.view(BITS_VIEW[expect.dtype])
    same = (gb == eb) | (torch.isnan(got) & torch.isnan(expect))
    if not bool(same.all()):
        bad = (~same).nonzero()[:4, 0]
        raise AssertionError(f"{what}: {int((~same).sum())} of {x.numel()} differ, e.g. x={x[bad].tolist()} "
                             f"cpu={got[bad].tolist()} reference={expect[bad].tolist()}")


@functools.lru_cache(maxsize=None)
def _fp32_case(fmt: str, rounding: str):
    """(x, seed, reference result): computed once and shared by the ISA paths (the reference is slow)."""
    x = _hard_fp32(12_000, seed=len(fmt) * 7 + len(rounding))
    seed = 2 ** 40 + 12345 if rounding == "stochastic" else None
    return x, seed, formats.round_to(x, fmt, rounding, seed)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fmt", FMTS)
def test_cpu_round_to_fp32_bit_identical(isa, fmt, rounding):
    x, seed, expect = _fp32_case(fmt, rounding)
    got = ops.round_to(x, fmt, rounding, seed, backend="cpu")
    _assert_bit_equal(got, expect, x, f"{fmt} {rounding} [{isa}]")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_round_to_16bit_inputs_every_pattern(isa, dtype, rounding):
    """Every one of the 65536 bf16 / fp16 bit patterns (nearest) or a random quarter of them (stochastic),
    to every format; the result keeps the input dtype."""
    for fmt in FMTS:
        x, expect = _16bit_case(dtype, fmt, rounding)
        got = ops.round_to(x, fmt, rounding, 7, backend="cpu")
        assert got.dtype == dtype
        _assert_bit_equal(got, expect, x, f"{dtype} -> {fmt} {rounding} [{isa}]")


@functools.lru_cache(maxsize=None)
def _16bit_case(dtype, fmt: str, rounding: str):
    x = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype)
    if rounding == "stochastic":
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(3))[: 2 ** 14]]
    return x, formats.round_to(x, fmt, rounding, 7)


def test_cpu_round_to_seeds_and_shapes():
    x = torch.randn(3, 5, 77)
    for seed in (0, 1, 2 ** 64 - 1, -5):
        got = ops.round_to(x, "e4m3", "stochastic", seed, backend="cpu")
        assert got.shape == x.shape
        _assert_bit_equal(got, formats.round_to(x, "e4m3", "stochastic", seed), x, f"seed {seed}")
    assert ops.round_to(torch.empty(0, 4), "bf16", backend="cpu").shape == (0, 4)


def test_cpu_philox_matches_reference():
    from bertsilicon import _C

    for seed, start in [(0, 0), (12345, 77), (2 ** 40 + 7, 2 ** 32 - 5), (2 ** 64 - 1, 10 ** 6)]:
        out = torch.empty(64, dtype=torch.int32)
        _C.philox_bits(seed, start, out.data_ptr(), 64)
        expect = formats.philox4x32(seed, torch.arange(start, start + 64, dtype=torch.int64))[0]
        assert torch.equal(out.to(torch.int64) & 0xFFFFFFFF, expect), f"seed={seed} start={start}"


def test_cpu_round_to_refuses_what_it_cannot_do():
    x = torch.randn(8, 8)
    with pytest.raises(ValueError, match="backend='cpu'.*not contiguous"):
        ops.round_to(x.t(), "bf16", backend="cpu")
    with pytest.raises(ValueError, match="dtype"):
        ops.round_to(x.double(), "bf16", backend="cpu")
    assert ops.which_backend("round_to", x.t(), "bf16", "nearest", None) == "reference"
    for fmt in ("int8", "q3.4", "e4m3-nosub"):
        with pytest.raises(ValueError, match="backend='cpu'.*float formats with subnormals"):
            ops.round_to(x, fmt, backend="cpu")
