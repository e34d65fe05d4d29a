"""Number formats and rounding, as plain torch code: the meaning of ``bertsilicon.ops.round_to``.

Formats
-------
* floats (:class:`FloatFormat`): ``fp32``, ``bf16``, ``fp16``, ``e4m3`` (fp8 "fn": no inf, one NaN per
  sign), ``e5m2``, and any custom float: :func:`float_format` ``(ebits, mbits, subnormals=True,
  ieee=True)`` or a name ``"e{E}m{M}"`` (``"e3m4"``, ``"e3m4fn"`` for the no-inf layout, suffix
  ``"-nosub"`` for no subnormals), 2 <= E <= 8, 0 <= M <= 23;
* fixed point (:class:`FixedFormat`): :func:`fixed_format` ``(int_bits, frac_bits)`` or ``"q{I}.{F}"``:
  two's complement ``k * 2^-F``, ``-2^(I+F) <= k < 2^(I+F)``, 1 + I + F <= 25 bits (so every value is
  exact in float32); overflow saturates;
* integers with a scale (:class:`IntFormat`): ``int8``, ``int4`` (:func:`int_format` ``(bits)`` for
  others): symmetric codes ``|q| <= 2^(bits-1) - 1``, value ``q * scale``. The scale is given
  (``scale=``) or computed as ``amax / qmax`` per ``granularity``: ``per_tensor``, ``per_channel``
  (dim 0, weights ``[N, K]``), ``per_token`` (last dim, activations) or ``per_group`` (``group_size``
  consecutive elements of the last dim). See :func:`quantize` / :func:`dequantize`.

Rounding (one integer algorithm for every format)
-------------------------------------------------
Rounding is done with exact integer arithmetic on the float32 bit pattern, so every backend can
reproduce it bit for bit:

    x = (-1)^s * sig * 2^(E - 23)               sig < 2^24 (implicit bit included), E the fp32 exponent
    target quantum at x: 2^(max(E, emin) - m)   m mantissa bits, emin the target's smallest normal exponent
    d = 23 - m + max(0, emin - E)               low bits of sig below the target quantum
    q = sig >> d, rem = sig mod 2^d
    nearest-even : q += rem > 2^(d-1) or (rem == 2^(d-1) and q odd)
    stochastic   : q += r < t,  t = rem * 2^(32 - d)  (r = 32 random bits; for d > 32 t = rem >> (d - 32))
    toward zero  : q unchanged
    result = (-1)^s * q * 2^(d + E - 23), then the overflow policy above the largest finite value.

So P(round up) = rem / 2^d exactly whenever d <= 32 (always, for normal results of bf16, fp16 and fp8);
the random bits are the first 32-bit word of Philox4x32-10 keyed on ``seed`` with counter
``(element index, 0, 0, 0)`` — exactly ``tl.randint(seed, index)`` in Triton, so the Triton, C++ and
reference backends agree bit for bit. Stochastic rounding uses ``RANDOM_BITS = 32`` random bits per
element; with d > 32 (deep subnormal targets) the probability is truncated to 32 bits.

Other formats only change the quantum exponent ``qexp`` (``d = qexp - E + 23``; ``d <= 0`` = exact):

    float, subnormals on : qexp = max(E, emin) - m                 (the formula above)
    float, subnormals off: qexp = E - m if |x| >= 2^emin else emin  (0 and 2^emin are neighbours)
    fixed point / integer: qexp = -F (integers: F = 0, applied to x / scale)

Inputs are float32, bfloat16 or float16 (the 16-bit ones are widened exactly to float32 first); the
result has the input's dtype and holds values exactly representable in the target format (when the
input dtype can hold them: rounding a bf16 tensor to fp16 values casts the result back to bf16).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

import torch

_M32 = 0xFFFFFFFF
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
RANDOM_BITS = 32  # random bits per element used by stochastic rounding


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``ebits`` exponent bits, ``mbits`` mantissa bits.

    ``ieee``: the top exponent code is inf/NaN (fp16, bf16, e5m2). When False (e4m3 "fn"), the top
    code holds normal numbers except the all-ones mantissa, which is the only NaN; there is no inf.
    ``subnormals``: False = the format has no subnormal values (0 and ``2^emin`` are neighbours).
    """

    name: str
    ebits: int
    mbits: int
    ieee: bool = True
    subnormals: bool = True

    def __post_init__(self):
        _check_bits("ebits", self.ebits, 2, 8, "(the exponent range must fit float32's)")
        _check_bits("mbits", self.mbits, 0 if self.ieee else 1, 23,
                    "(at most float32's 23; the no-inf layout needs >= 1 for its NaN code)")
        if self.max_finite > 3.4028234663852886e38:
            raise ValueError(f"format {self.name}: ebits={self.ebits} with ieee=False has values beyond float32's range; "
                             "expected ebits <= 7 for the no-inf layout")

    @property
    def bias(self) -> int:
        return (1 << (self.ebits - 1)) - 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return (1 << self.ebits) - 2 - self.bias if self.ieee else (1 << self.ebits) - 1 - self.bias

    @property
    def max_finite(self) -> float:
        top_mantissa = (1 << self.mbits) - 1 if self.ieee else (1 << self.mbits) - 2
        return (1 + top_mantissa / (1 << self.mbits)) * 2.0 ** self.emax

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** self.emin

    @property
    def smallest_subnormal(self) -> float:
        """The smallest positive value (``2^emin`` when the format has no subnormals)."""
        return 2.0 ** (self.emin - self.mbits) if self.subnormals else 2.0 ** self.emin


