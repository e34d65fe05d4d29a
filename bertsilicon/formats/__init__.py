"""Number formats and rounding, as plain torch code: the meaning of ``bertsilicon.ops.round_to``.

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
reference backends agree bit for bit.

Inputs are float32, bfloat16 or float16 (the 16-bit ones are widened exactly to float32 first); the
result has the input's dtype and holds values exactly representable in the target format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    """

    name: str
    ebits: int
    mbits: int
    ieee: bool = True

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
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mbits)


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23),
    "bf16": FloatFormat("bf16", 8, 7),
    "fp16": FloatFormat("fp16", 5, 10),
    "e4m3": FloatFormat("e4m3", 4, 3, ieee=False),
    "e5m2": FloatFormat("e5m2", 5, 2),
}
ROUNDINGS = ("nearest", "stochastic", "toward_zero")
OVERFLOWS = ("saturate", "inf")
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _torch_e4m3_overflow() -> str:
    """What this torch's own cast to float8_e4m3fn does above 448: recent releases saturate (inf too),
    older ones gave NaN. ``overflow=None`` follows it, so round_to(x, "e4m3") == x.to(float8_e4m3fn)."""
    if not hasattr(torch, "float8_e4m3fn"):
        return "saturate"
    y = torch.tensor([1e6]).to(torch.float8_e4m3fn).float()
    return "saturate" if float(y) == 448.0 else "inf"


DEFAULT_OVERFLOW = {"e4m3": _torch_e4m3_overflow()}  # every other format: "inf", like torch's cast


def get_format(fmt) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is unknown; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


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
def round_to(x: torch.Tensor, fmt="bf16", rounding: str = "nearest", seed: Optional[int] = None,
             overflow: Optional[str] = None) -> torch.Tensor:
    """Round ``x`` to the values of ``fmt``; returns a tensor of ``x.dtype``.

    ``rounding``: ``"nearest"`` (ties to even), ``"stochastic"`` (needs ``seed``; element ``i`` uses
    Philox bits keyed on ``(seed, i)`` of the flattened contiguous tensor) or ``"toward_zero"``.
    ``overflow``: ``None`` behaves like torch's own cast (inf for IEEE formats; for e4m3, which has no
    inf, whatever this torch does: saturate in recent releases, NaN in older ones — see
    ``DEFAULT_OVERFLOW``); ``"saturate"`` clamps to the largest finite value (inf included);
    ``"inf"`` gives inf (NaN for e4m3). NaN stays NaN; -0 stays -0.
    """
    f = get_format(fmt)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INPUT_DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; expected one of {INPUT_DTYPES}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is unknown; expected one of {ROUNDINGS}")
    if rounding == "stochastic" and seed is None:
        raise ValueError("rounding='stochastic' needs an integer seed")
    if overflow is not None and overflow not in OVERFLOWS:
        raise ValueError(f"overflow={overflow!r} is unknown; expected one of {OVERFLOWS} or None")
    if f.ebits > 8 or f.mbits > 23:
        raise ValueError(f"format {f.name} is wider than float32; round_to works on float32 values")

    xf = x.float().contiguous()
    bits = xf.view(torch.int32).to(torch.int64) & _M32
    mag = bits & 0x7FFFFFFF
    ex = mag >> 23
    man = mag & 0x7FFFFF
    sig = torch.where(ex > 0, man | (1 << 23), man)
    E = torch.where(ex > 0, ex - 127, torch.full_like(ex, -126))
    d = (23 - f.mbits) + (f.emin - E).clamp_min(0)
    d_c = d.clamp_max(62)
    q = torch.where(d > 62, torch.zeros_like(sig), sig >> d_c)
    rem = sig - (q << d_c)

    if rounding == "nearest":
        half = torch.where(d > 0, 1 << (d_c - 1).clamp_min(0), torch.full_like(d, 1 << 62))
        up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    elif rounding == "stochastic":
        r = random_bits(seed, xf.numel(), xf.device).view_as(xf)
        t = torch.where(d <= 32, rem << (32 - d).clamp_min(0), rem >> (d - 32).clamp(0, 62))
        up = r < t
    else:
        up = torch.zeros_like(rem, dtype=torch.bool)
    q = q + up.to(torch.int64)

    result = torch.ldexp(q.to(torch.float64), (d + E - 23).to(torch.float64))
    finite_max = f.max_finite
    policy = overflow or DEFAULT_OVERFLOW.get(f.name, "inf")
    too_big = result > finite_max
    if policy == "saturate":
        result = torch.where(too_big | torch.isinf(xf), torch.full_like(result, finite_max), result)
    else:
        big = float("inf") if f.ieee else float("nan")
        result = torch.where(too_big | torch.isinf(xf), torch.full_like(result, big), result)
    result = torch.copysign(result.float(), xf)
    result = torch.where(torch.isnan(xf), xf, result)
    return result.to(x.dtype)
