"""Conformance kit for rounding implementations: run it on any backend's ``round_to``.

A *round function* is ``round_fn(x, fmt, rounding, seed, **kw) -> tensor`` with the meaning of
:func:`bertsilicon.formats.round_to` (``kw`` is only used for ``overflow=`` when a check is asked to
test an explicit policy). :func:`backend_round_fn` wraps ``bertsilicon.ops.round_to(..., backend=b)``.

The expected values come from an independent float64 model of each format (:func:`neighbours`,
:func:`nearest_model`, :func:`format_values`): the kit never asks the implementation under test (nor
``formats.round_to``) what the right answer is. Every check raises :class:`ConformanceError` (an
``AssertionError``) with the first offending inputs; :func:`run` runs them all and returns a table.

Checks (docs/architecture.md, "Stochastic rounding"):

================================  ===================================================================
``check_neighbours``              the result is one of the two neighbours (nearest: the nearer one, ties to even)
``check_exact_unchanged``         every finite value of the format comes back bit for bit, any rounding
``check_unbiased``                z-test of the mean rounding error over many draws (stochastic)
``check_p_up``                    P(round up) equals the fractional position, 15 positions (stochastic)
``check_variance``                E[(y - x)^2] = p (1 - p) q^2 <= q^2 / 4 (stochastic)
``check_sign_symmetry``           round(-x) == -round(x), bit for bit with the same seed
``check_nan``                     NaN stays NaN, incl. payloads the "add random bits to the pattern" trick
                                  turns into inf (0x7F800001) or +-0 (0x7FFFFFFF, 0xFFFFFFFF)
``check_overflow``                the largest finite value, the gap above it, huge values and inf per policy
``check_subnormal_spacing``       results below the smallest normal are multiples of 2^(emin - m)
``check_nearest_matches_torch``   nearest == torch's own cast for every 16-bit/8-bit pattern, its ties
                                  and both sides of every tie (bf16, fp16, e4m3, e5m2 where torch has them)
``check_same_seed``               same seed -> bit-identical on every backend and call; other seed differs
================================  ===================================================================

Statistical checks use ``Z_LIMIT = 5`` standard errors (a false alarm about once in 3.5 million runs
per statistic); they are deterministic for a given seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from . import FORMATS, FloatFormat, default_overflow, get_format

Z_LIMIT = 5.0
RoundFn = Callable[..., torch.Tensor]
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
for _name, _attr in (("e4m3", "float8_e4m3fn"), ("e5m2", "float8_e5m2")):
    if hasattr(torch, _attr):
        TORCH_DTYPES[_name] = getattr(torch, _attr)

# fp32 NaN patterns. A common stochastic-rounding shortcut adds random bits to the raw pattern and
# truncates: 0x7F800001 (payload below the kept bits) truncates to +inf, 0xFF800001 to -inf, and
# 0x7FFFFFFF / 0xFFFFFFFF carry out of the exponent into -0 / +0.
NAN_PAYLOADS_FP32 = (0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC00000, 0x7F80FFFF,
                     0x7F807FFF, 0x7FBFFFFF, 0x7F8000FF, 0x7FFF0001, 0xFFFFFF00)
NAN_PAYLOADS_16 = {torch.float16: (0x7C01, 0xFC01, 0x7FFF, 0xFFFF, 0x7E00, 0x7C0F),
                   torch.bfloat16: (0x7F81, 0xFF81, 0x7FFF, 0xFFFF, 0x7FC0, 0x7F8F)}


class ConformanceError(AssertionError):
    """A rounding implementation broke a rule of the kit."""


@dataclass
class CheckResult:
    check: str
    fmt: str
    rounding: str
    passed: bool
    detail: str = ""


def backend_round_fn(backend: str, device=None) -> RoundFn:
    """``bertsilicon.ops.round_to`` pinned to one backend; inputs are moved to ``device`` (e.g. ``"cuda"``
    for Triton on a GPU) and results brought back to the CPU. Explicit overflow policies are not part of
    the op's signature: checks that need one raise ``NotImplementedError`` for such functions."""
    from .. import ops

    def round_fn(x, fmt, rounding="nearest", seed=None, **kw):
        if kw:
            raise NotImplementedError(f"ops.round_to has no {sorted(kw)} argument")
        xd = x if device is None else x.to(device)
        return ops.round_to(xd, fmt, rounding, seed, backend=backend).to(x.device)

    round_fn.__name__ = f"ops.round_to[{backend}]"
    return round_fn