@dataclass(frozen=True)
class FixedFormat:
    """Two's complement fixed point Q``int_bits``.``frac_bits``: values ``k * 2^-frac_bits`` with
    ``-2^(int_bits + frac_bits) <= k <= 2^(int_bits + frac_bits) - 1`` (one more sign bit). No inf/NaN
    codes: overflow saturates; NaN inputs stay NaN in the emulation."""

    name: str
    int_bits: int
    frac_bits: int

    def __post_init__(self):
        _check_bits("int_bits", self.int_bits, 0, 24, "")
        _check_bits("frac_bits", self.frac_bits, 0, 24, "")
        if not 1 <= self.int_bits + self.frac_bits <= 24:
            raise ValueError(f"fixed format {self.name}: int_bits + frac_bits = {self.int_bits + self.frac_bits}; "
                             "expected 1..24 (1 + 24 bits are exact in float32)")

    @property
    def quantum(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def max_finite(self) -> float:
        return 2.0 ** self.int_bits - self.quantum

    @property
    def min_value(self) -> float:
        return -(2.0 ** self.int_bits)


@dataclass(frozen=True)
class IntFormat:
    """Symmetric signed integers of ``bits`` bits with a scale: codes ``|q| <= 2^(bits-1) - 1``, value
    ``q * scale`` (the most negative code is unused, as in int8 GEMM pipelines)."""

    name: str
    bits: int

    def __post_init__(self):
        _check_bits("bits", self.bits, 2, 16, "")

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


Format = Union[FloatFormat, FixedFormat, IntFormat]


INT8_GRANULARITIES = ("per_tensor", "per_token", "per_channel")  # the int8 op's scale groups (ops.quantize)


def quant_reduce_dims(x: torch.Tensor, granularity: str) -> tuple[int, ...]:
    """Dims the absolute maximum is taken over, per granularity (scales keep those dims as size 1)."""
    if granularity == "per_tensor":
        return tuple(range(x.dim()))
    if granularity == "per_token":  # one scale per row of the last dim (activations)
        return (x.dim() - 1,)
    if granularity == "per_channel":  # one scale per output channel = dim 0 (weights [N, K])
        return tuple(range(1, x.dim()))
    raise ValueError(f"granularity={granularity!r} is unknown; expected one of {INT8_GRANULARITIES}")


def _check_bits(arg: str, value, lo: int, hi: int, why: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{arg}={value} is out of range; expected {lo}..{hi} {why}".rstrip())


def float_format(ebits: int, mbits: int, subnormals: bool = True, ieee: bool = True,
                 name: Optional[str] = None) -> FloatFormat:
    """A custom float (see :class:`FloatFormat`); ``name`` defaults to ``"e{E}m{M}[fn][-nosub]"``."""
    name = name or f"e{ebits}m{mbits}{'' if ieee else 'fn'}{'' if subnormals else '-nosub'}"
    return FloatFormat(name, ebits, mbits, ieee=ieee, subnormals=subnormals)


def fixed_format(int_bits: int, frac_bits: int) -> FixedFormat:
    """Fixed point Q``int_bits``.``frac_bits`` (see :class:`FixedFormat`)."""
    return FixedFormat(f"q{int_bits}.{frac_bits}", int_bits, frac_bits)


def int_format(bits: int) -> IntFormat:
    """Symmetric ``bits``-bit integers with a scale (see :class:`IntFormat`)."""
    return IntFormat(f"int{bits}", bits)


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23),
    "bf16": FloatFormat("bf16", 8, 7),
    "fp16": FloatFormat("fp16", 5, 10),
    "e4m3": FloatFormat("e4m3", 4, 3, ieee=False),
    "e5m2": FloatFormat("e5m2", 5, 2),
}
INT_FORMATS: dict[str, IntFormat] = {"int8": IntFormat("int8", 8), "int4": IntFormat("int4", 4)}
ROUNDINGS = ("nearest", "stochastic", "toward_zero")
OVERFLOWS = ("saturate", "inf")
GRANULARITIES = ("per_tensor", "per_channel", "per_token", "per_group")
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CUSTOM_FLOAT = re.compile(r"^e(\d+)m(\d+)(fn)?(-nosub)?$")
_FIXED = re.compile(r"^q(\d+)\.(\d+)$")


