"""C++ bias_gelu and its vector math (erf, exp, exp2) on every ISA path, against float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from bertsilicon import ops
from cpu_isa import cpu_isas, isa, needs_cpu  # noqa: F401  (isa is a fixture)
from numerics import assert_numerics, poison_allocator

pytestmark = needs_cpu
ISAS = cpu_isas()
MATH = {"erf": 0, "exp": 1, "exp2": 2, "gelu_erf": 3, "bf16_round_trip": 5}


def _eval_math(name: str, x: torch.Tensor) -> torch.Tensor:
    from bertsilicon import _C

    x = x.contiguous()
    out = torch.full_like(x, float("nan"))
    _C.eval_math(MATH[name], x.data_ptr(), out.data_ptr(), x.numel())
    return out


def _ulp_error(y: torch.Tensor, ref64: torch.Tensor) -> torch.Tensor:
    """|y - ref| in units of the fp32 spacing at ref (the smallest subnormal spacing below 2^-126)."""
    mag = ref64.abs().clamp_min(2.0 ** -126)
    spacing = torch.exp2(torch.floor(torch.log2(mag)) - 23)
    return (y.double() - ref64).abs() / spacing


def _grid(lo: float, hi: float, n: int, seed: int) -> torch.Tensor:
    """A dense uniform grid plus random points with random exponents (tiny and subnormal values too)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.linspace(lo, hi, n, dtype=torch.float64).float()
    sign = torch.where(torch.rand(n // 4, generator=g) < 0.5, -1.0, 1.0)
    wide = sign * torch.exp2(torch.empty(n // 4).uniform_(-140, math.log2(max(abs(lo), abs(hi))), generator=g))
    return torch.cat([dense, wide.clamp(lo, hi)])


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_vector_erf_is_within_two_ulp(isa):
    x = _grid(-6.0, 6.0, 1_000_001, seed=1)
    y = _eval_math("erf", x)
    ulp = _ulp_error(y, torch.special.erf(x.double()))
    worst = int(ulp.argmax())
    assert float(ulp.max()) <= 2.0, f"erf: {float(ulp.max()):.2f} ulp at x={float(x[worst])!r}"
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -3.9, 10.0])
    ys = _eval_math("erf", special)
    assert ys[:4].tolist() == [0.0, -0.0, 1.0, -1.0] and math.copysign(1, float(ys[1])) < 0
    assert bool(torch.isnan(ys[4])) and ys[6] < -0.99999 and ys[7] == 1.0


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_gelu_erf_is_within_half_of_torchs_erf_error(isa):
    """GELU's own erf (a rational fit, csrc/tools/fit_gelu_erf.py) is only held to an absolute bound:
    |gelu - ref| <= |x|/2 * 6.5e-7 + 1 ulp of the result (torch's own fp32 GELU: 7.3e-7).
    Beyond the clamp the limits are selected: x above, 0 below; +-inf and NaN as the op states."""
    x = _grid(-12.0, 12.0, 1_000_001, seed=3)
    y = _eval_math("gelu_erf", x).double()
    xd = x.double()
    ref = 0.5 * xd * torch.special.erfc(-xd / math.sqrt(2.0))  # erfc: no cancellation for x < 0
    bound = xd.abs() * 0.5 * 6.5e-7 + ref.abs() * 2.0 ** -23 + 2.0 ** -149
    excess = (y - ref).abs() / bound
    worst = int(excess.argmax())
    assert float(excess.max()) <= 1.0, (
        f"gelu_erf: error {float((y - ref).abs()[worst]):.3e} at x={float(x[worst])!r} (bound {float(bound[worst]):.3e})")
    ends = _eval_math("gelu_erf", torch.tensor([float("inf"), -float("inf"), float("nan"), 6.0, -6.0, 1e30, -1e30]))
    assert ends[0] == float("inf") and ends[1] == 0 and bool(torch.isnan(ends[2]))
    assert ends[3] == 6.0 and ends[4] == 0 and ends[5] == 1e30 and ends[6] == 0
    c = 3.72 * math.sqrt(2.0)  # the clamp: Phi is exactly 1 / 0 there (the fit pins it), on every ISA
    at_clamp = _eval_math("gelu_erf", torch.tensor([c, -c, math.nextafter(c, 9), -math.nextafter(c, 9)]))
    assert at_clamp[0] == torch.tensor(c) and at_clamp[1] == 0 and at_clamp[3] == 0


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_vector_bf16_store_is_torchs_nearest_even(isa):
    """The vector fp32 -> bf16 store every bf16 kernel ends with, bit for bit against torch's cast:
    exact ties (even and odd kept lsb), one fp32 ulp either side, subnormals, inf, NaN (made quiet)."""
    g = torch.Generator().manual_seed(5)
    kept = torch.randint(0, 1 << 16, (4096,), generator=g, dtype=torch.int32) << 16
    low = torch.tensor([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int32)
    bits = (kept[:, None] | low[None, :]).flatten()
    x = torch.cat([bits.view(torch.float32), torch.randn(1001, generator=g) * 1e-39,
                   torch.tensor([float("inf"), -float("inf"), float("nan"), 3.0e38, -3.4e38])])
    y = _eval_math("bf16_round_trip", x)
    want = x.to(torch.bfloat16).float()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(y), nan)
    same = y.view(torch.int32)[~nan] == want.view(torch.int32)[~nan]
    assert bool(same.all()), f"{int((~same).sum())} values differ, first at x={float(x[~nan][~same][0])!r}"


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("name,lo,hi", [("exp", -87.0, 88.0), ("exp2", -126.0, 127.0)])
def test_vector_exp_is_within_two_ulp(isa, name, lo, hi):
    x = _grid(lo, hi, 400_001, seed=2)
    y = _eval_math(name, x)
    ref = torch.exp(x.double()) if name == "exp" else torch.exp2(x.double())
    ulp = _ulp_error(y, ref)
    assert float(ulp.max()) <= 2.0, f"{name}: {float(ulp.max()):.2f} ulp at x={float(x[int(ulp.argmax())])!r}"
    ends = _eval_math(name, torch.tensor([-float("inf"), float("nan"), -1000.0, float("inf"), 1000.0]))
    assert ends[0] == 0 and bool(torch.isnan(ends[1])) and ends[2] == 0
    if name == "exp":
        assert ends[3] == float("inf") and ends[4] == float("inf")


def _gelu_inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 3).to(dtype)
    b = (torch.randn(shape[-1], generator=g) * 0.5).to(dtype)
    return x, b


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 384), (3, 77), (2, 5, 768), (1, 1), (130, 16)])
def test_cpu_bias_gelu(isa, approximate, dtype, shape):
    x, b = _gelu_inputs(shape, dtype, seed=sum(shape) + len(approximate))
    ref64 = F.gelu(x.double() + b.double(), approximate=approximate)
    torch_out = F.gelu(x + b, approximate=approximate)  # plain torch at the same dtype
    poison_allocator(x)
    out = ops.bias_gelu(x, b, approximate, backend="cpu")
    assert out.dtype == dtype and out.shape == x.shape
    assert_numerics(out, ref64, torch_out, f"bias_gelu[{isa}, {approximate}, {dtype}] {shape}")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_cpu_bias_gelu_inf_nan(isa, approximate):
    """The op's stated limits: gelu(+inf) = +inf, gelu(-inf) = 0, NaN stays NaN; large |x| stays finite."""
    x = torch.tensor([[float("inf"), -float("inf"), float("nan"), 1e30, -1e30, 20.0, -20.0, 0.0]])
    out = ops.bias_gelu(x, torch.zeros(8), approximate, backend="cpu")
    assert out[0, 0] == float("inf") and out[0, 1] == 0 and bool(torch.isnan(out[0, 2]))
    assert out[0, 3] == 1e30 and out[0, 4] == 0 and out[0, 5] == 20.0 and abs(float(out[0, 6])) < 1e-30
    assert out[0, 7] == 0