# ------------------------------------------------------------------------------------------------ #
# Independent float64 model of a float format                                                      #
# ------------------------------------------------------------------------------------------------ #
def _float_fmt(fmt) -> FloatFormat:
    f = get_format(fmt)
    if not isinstance(f, FloatFormat):
        raise ValueError(f"the conformance kit checks float formats; got {f.name!r}")
    return f


def quantum(x: torch.Tensor, fmt) -> torch.Tensor:
    """Spacing of ``fmt`` at ``|x|`` (float64): 2^(max(floor(log2|x|), emin) - m); below the smallest
    normal 2^(emin - m) with subnormals, 2^emin without."""
    f = _float_fmt(fmt)
    a = x.double().abs()
    _, k = torch.frexp(torch.where(a > 0, a, torch.ones_like(a)))  # a = mant * 2^k, mant in [0.5, 1)
    e = (k - 1).to(torch.float64)
    normal = (a >= 2.0 ** f.emin)
    if f.subnormals:
        qexp = torch.clamp(e, min=f.emin) - f.mbits
    else:
        qexp = torch.where(normal, e - f.mbits, torch.full_like(e, f.emin))
    return torch.exp2(qexp)


def neighbours(x: torch.Tensor, fmt) -> tuple[torch.Tensor, torch.Tensor]:
    """(toward zero, away from zero) grid values around finite ``x`` in float64, before overflow
    handling (equal when x is on the grid)."""
    xd = x.double()
    q = quantum(xd, fmt)
    lo = torch.floor(xd.abs() / q) * q
    hi = torch.where(lo == xd.abs(), lo, lo + q)
    sign = torch.where(torch.signbit(xd), -1.0, 1.0).to(torch.float64)
    return sign * lo, sign * hi


def overflow_value(fmt, policy: Optional[str]) -> float:
    """What a too-large positive value becomes under ``policy`` (None = the format's default)."""
    f = _float_fmt(fmt)
    policy = policy or default_overflow(f)
    if policy == "saturate":
        return f.max_finite
    return math.inf if f.ieee else math.nan


def _nearest_grid(x: torch.Tensor, fmt) -> torch.Tensor:
    """The nearer neighbour, ties to the even one (no overflow handling)."""
    lo, hi = neighbours(x, fmt)
    q = quantum(x, fmt)
    dlo = (x.double() - lo).abs()
    dhi = (hi - x.double()).abs()
    lo_even = torch.remainder(torch.round(lo.abs() / q), 2) == 0
    return torch.where((dlo < dhi) | ((dlo == dhi) & lo_even), lo, hi)


def nearest_model(x: torch.Tensor, fmt, overflow: Optional[str] = None) -> torch.Tensor:
    """Round to nearest, ties to even, in float64 from the neighbours (then the overflow policy)."""
    return _apply_overflow(_nearest_grid(x, fmt), x, _float_fmt(fmt), overflow)


def _apply_overflow(y: torch.Tensor, x: torch.Tensor, f: FloatFormat, overflow) -> torch.Tensor:
    big = overflow_value(f, overflow)
    too_big = (y.abs() > f.max_finite) | torch.isinf(x.double())
    return torch.where(too_big, torch.copysign(torch.full_like(y, big), x.double()), y)


def format_values(fmt) -> torch.Tensor:
    """Every finite value of a float format with <= 16 bits (float64, both zeros), decoded from its
    codes independently of any rounding code."""
    f = _float_fmt(fmt)
    nbits = 1 + f.ebits + f.mbits
    if nbits > 16:
        raise ValueError(f"format {f.name} has {nbits} bits; format_values enumerates formats of <= 16 bits")
    codes = torch.arange(1 << (nbits - 1), dtype=torch.int64)
    e = codes >> f.mbits
    m = (codes & ((1 << f.mbits) - 1)).double()
    top = (1 << f.ebits) - 1
    if f.ieee:
        finite = e < top
    else:
        finite = ~((e == top) & (m == (1 << f.mbits) - 1))
    if not f.subnormals:
        finite &= (e > 0) | (m == 0)
    mag = torch.where(e > 0, (1 + m / (1 << f.mbits)) * torch.exp2((e - f.bias).double()),
                      m / (1 << f.mbits) * 2.0 ** f.emin)
    mag = mag[finite]
    return torch.cat([mag, -mag])