def _torch_e4m3_overflow() -> str:
    """What this torch's own cast to float8_e4m3fn does above 448: recent releases saturate (inf too),
    older ones gave NaN. ``overflow=None`` follows it, so round_to(x, "e4m3") == x.to(float8_e4m3fn)."""
    if not hasattr(torch, "float8_e4m3fn"):
        return "saturate"
    y = torch.tensor([1e6]).to(torch.float8_e4m3fn).float()
    return "saturate" if float(y) == 448.0 else "inf"


DEFAULT_OVERFLOW = {"e4m3": _torch_e4m3_overflow()}  # every other float format: "inf", like torch's cast


def default_overflow(fmt) -> str:
    """The policy ``overflow=None`` means for ``fmt``: torch's cast (``DEFAULT_OVERFLOW``) for the named
    formats, e4m3's for every custom no-inf float, ``"inf"`` for IEEE floats, ``"saturate"`` for fixed
    point and integers."""
    f = get_format(fmt)
    if not isinstance(f, FloatFormat):
        return "saturate"
    return DEFAULT_OVERFLOW.get(f.name, "inf" if f.ieee else DEFAULT_OVERFLOW["e4m3"])


def format_names() -> list[str]:
    """The named formats (custom ones are spelled ``e{E}m{M}[fn][-nosub]`` and ``q{I}.{F}``)."""
    return sorted(FORMATS) + sorted(INT_FORMATS)