def test_cpu_bias_gelu_refuses_what_it_cannot_do():
    x, b = _gelu_inputs((4, 64), torch.float32, 0)
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float16"):
        ops.bias_gelu(x.half(), b.half(), backend="cpu")
    with pytest.raises(ValueError, match="not contiguous"):
        ops.bias_gelu(x.t().contiguous().t(), b, backend="cpu")
    assert ops.which_backend("bias_gelu", x.double(), b.double(), "none") == "reference"
    assert ops.which_backend("bias_gelu", x, b, "none") == "cpu"


def test_isa_switch_env_and_errors():
    """BERTSILICON_ISA picks the path at import; set_isa refuses unknown or unsupported paths."""
    import subprocess
    import sys

    from bertsilicon.backends import cpu as _cpu

    code = "from bertsilicon.backends import cpu as _cpu; print(_cpu.runtime._C.active_isa())"
    env = {**__import__("os").environ, "BERTSILICON_ISA": "scalar"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert got.stdout.strip() == "scalar", got.stderr[-500:]
    with pytest.raises(ValueError, match="isa='sse9' is unknown"):
        _cpu.set_isa("sse9")
    assert _cpu.cpu_features()["best_isa"] == ISAS[-1]


def test_hide_cpu_features_env_and_errors():
    """BERTSILICON_HIDE_CPU_FEATURES hides features at import (an AVX-512 CPU without VNNI and BF16 here);
    hiding avx512f hides every AVX-512 extension and lowers the path; unknown names are refused."""
    import subprocess
    import sys

    from bertsilicon.backends import cpu as _cpu

    code = ("from bertsilicon.backends import cpu as _cpu; f = _cpu.cpu_features(); "
            "print(_cpu.kernel_path(), f['avx512_vnni'], f['avx512_bf16'])")
    env = {**__import__("os").environ, "BERTSILICON_HIDE_CPU_FEATURES": "avx512_vnni, avx512_bf16"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    has = _cpu.cpu_features()
    hidden = " ".join(f"-{n}" for n in ("avx512_vnni", "avx512_bf16") if has[n])
    assert got.stdout.split() == f"{_cpu.runtime._C.active_isa()} {hidden} False False".split(), got.stderr[-500:]

    before = _cpu.runtime._C.active_isa()
    try:
        _cpu.hide_cpu_features(["avx512f"])
        f = _cpu.cpu_features()
        assert not any(f[n] for n in ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"))
        assert f["best_isa"] == f["active_isa"] == ("avx2" if has["avx2"] else "scalar")
        with pytest.raises(ValueError, match="unknown CPU feature 'avx512_fp16'; expected some of: avx2, fma"):
            _cpu.hide_cpu_features(["avx512_fp16"])
        assert _cpu.cpu_features()["avx512f"] is False  # a refused call changes nothing
        with pytest.raises(TypeError, match="names must be a list"):
            _cpu.hide_cpu_features("avx512f")
    finally:
        _cpu.hide_cpu_features([])
        _cpu.set_isa(before)
    assert _cpu.cpu_features() == has