def _subsample(v: torch.Tensor, max_values: Optional[int], seed: int) -> torch.Tensor:
    """At most ``max_values`` of ``v``: its 64 first and last entries (extremes) + a random draw."""
    if max_values is None or v.numel() <= max_values:
        return v
    idx = torch.randperm(v.numel(), generator=_gen(seed))[:max_values]
    return torch.cat([v[:64], v[-64:], v[idx]])


def _fail(name: str, msg: str, bad: torch.Tensor, *tensors) -> None:
    if bool(bad.any()):
        idx = bad.nonzero().flatten()[:4]
        shown = "; ".join(", ".join(f"{float(t.flatten()[i]):.9g}" for t in tensors) for i in idx.tolist())
        raise ConformanceError(f"{name}: {msg} ({int(bad.sum())} of {bad.numel()}); first (input, got, expected...): {shown}")


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal values with equal signs of zero, or both NaN."""
    a, b = a.double(), b.double()
    return ((a == b) & (torch.signbit(a) == torch.signbit(b))) | (torch.isnan(a) & torch.isnan(b))


# ------------------------------------------------------------------------------------------------ #
# Inputs                                                                                           #
# ------------------------------------------------------------------------------------------------ #
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_inputs(fmt, n: int = 4096, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Finite inputs spanning the format's range: normals, subnormals, both signs, ties, exact values,
    values just around the largest finite value (never zeros only)."""
    f = _float_fmt(fmt)
    g = _gen(seed)
    lo_exp = max(f.emin - f.mbits - 2, -149)
    hi_exp = min(f.emax, 127)
    e = torch.randint(lo_exp, hi_exp + 1, (n,), generator=g).double()
    x = (1 + torch.rand(n, generator=g, dtype=torch.float64)) * torch.exp2(e)
    x = torch.where(torch.rand(n, generator=g) < 0.5, -x, x).float()
    grid = format_values(f) if 1 + f.ebits + f.mbits <= 16 else x.double()
    pick = grid[torch.randint(0, grid.numel(), (n // 8,), generator=g)]
    q = quantum(pick, f)
    ties = (pick + 0.5 * q * torch.sign(pick)).float()  # midpoints (exact in fp32 for formats <= 16 bits)
    x = torch.cat([x, pick.float(), ties])
    x = x[torch.isfinite(x)]
    return x.to(dtype) if dtype != torch.float32 else x


def _fraction_inputs(fmt, fractions: Sequence[float], n: int, seed: int):
    """Inputs at ``base + frac * q`` for bases of both signs in the normal and subnormal ranges:
    returns (x [n, bases*fractions] float32, lo, hi, frac) with x exactly representable in fp32."""
    f = _float_fmt(fmt)
    top = min(f.emax - 1, 6)
    bases = [1.0 * 2.0 ** top, -1.25 * 2.0 ** min(top, 1), 1.5 * 2.0 ** f.emin]
    if f.subnormals and f.emin - f.mbits > -149:
        bases.append(-3 * 2.0 ** (f.emin - f.mbits))  # a subnormal of the target format
    base = torch.tensor(bases, dtype=torch.float64)
    q = quantum(base, f)
    # fractions snapped to fp32-representable positions between the neighbours
    fr = torch.tensor(fractions, dtype=torch.float64)
    x = (base[:, None] + torch.sign(base)[:, None] * fr[None, :] * q[:, None]).float()
    x64 = x.double()
    lo, hi = neighbours(x64, f)
    frac = (x64 - lo).abs() / (hi - lo).abs().clamp_min(1e-300)
    frac = torch.where(hi == lo, torch.zeros_like(frac), frac)
    flat = lambda t: t.flatten()[None, :].expand(n, -1)
    return flat(x).contiguous(), flat(lo), flat(hi), flat(frac)


# ------------------------------------------------------------------------------------------------ #
# Checks                                                                                           #
# ------------------------------------------------------------------------------------------------ #
def check_neighbours(round_fn: RoundFn, fmt, rounding: str, seed: int = 0, n: int = 4096) -> None:
    """One of the two neighbours; for nearest the nearer one (ties to even); toward zero the inner one."""
    f = _float_fmt(fmt)
    x = sample_inputs(f, n, seed)
    x = x[x.abs() < f.max_finite]  # the overflow region is check_overflow's
    y = round_fn(x, f.name, rounding, seed).double()
    lo, hi = neighbours(x, f)
    name = f"neighbours[{f.name}, {rounding}]"
    if rounding == "nearest":
        _fail(name, "not the nearest value (ties to even)", ~_same(y, nearest_model(x, f)), x, y, nearest_model(x, f))
    elif rounding == "toward_zero":
        _fail(name, "not the neighbour toward zero", ~_same(y, lo), x, y, lo)
    hi_ok = torch.where(hi.abs() > f.max_finite, torch.full_like(hi, overflow_value(f, None)).copysign(hi), hi)
    _fail(name, "not one of the two neighbours", ~(_same(y, lo) | _same(y, hi_ok)), x, y, lo, hi)


def check_exact_unchanged(round_fn: RoundFn, fmt, rounding: str, seed: int = 0,
                          max_values: Optional[int] = None) -> None:
    """Every finite value of the format (all codes for <= 16-bit formats; ``max_values`` caps that for
    slow backends such as the Triton interpreter) comes back unchanged."""
    f = _float_fmt(fmt)
    if 1 + f.ebits + f.mbits <= 16:
        v = _subsample(format_values(f), max_values, seed)
    else:
        v = nearest_model(sample_inputs(f, 8192, seed), f)
        v = v[v.abs() <= f.max_finite]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # every input dtype that holds them all
        x = v.to(dtype)
        if not bool((x.double() == v).all()):
            continue
        y = round_fn(x, f.name, rounding, seed)
        _fail(f"exact[{f.name}, {rounding}, {dtype} input]", "an exactly representable input changed",
              ~_same(y, x), x.float(), y.float())


def check_unbiased(round_fn: RoundFn, fmt, seed: int = 0, n: int = 20000) -> None:
    """Mean of (y - x) / q over ``n`` draws per input is 0 within ``Z_LIMIT`` standard errors."""
    f = _float_fmt(fmt)
    x, lo, hi, p = _fraction_inputs(f, (0.1, 0.25, 0.5, 0.8125, 0.97), n, seed)
    y = round_fn(x, f.name, "stochastic", seed).double()
    q = (hi - lo).abs()
    err = ((y - x.double()) * torch.sign(x.double()) / q).mean(0)
    se = torch.sqrt(p[0] * (1 - p[0]) / n).clamp_min(1e-12)
    z = err / se
    bad = z.abs() > Z_LIMIT
    _fail(f"unbiased[{f.name}]", f"mean error beyond {Z_LIMIT} standard errors (z shown)", bad, x[0], err, z)


def check_p_up(round_fn: RoundFn, fmt, seed: int = 0, n: int = 8000) -> None:
    """P(round away from zero) equals the fractional position between the neighbours, for 15 positions."""
    f = _float_fmt(fmt)
    fractions = [k / 16 for k in range(1, 16)]
    x, lo, hi, p = _fraction_inputs(f, fractions, n, seed + 1)
    y = round_fn(x, f.name, "stochastic", seed).double()
    up = _same(y, hi) & (hi != lo)
    p_hat = up.double().mean(0)
    se = torch.sqrt(p[0] * (1 - p[0]) / n).clamp_min(1e-12)
    z = (p_hat - p[0]) / se
    _fail(f"p_up[{f.name}]", f"P(round up) differs from the fractional position by > {Z_LIMIT} SE",
          z.abs() > Z_LIMIT, x[0], p_hat, p[0])
    neither = ~(_same(y, lo) | _same(y, hi))
    _fail(f"p_up[{f.name}]", "not one of the two neighbours", neither, x, y, lo, hi)


def check_variance(round_fn: RoundFn, fmt, seed: int = 0, n: int = 20000) -> None:
    """E[(y - x)^2] / q^2 equals p (1 - p) (<= 1/4): stochastic rounding adds no more noise than that."""
    f = _float_fmt(fmt)
    x, lo, hi, p = _fraction_inputs(f, (0.1, 0.3, 0.5, 0.7, 0.9), n, seed + 2)
    y = round_fn(x, f.name, "stochastic", seed).double()
    q = (hi - lo).abs()
    mse = (((y - x.double()) / q) ** 2).mean(0)
    p0 = p[0]
    expect = p0 * (1 - p0)
    se = torch.sqrt(p0 * (1 - p0) * (1 - 2 * p0) ** 2 / n).clamp_min(1e-4)
    bad = ((mse - expect).abs() > Z_LIMIT * se) | (mse > 0.25 + Z_LIMIT * se)
    _fail(f"variance[{f.name}]", "mean squared rounding error != p(1-p) q^2", bad, x[0], mse, expect)


def check_sign_symmetry(round_fn: RoundFn, fmt, rounding: str, seed: int = 0, n: int = 4096) -> None:
    """round(-x) == -round(x) bit for bit (same seed: stochastic rounding acts on the magnitude)."""
    f = _float_fmt(fmt)
    x = sample_inputs(f, n, seed + 3)
    y_pos = round_fn(x, f.name, rounding, seed)
    y_neg = round_fn(-x, f.name, rounding, seed)
    _fail(f"sign_symmetry[{f.name}, {rounding}]", "round(-x) != -round(x)", ~_same(y_neg, -y_pos), x, y_pos, y_neg)


def check_nan(round_fn: RoundFn, fmt, rounding: str, seed: int = 0, repeats: int = 256) -> None:
    """NaN in -> NaN out for every payload (fp32 and 16-bit inputs), over ``repeats`` random draws each."""
    f = _float_fmt(fmt)
    pats = torch.tensor(NAN_PAYLOADS_FP32, dtype=torch.int64)
    pats = torch.cat([pats, 0x7F800000 | torch.randint(1, 1 << 23, (20,), generator=_gen(seed))])
    x = (pats.repeat(repeats) - ((pats.repeat(repeats) >> 31) << 32)).to(torch.int32).view(torch.float32)
    y = round_fn(x, f.name, rounding, seed)
    _fail(f"nan[{f.name}, {rounding}, fp32 input]", "NaN input did not stay NaN", ~torch.isnan(y), x.view(torch.int32), y)
    for dtype, p16 in NAN_PAYLOADS_16.items():
        codes = torch.tensor(p16, dtype=torch.int64).repeat(repeats)
        x16 = (codes - ((codes >> 15) << 16)).to(torch.int16).view(dtype)
        y16 = round_fn(x16, f.name, rounding, seed)
        _fail(f"nan[{f.name}, {rounding}, {dtype} input]", "NaN input did not stay NaN", ~torch.isnan(y16),
              x16.view(torch.int16), y16.float())


def check_overflow(round_fn: RoundFn, fmt, rounding: str, seed: int = 0, overflow: Optional[str] = None,
                   n: int = 64) -> None:
    """The largest finite value is kept; values in the gap above it, huge values and +-inf follow the
    policy ``overflow`` (None = the format's default, e.g. torch's cast): a value whose rounded
    magnitude (nearest / toward zero / either stochastic neighbour) exceeds the largest finite value
    becomes the overflow value (inf, the format's NaN, or the largest finite value for "saturate")."""
    f = _float_fmt(fmt)
    mx = f.max_finite
    q = float(quantum(torch.tensor([mx]), f))
    gap = [mx, mx + 0.25 * q, mx + 0.5 * q, mx + 0.75 * q, mx + q, mx + 3 * q, 1e4 * mx, 3.0e38, math.inf]
    x = torch.tensor(gap, dtype=torch.float64).float()  # beyond float32's range -> inf (still a valid input)
    x = torch.cat([x, -x]).repeat(n)
    kw = {} if overflow is None else {"overflow": overflow}
    y = round_fn(x, f.name, rounding, seed, **kw)
    xd = x.double()
    finite = torch.isfinite(xd)
    lo, hi = neighbours(torch.where(finite, xd, torch.zeros_like(xd)), f)
    if rounding == "nearest":
        options = [_nearest_grid(torch.where(finite, xd, torch.zeros_like(xd)), f)]
    elif rounding == "toward_zero":
        options = [lo]
    else:
        options = [lo, hi]
    ok = torch.zeros_like(finite)
    for opt in options:
        ok |= _same(y, _apply_overflow(torch.where(finite, opt, xd), x, f, overflow))
    policy = overflow or "default=" + default_overflow(f)
    _fail(f"overflow[{f.name}, {rounding}, {policy}]", "wrong value at or above the largest finite value",
          ~ok, x, y, _apply_overflow(torch.where(finite, options[-1], xd), x, f, overflow))


def check_subnormal_spacing(round_fn: RoundFn, fmt, rounding: str, seed: int = 0, n: int = 4096) -> None:
    """Below the smallest normal the results are integer multiples of 2^(emin - m) (subnormals on) or
    0 / 2^emin (off), adjacent outputs of a dense sweep differ by exactly that spacing, and nearest
    rounding matches the model there."""
    f = _float_fmt(fmt)
    s = f.smallest_subnormal
    tiny = 2.0 ** f.emin
    g = _gen(seed + 4)
    x = (torch.rand(n, generator=g, dtype=torch.float64) * tiny * 1.25).float()
    x = x[(x > 0) & torch.isfinite(x)]
    steps_per_tiny = round(tiny / s)  # sweep at s / 4 when that is small enough to enumerate
    sweep = torch.linspace(0, tiny, 4 * min(steps_per_tiny, 1 << 14) + 1, dtype=torch.float64).float()
    x = torch.cat([x, sweep[sweep > 0], -x])
    y = round_fn(x, f.name, rounding, seed).double()
    name = f"subnormal[{f.name}, {rounding}]"
    below = y.abs() < tiny
    k = y.abs() / s
    _fail(name, f"result below the smallest normal is not a multiple of {s:g}", below & (k != torch.round(k)), x, y)
    if rounding == "nearest" and steps_per_tiny <= (1 << 14):
        _fail(name, "nearest rounding below the smallest normal is wrong", ~_same(y, nearest_model(x, f)), x, y,
              nearest_model(x, f))
        out = torch.unique(y[(y >= 0) & (y <= tiny)])
        steps = torch.unique(out[1:] - out[:-1]) if out.numel() > 1 else out
        step = s if f.subnormals else tiny
        if not bool((steps == step).all()):
            raise ConformanceError(f"{name}: spacing of the outputs of a dense sweep is {steps[:4].tolist()}, expected {step:g}")


def check_nearest_matches_torch(round_fn: RoundFn, fmt, seed: int = 0, max_values: Optional[int] = None) -> None:
    """Round-to-nearest equals torch's cast bit for bit for every code of the format, the midpoint to
    the next code and one fp32 ulp on both sides of that midpoint (all rounding boundaries), NaN aside."""
    f = _float_fmt(fmt)
    if f.name not in TORCH_DTYPES:
        raise ValueError(f"torch has no dtype for {f.name}; nearest_matches_torch covers {sorted(TORCH_DTYPES)}")
    dt = TORCH_DTYPES[f.name]
    nbits = torch.finfo(dt).bits
    codes = torch.arange(0, 1 << nbits, dtype=torch.int64)
    signed = codes - ((codes >> (nbits - 1)) << nbits)
    vals = signed.to(torch.int16 if nbits == 16 else torch.int8).view(dt).double()
    vals = _subsample(vals[torch.isfinite(vals)], max_values, seed)
    q = quantum(vals, f)
    mid = vals + torch.sign(vals) * 0.5 * q
    mid = torch.where(vals == 0, torch.full_like(vals, 0.5 * f.smallest_subnormal), mid)
    mid32 = mid.float()
    probes = torch.cat([vals.float(), mid32, torch.nextafter(mid32, torch.zeros(())),
                        torch.nextafter(mid32, torch.full((), math.inf))])
    probes = probes[torch.isfinite(probes)]
    got = round_fn(probes, f.name, "nearest", seed)
    expect = probes.to(dt).float()
    _fail(f"nearest_vs_torch[{f.name}]", f"differs from torch's cast to {dt}", ~_same(got, expect), probes, got, expect)


def check_same_seed(round_fns: dict[str, RoundFn], fmt, seed: int = 1234, n: int = 4099,
                    dtypes=(torch.float32, torch.bfloat16, torch.float16)) -> None:
    """Stochastic rounding with one seed is bit-identical on every round function (backend) and on a
    second call; a different seed gives a different result."""
    f = _float_fmt(fmt)
    names = list(round_fns)
    for dtype in dtypes:
        x = sample_inputs(f, n, seed).to(dtype)
        x = x[torch.isfinite(x)]
        outs = {k: fn(x, f.name, "stochastic", seed) for k, fn in round_fns.items()}
        first = outs[names[0]]
        for k in names:
            again = round_fns[k](x, f.name, "stochastic", seed)
            _fail(f"same_seed[{f.name}, {dtype}]", f"{k}: a second call with the same seed differs", ~_same(again, outs[k]), x, outs[k], again)
            _fail(f"same_seed[{f.name}, {dtype}]", f"{k} differs from {names[0]}", ~_same(outs[k], first), x, outs[k], first)
        other = round_fns[names[0]](x, f.name, "stochastic", seed + 1)
        if dtype == torch.float32 and bool(_same(other, first).all()):
            raise ConformanceError(f"same_seed[{f.name}, {dtype}]: seed {seed + 1} gave the same result as seed {seed}")


# ------------------------------------------------------------------------------------------------ #
# Run everything                                                                                   #
# ------------------------------------------------------------------------------------------------ #
def checks_for(fmt, rounding: str, quick: bool = False) -> list[tuple[str, Callable[[RoundFn], None]]]:
    """(name, check(round_fn)) for one format and rounding mode, default overflow policy.

    ``quick``: for slow backends (the Triton interpreter): 20x fewer draws in the statistical checks
    (still exact z-tests, with less power) and 2048 sampled codes (plus the extremes) instead of all
    65536 in the enumerating checks."""
    f = _float_fmt(fmt)
    k = 20 if quick else 1
    cap = 2048 if quick else None
    out = [("neighbours", lambda fn: check_neighbours(fn, f, rounding, n=4096 // k)),
           ("exact_unchanged", lambda fn: check_exact_unchanged(fn, f, rounding, max_values=cap)),
           ("sign_symmetry", lambda fn: check_sign_symmetry(fn, f, rounding, n=4096 // k)),
           ("nan", lambda fn: check_nan(fn, f, rounding, repeats=256 // k)),
           ("overflow", lambda fn: check_overflow(fn, f, rounding, n=64 // k)),
           ("subnormal_spacing", lambda fn: check_subnormal_spacing(fn, f, rounding, n=4096 // k))]
    if rounding == "stochastic":
        out += [("unbiased", lambda fn: check_unbiased(fn, f, n=20000 // k)),
                ("p_up", lambda fn: check_p_up(fn, f, n=8000 // k)),
                ("variance", lambda fn: check_variance(fn, f, n=20000 // k))]
    if rounding == "nearest" and f.name in TORCH_DTYPES:
        out.append(("nearest_matches_torch", lambda fn: check_nearest_matches_torch(fn, f, max_values=cap)))
    return out


def run(round_fn: RoundFn, formats: Sequence = ("bf16", "fp16", "e4m3", "e5m2"),
        roundings: Sequence[str] = ("nearest", "stochastic"), quick: bool = False) -> list[CheckResult]:
    """Run every check on ``round_fn`` for each format x rounding; returns one result per check."""
    results = []
    for fmt in formats:
        name = _float_fmt(fmt).name
        for rounding in roundings:
            for check, fn in checks_for(fmt, rounding, quick):
                try:
                    fn(round_fn)
                    results.append(CheckResult(check, name, rounding, True))
                except ConformanceError as exc:
                    results.append(CheckResult(check, name, rounding, False, str(exc)))
    return results


def assert_conforms(round_fn: RoundFn, formats: Sequence = ("bf16", "fp16", "e4m3", "e5m2"),
                    roundings: Sequence[str] = ("nearest", "stochastic"), quick: bool = False) -> None:
    """Raise :class:`ConformanceError` listing every failed check."""
    failed = [r for r in run(round_fn, formats, roundings, quick) if not r.passed]
    if failed:
        raise ConformanceError(f"{len(failed)} checks failed:\n" + "\n".join(f"- {r.detail}" for r in failed))


# ------------------------------------------------------------------------------------------------ #
# Known-bad implementations (the kit must catch them)                                              #
# ------------------------------------------------------------------------------------------------ #
def bit_trick_round_to(x, fmt, rounding="nearest", seed=None, **kw):
    """The common shortcut for bf16 stochastic rounding: add 16 random bits to the fp32 pattern and
    truncate. Unbiased for ordinary values, but NaNs with payloads only in the low bits become inf and
    0x7FFFFFFF / 0xFFFFFFFF become -0 / +0. Here so the tests can show the kit catches it."""
    from . import random_bits, round_to

    if get_format(fmt) != FORMATS["bf16"] or rounding != "stochastic":
        return round_to(x, fmt, rounding, seed, **kw)
    xf = x.float().contiguous()
    bits = xf.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    r = random_bits(seed, xf.numel()).view_as(bits) & 0xFFFF
    out = ((bits + r) & 0xFFFF0000) & 0xFFFFFFFF
    out = (out - ((out >> 31) << 32)).to(torch.int32).view(torch.float32)
    return out.to(x.dtype)