def get_format(fmt) -> Format:
    """A format object from a name (``"bf16"``, ``"int8"``, ``"e3m4"``, ``"e4m3fn-nosub"``, ``"q3.4"``) or a
    format object (returned as is). Unknown names and bit counts out of range raise ``ValueError``."""
    if isinstance(fmt, (FloatFormat, FixedFormat, IntFormat)):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a format name or a FloatFormat/FixedFormat/IntFormat, got {type(fmt).__name__}")
    if fmt in FORMATS:
        return FORMATS[fmt]
    if fmt in INT_FORMATS:
        return INT_FORMATS[fmt]
    m = _CUSTOM_FLOAT.match(fmt)
    if m:
        return float_format(int(m[1]), int(m[2]), subnormals=m[4] is None, ieee=m[3] is None, name=fmt)
    m = _FIXED.match(fmt)
    if m:
        return FixedFormat(fmt, int(m[1]), int(m[2]))
    raise ValueError(f"fmt={fmt!r} is unknown; expected one of {format_names()}, a custom float 'e{{E}}m{{M}}' "
                     "(optionally 'fn' and/or '-nosub') or fixed point 'q{I}.{F}'")


# --------------------------------------------------------------------------------------------------
# Philox4x32-10 on int64 tensors holding uint32 values (torch has no full uint32 arithmetic).
# --------------------------------------------------------------------------------------------------
def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * b, without overflowing int64."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo = a * b_lo  # < 2^48
    p_hi = a * b_hi  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi & _M32, lo


def philox4x32(seed: int, counter: torch.Tensor, rounds: int = 10):
    """Philox4x32-``rounds`` of counter ``(counter, 0, 0, 0)`` and key ``(seed lo, seed hi)``.

    ``counter`` is an integer tensor (taken mod 2^32). Returns four int64 tensors of uint32 values;
    the first is what Triton's ``tl.randint(seed, counter)`` returns.
    """
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    c0 = counter.to(torch.int64) & _M32
    zero = torch.zeros_like(c0)
    c1, c2, c3 = zero, zero, zero
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def random_bits(seed: int, numel: int, device="cpu") -> torch.Tensor:
    """The 32 random bits stochastic rounding uses for elements 0..numel-1 (int64 tensor)."""
    return philox4x32(seed, torch.arange(numel, device=device, dtype=torch.int64))[0]


# --------------------------------------------------------------------------------------------------
# Rounding
# --------------------------------------------------------------------------------------------------
def _decompose(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sig, E) of contiguous float32 ``xf`` as int64: ``|x| = sig * 2^(E - 23)``, sig < 2^24
    (fp32 subnormals: E = -126 and no implicit bit)."""
    mag = (xf.view(torch.int32).to(torch.int64) & _M32) & 0x7FFFFFFF
    ex = mag >> 23
    man = mag & 0x7FFFFF
    sig = torch.where(ex > 0, man | (1 << 23), man)
    E = torch.where(ex > 0, ex - 127, torch.full_like(ex, -126))
    return sig, E


def _quantum_exponent(f: Format, sig: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """log2 of the target's spacing at each |x| (see the module docstring)."""
    if isinstance(f, FloatFormat):
        if f.subnormals:
            return E.clamp_min(f.emin) - f.mbits
        normal = (E >= f.emin) & (sig >= (1 << 23))
        return torch.where(normal, E - f.mbits, torch.full_like(E, f.emin))
    frac_bits = f.frac_bits if isinstance(f, FixedFormat) else 0
    return torch.full_like(E, -frac_bits)


def _round_magnitude(xf: torch.Tensor, f: Format, rounding: str, seed: Optional[int]) -> torch.Tensor:
    """|x| rounded onto ``f``'s grid (float64, no overflow handling): the integer algorithm."""
    sig, E = _decompose(xf)
    d = _quantum_exponent(f, sig, E) - E + 23
    d_c = d.clamp(0, 62)  # d <= 0: x is already on the grid (q = sig, rem = 0)
    q = torch.where(d > 62, torch.zeros_like(sig), sig >> d_c)
    rem = sig - (q << d_c)

    if rounding == "nearest":
        half = torch.where(d > 0, 1 << (d_c - 1).clamp_min(0), torch.full_like(d, 1 << 62))
        up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    elif rounding == "stochastic":
        r = random_bits(seed, xf.numel(), xf.device).view_as(xf)
        t = torch.where(d <= 32, rem << (32 - d).clamp(0, 62), rem >> (d - 32).clamp(0, 62))
        up = r < t
    else:
        up = torch.zeros_like(rem, dtype=torch.bool)
    q = q + up.to(torch.int64)
    return torch.ldexp(q.to(torch.float64), (d_c + E - 23).to(torch.float64))


def _check_common(x, rounding, seed, overflow) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INPUT_DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; expected one of {INPUT_DTYPES}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is unknown; expected one of {ROUNDINGS}")
    if rounding == "stochastic" and (seed is None or isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"rounding='stochastic' needs an integer seed, got seed={seed!r}")
    if overflow is not None and overflow not in OVERFLOWS:
        raise ValueError(f"overflow={overflow!r} is unknown; expected one of {OVERFLOWS} or None")


def round_to(x: torch.Tensor, fmt="bf16", rounding: str = "nearest", seed: Optional[int] = None,
             overflow: Optional[str] = None, *, scale: Optional[torch.Tensor] = None,
             granularity: Optional[str] = None, group_size: Optional[int] = None) -> torch.Tensor:
    """Round ``x`` to the values of ``fmt``; returns a tensor of ``x.dtype``.

    ``fmt``: a name or format object (module docstring). ``rounding``: ``"nearest"`` (ties to even),
    ``"stochastic"`` (needs ``seed``; element ``i`` uses Philox bits keyed on ``(seed, i)`` of the
    flattened contiguous tensor) or ``"toward_zero"``.
    ``overflow``: ``None`` behaves like torch's own cast (inf for IEEE formats; for e4m3, which has no
    inf, whatever this torch does: saturate in recent releases, NaN in older ones — see
    ``DEFAULT_OVERFLOW``); ``"saturate"`` clamps to the largest finite value (inf included);
    ``"inf"`` gives inf (NaN for no-inf formats). Fixed point and integers always saturate.
    NaN stays NaN; -0 stays -0.
    Integer formats need ``scale`` (broadcastable to x) or ``granularity`` (``per_tensor |
    per_channel | per_token | per_group`` + ``group_size``): the result is ``q * scale`` (see :func:`quantize`).
    """
    f = get_format(fmt)
    _check_common(x, rounding, seed, overflow)
    if isinstance(f, IntFormat):
        q, s = quantize(x, f, granularity, rounding, seed, scale=scale, group_size=group_size)
        result = dequantize(q, s, group_size if scale is None else None)
        return torch.where(torch.isnan(x), x.float(), result).to(x.dtype)
    if scale is not None or granularity is not None or group_size is not None:
        raise ValueError(f"scale/granularity/group_size apply to integer formats only; fmt={f.name!r} is not one")
    if isinstance(f, FixedFormat) and overflow == "inf":
        raise ValueError(f"overflow='inf': fixed point {f.name} has no inf; it saturates (use overflow=None or 'saturate')")

    xf = x.float().contiguous()
    result = _round_magnitude(xf, f, rounding, seed)
    if isinstance(f, FixedFormat):  # two's complement: the negative side reaches 2^int_bits
        limit = torch.where(xf < 0, torch.full_like(result, -f.min_value), torch.full_like(result, f.max_finite))
        result = torch.where((result > limit) | torch.isinf(xf), limit, result)
    else:
        policy = overflow or default_overflow(f)
        too_big = (result > f.max_finite) | torch.isinf(xf)
        big = f.max_finite if policy == "saturate" else (float("inf") if f.ieee else float("nan"))
        result = torch.where(too_big, torch.full_like(result, big), result)
    result = torch.copysign(result.float(), xf)
    result = torch.where(torch.isnan(xf), xf, result)
    return result.to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Integer formats: scales, quantize, dequantize
# --------------------------------------------------------------------------------------------------
def _group_view(x: torch.Tensor, group_size) -> torch.Tensor:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"granularity='per_group' needs group_size, a positive int; got {group_size!r}")
    if x.dim() < 1 or x.shape[-1] % group_size:
        raise ValueError(f"group_size={group_size} must divide x's last dim ({tuple(x.shape)})")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def compute_scale(x: torch.Tensor, fmt="int8", granularity: str = "per_token",
                  group_size: Optional[int] = None) -> torch.Tensor:
    """``amax / qmax`` over each group of ``x`` (1 where amax == 0), float32.

    Shapes: per_tensor ``[1] * ndim``; per_channel ``[N, 1, ...]`` (dim 0); per_token ``[..., 1]``
    (last dim); per_group ``[..., K / group_size]`` (one per ``group_size`` consecutive elements of the
    last dim; :func:`dequantize` expands it). NaN in a group makes its scale NaN.
    """
    f = get_format(fmt)
    if not isinstance(f, IntFormat):
        raise ValueError(f"compute_scale: fmt={f.name!r} is not an integer format; expected one of {sorted(INT_FORMATS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is unknown; expected one of {GRANULARITIES}")
    xa = x.float()
    if granularity == "per_group":
        amax = _group_view(xa, group_size).abs().amax(dim=-1)
    else:

        amax = xa.abs().amax(dim=quant_reduce_dims(xa, granularity), keepdim=True) if xa.numel() else \
            torch.ones([1] * xa.dim())
    return torch.where(amax == 0, torch.ones_like(amax), amax / f.qmax)


def quantize(x: torch.Tensor, fmt="int8", granularity: Optional[str] = "per_token", rounding: str = "nearest",
             seed: Optional[int] = None, *, scale: Optional[torch.Tensor] = None,
             group_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integer quantization -> ``(q, scale)`` with ``dequantize(q, scale) ~= x``.

    ``q = clamp(round(x / scale), -qmax, qmax)`` where ``x / scale`` is formed in float32 and rounded by
    the module's integer algorithm (so ``"stochastic"`` uses the same Philox stream as the floats, keyed
    on the element index of x). ``q``: int8 for <= 8 bits, else int16. ``scale``: given (broadcastable
    to x) or computed by :func:`compute_scale` for ``granularity``; an integer format with neither is
    a ``ValueError``. Nearest int8 matches :func:`bertsilicon.reference.quantize` bit for bit.
    """
    f = get_format(fmt)
    if not isinstance(f, IntFormat):
        raise ValueError(f"quantize: fmt={f.name!r} is not an integer format; expected one of {sorted(INT_FORMATS)}")
    _check_common(x, rounding, seed, None)
    if scale is None:
        if granularity is None:
            raise ValueError(f"integer format {f.name} needs a scale: pass scale= (a tensor broadcastable to x) or "
                             f"granularity= one of {GRANULARITIES}")
        scale = compute_scale(x, f, granularity, group_size)
        full_scale = _expand_group_scale(scale, group_size) if granularity == "per_group" else scale
    else:
        if not isinstance(scale, torch.Tensor):
            raise TypeError(f"scale must be a torch.Tensor, got {type(scale).__name__}")
        try:
            torch.broadcast_shapes(scale.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"scale has shape {tuple(scale.shape)}; expected a shape broadcastable to x {tuple(x.shape)}") from None
        scale = scale.float()
        full_scale = scale
    y = (x.float() / full_scale).contiguous()
    mag = _round_magnitude(y, f, rounding, seed).clamp_max(f.qmax)
    q = torch.copysign(mag.float(), y)
    q = torch.nan_to_num(q, nan=0.0)
    return q.to(torch.int8 if f.bits <= 8 else torch.int16), scale


def _expand_group_scale(scale: torch.Tensor, group_size: int) -> torch.Tensor:
    return scale.repeat_interleave(group_size, dim=-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, group_size: Optional[int] = None) -> torch.Tensor:
    """``q * scale`` in float32 (``group_size``: the scale is per group of the last dim)."""
    if group_size is not None:
        scale = _expand_group_scale(scale, group_size)
    return q.float() * scale
