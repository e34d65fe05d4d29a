"""Element-wise and row-wise kernels: bias_gelu, quantize (int8, one scale per row), round_to.

All three are memory bound (a few FLOPs per element), so each reads every input element once and
writes every output element once:

* ``bias_gelu``  out = gelu(x + bias):     bytes = 2 * rows * N * itemsize + N * itemsize; ~20 FLOP/elem.
                 (Its kernel, ``bias_act``, is also the epilogue of ``linear`` on Turing: bias optional, any
                 activation, in place on the cuBLAS product; bertsilicon/kernels/gemm.py.)
* ``quantize``   per row r: scale = amax|x_r| / 127 (1 if amax = 0), q = rne(x / scale) in [-127, 127]:
                 bytes = rows * N * (itemsize + 1) + 4 * rows (the second pass re-reads the row from L1/L2).
* ``round_to``   out = the value of ``fmt`` nearest to x (ties to even) or stochastically rounded with
                 32 Philox bits per element: bytes = 2 * numel * itemsize; ~60 integer ops/elem + Philox
                 (10 rounds of 2 32x32->64 multiplies) when stochastic.

Launchers take already-validated tensors (see :mod:`bertsilicon.ops`).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from bertsilicon import formats as _formats

from ._common import ACT_GELU, ACT_GELU_TANH, activate, cdiv, next_pow2

# ---------------------------------------------------------------------------------------------- #
# bias_gelu                                                                                       #
# ---------------------------------------------------------------------------------------------- #


@triton.jit(do_not_specialize=["rows"])
def _bias_act_kernel(x_ptr, bias_ptr, out_ptr, rows, N, stride_x, ACTIVATION: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr = True):
    """out[r, n] = act(x[r, n] + bias[n]) in fp32 (no bias: act(x)), stored in out's dtype. x ``[rows, N]``,
    row stride given; out contiguous (may be x itself)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = (r < rows) & (n < N)
    y = tl.load(x_ptr + r.to(tl.int64) * stride_x + n, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)
    y = activate(y, ACTIVATION)
    tl.store(out_ptr + r.to(tl.int64) * N + n, y.to(out_ptr.dtype.element_ty), mask=mask)


def bias_act_blocks(N: int) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_N)`` tile of :func:`_bias_act_kernel` for rows of N elements (~4K per program)."""
    BLOCK_N = min(next_pow2(N), 1024)
    return max(1, min(64, 4096 // BLOCK_N)), BLOCK_N


def bias_act(x2: torch.Tensor, bias: Optional[torch.Tensor], activation_code: int, out: torch.Tensor) -> torch.Tensor:
    """Launcher: ``out = act(x2 + bias)``; x2 ``[rows, N]`` with a contiguous last dim, out contiguous
    ``[rows, N]`` (``out`` may be ``x2``: each element is read before it is written, by the same program)."""
    rows, N = x2.shape
    if out.numel():
        BLOCK_R, BLOCK_N = bias_act_blocks(N)
        grid = (cdiv(rows, BLOCK_R), cdiv(N, BLOCK_N))
        _bias_act_kernel[grid](x2, out if bias is None else bias.contiguous(), out, rows, N, x2.stride(0),
                               ACTIVATION=activation_code, BLOCK_R=BLOCK_R, BLOCK_N=BLOCK_N,
                               HAS_BIAS=bias is not None, num_warps=4)
    return out


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """Launcher: gelu(x + bias), x ``[..., N]`` with a contiguous last dim; out contiguous, x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    bias_act(x2, bias, ACT_GELU_TANH if approximate == "tanh" else ACT_GELU, out)
    return out.view(x.shape)


# ---------------------------------------------------------------------------------------------- #
# quantize                                                                                        #
# ---------------------------------------------------------------------------------------------- #
_RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (y + M) - M rounds |y| < 2^22 to the nearest integer, ties to even


@triton.jit(do_not_specialize=["rows"])
def _quantize_rows_kernel(x_ptr, inv_smooth_ptr, q_ptr, scale_ptr, rows, N, stride_x, BLOCK_N: tl.constexpr,
                          SMOOTH: tl.constexpr):
    """One program per row of x ``[rows, N]``: xs = x (``SMOOTH``: x * inv_smooth, one fp32 factor per
    column, SmoothQuant's division by its factors, fused so xs is never written), scale = amax|xs| / 127
    (1 when amax == 0, NaN when the row has NaN), q = round_half_even(xs / scale) clamped to [-127, 127],
    NaN -> 0. The product is one fp32 multiply (as torch's ``x * inv_smooth``) and the divisions are IEEE
    (div_rn), so q and scale are bit-identical to :func:`bertsilicon.reference.quantize` of xs in fp32."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    cols = tl.arange(0, BLOCK_N)
    amax = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        x = tl.load(x_row + n0 + cols, mask=n0 + cols < N, other=0.0).to(tl.float32)
        if SMOOTH:
            x = x * tl.load(inv_smooth_ptr + n0 + cols, mask=n0 + cols < N, other=0.0)
        a = tl.abs(x)
        # NaN sticky per lane, also across blocks of a long row: tl.maximum may drop a NaN on either side
        amax = tl.where((a != a) | (amax != amax), a + amax, tl.maximum(amax, a))
    has_nan = tl.sum((amax != amax).to(tl.int32), axis=0) > 0
    row_amax = tl.max(amax, axis=0)
    row_amax = tl.where(has_nan, float("nan"), row_amax)
    scale = tl.where(row_amax == 0.0, 1.0, tl.math.div_rn(row_amax, 127.0))
    tl.store(scale_ptr + row, scale)
    for n0 in range(0, N, BLOCK_N):
        mask = n0 + cols < N
        x = tl.load(x_row + n0 + cols, mask=mask, other=0.0).to(tl.float32)
        if SMOOTH:
            x = x * tl.load(inv_smooth_ptr + n0 + cols, mask=mask, other=0.0)
        y = tl.math.div_rn(x, tl.zeros_like(x) + scale)
        y = tl.where(y != y, 0.0, y)  # NaN -> 0 before the clamp (min/max may drop NaN either way)
        y = tl.minimum(tl.maximum(y, -127.0), 127.0)
        y = (y + _RNE_MAGIC) - _RNE_MAGIC
        tl.store(q_ptr + row * N + n0 + cols, y.to(tl.int8), mask=mask)


def quantize_block(N: int) -> tuple[int, int]:
    """``(BLOCK_N, num_warps)`` of :func:`_quantize_rows_kernel` for rows of N elements."""
    BLOCK_N = min(next_pow2(max(N, 1)), 4096)
    return BLOCK_N, 4 if BLOCK_N <= 2048 else 8


def quantize_rows(x2: torch.Tensor, inv_smooth: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: int8 quantization with one scale per row of x2 ``[rows, N]`` (last dim contiguous), of
    ``x2 * inv_smooth`` when given (fp32 ``[N]``, contiguous). Returns ``(q [rows, N] int8, scale [rows] float32)``."""
    rows, N = x2.shape
    q = torch.empty((rows, N), dtype=torch.int8, device=x2.device)
    scale = torch.empty((rows,), dtype=torch.float32, device=x2.device)
    if rows:
        BLOCK_N, num_warps = quantize_block(N)
        _quantize_rows_kernel[(rows,)](x2, inv_smooth if inv_smooth is not None else scale, q, scale, rows, N,
                                       x2.stride(0), BLOCK_N=BLOCK_N, SMOOTH=inv_smooth is not None,
                                       num_warps=num_warps)
    return q, scale


def quantize(x: torch.Tensor, granularity: str, inv_smooth: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher for every granularity, each as rows of one kernel: ``per_token`` rows = tokens (last
    dim), ``per_channel`` rows = dim 0 (a weight's output channels), ``per_tensor`` one row (a single
    program: fine for weights and calibration, not for large activations). ``inv_smooth`` (fp32 ``[K]``,
    ``per_token`` only): quantize ``x * inv_smooth`` (SmoothQuant's activation side) in the same pass."""
    if granularity == "per_token":
        q, s = quantize_rows(x.reshape(-1, x.shape[-1]), inv_smooth)
        return q.view(x.shape), s.view(*x.shape[:-1], 1)
    if inv_smooth is not None:
        raise ValueError(f"inv_smooth is for per_token quantization (activations), not {granularity}")
    x = x.contiguous()  # per_channel / per_tensor rows span several dims: flatten them densely
    if granularity == "per_channel":
        q, s = quantize_rows(x.reshape(x.shape[0], -1))
        return q.view(x.shape), s.view(x.shape[0], *([1] * (x.dim() - 1)))
    q, s = quantize_rows(x.reshape(1, -1))
    return q.view(x.shape), s.view(*([1] * x.dim()))


# ---------------------------------------------------------------------------------------------- #
# round_to                                                                                        #
# ---------------------------------------------------------------------------------------------- #


@triton.jit
def _pow2(e):
    """2^e as fp32 for integer e in [-126, 127] (built from its bits: exact, no exp2 rounding)."""
    return ((e + 127).to(tl.int32) << 23).to(tl.float32, bitcast=True)


GRID_FLOAT, GRID_FLOAT_NO_SUBNORMALS, GRID_FIXED = 0, 1, 2


@triton.jit(do_not_specialize=["n", "seed"])
def _round_to_kernel(x_ptr, out_ptr, n, seed, GRID: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
                     FRAC_BITS: tl.constexpr, MAX_FINITE: tl.constexpr, NEG_LIMIT: tl.constexpr,
                     SATURATE: tl.constexpr, HAS_INF: tl.constexpr, STOCHASTIC: tl.constexpr, BF16_BITS: tl.constexpr,
                     BLOCK: tl.constexpr):
    """The integer rounding of :mod:`bertsilicon.formats` (see its docstring), element by element:

        |x| = sig * 2^(E - 23);  d = qexp - E + 23 clamped to [0, 62];  q = sig >> d;  rem = sig mod 2^d
        qexp: float max(E, EMIN) - MBITS | float without subnormals: E - MBITS if normal else EMIN
              | fixed point: -FRAC_BITS
        nearest: q += rem > 2^(d-1) or (rem == 2^(d-1) and q odd)
        stochastic: q += r < rem * 2^(32 - d)   (r = tl.randint(seed, flat index): Philox4x32-10 word 0)
        result = q * 2^(d + E - 23), overflow policy (fixed point: saturate at MAX_FINITE / -NEG_LIMIT),
        sign of x, NaN kept.

    BF16_BITS: x and out are bf16 tensors viewed as int16; widening (bits << 16) and the final
    round-to-nearest-even narrowing are done on the bits, exactly, subnormals included (the triton 3.9
    interpreter's bf16 casts flush subnormals and round ties away from zero; 3.6's flush subnormals too).
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if BF16_BITS:
        bits = (tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int64) & 0xFFFF) << 16
        x = bits.to(tl.int32).to(tl.float32, bitcast=True)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    mag = bits & 0x7FFFFFFF
    ex = mag >> 23
    man = mag & 0x7FFFFF
    sig = tl.where(ex > 0, man | 0x800000, man)
    E = tl.where(ex > 0, ex - 127, -126)
    if GRID == 0:
        qexp = tl.maximum(E, EMIN) - MBITS
    elif GRID == 1:
        qexp = tl.where((E >= EMIN) & (sig >= 0x800000), E - MBITS, EMIN)
    else:
        qexp = tl.zeros_like(E) - FRAC_BITS
    d = qexp - E + 23
    d_c = tl.minimum(tl.maximum(d, 0), 62)
    q = sig >> d_c
    rem = sig - (q << d_c)
    if STOCHASTIC:
        r = tl.randint(seed, offs.to(tl.int32)).to(tl.int64) & 0xFFFFFFFF  # counter = index mod 2^32
        t = tl.where(d <= 32, rem << tl.minimum(tl.maximum(32 - d, 0), 62), rem >> tl.minimum(tl.maximum(d - 32, 0), 62))
        up = r < t
    else:
        half = tl.where(d > 0, tl.full(d.shape, 1, tl.int64) << tl.maximum(d_c - 1, 0), 1 << 62)
        up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    q = q + up.to(tl.int64)

    # value = q * 2^s (s >= -149). Two normal power-of-two factors keep every product exact and normal;
    # results below 2^-125 are written as fp32 bits directly (q << (s + 149)), so a GPU that flushes
    # subnormal products to zero cannot change them.
    s = d_c + E - 23
    qf = q.to(tl.float32)
    big_s = tl.minimum(tl.maximum(s, -126), 127)
    small_s = tl.minimum(tl.maximum(s + 32, -126), 127)
    value = tl.where(s >= -126, qf * _pow2(big_s), (qf * _pow2(small_s)) * 2.3283064365386963e-10)
    tiny_bits = q << tl.minimum(tl.maximum(s + 149, 0), 40)
    tiny = (s < -126) & (tiny_bits < (1 << 24))
    value = tl.where(tiny, tiny_bits.to(tl.int32).to(tl.float32, bitcast=True), value)

    if GRID == 2:  # two's complement fixed point: saturate, the negative side reaching NEG_LIMIT
        limit = tl.where(x < 0, NEG_LIMIT, MAX_FINITE)
        value = tl.where((value > limit) | (tl.abs(x) == float("inf")), limit, value)
    else:
        too_big = (value > MAX_FINITE) | (tl.abs(x) == float("inf"))
        if SATURATE:
            value = tl.where(too_big, MAX_FINITE, value)
        elif HAS_INF:
            value = tl.where(too_big, float("inf"), value)
        else:
            value = tl.where(too_big, float("nan"), value)
    # copysign(value, x): value >= 0 here (or NaN), so OR in x's sign bit.
    out_bits = value.to(tl.int32, bitcast=True) | (bits & 0x80000000).to(tl.int32)
    value = out_bits.to(tl.float32, bitcast=True)
    value = tl.where(x != x, x, value)
    if BF16_BITS:  # fp32 -> bf16 bits, round to nearest even (NaN: its top half, which stays NaN)
        u = value.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        tl.store(out_ptr + offs, tl.where(value != value, u >> 16, rounded).to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


ROUND_TO_BLOCK, ROUND_TO_WARPS = 1024, 4


def round_to_constexprs(f, rounding: str, bf16: bool) -> dict:
    """The constexpr arguments of :func:`_round_to_kernel` for format ``f`` (a float or fixed-point
    format of :mod:`bertsilicon.formats`), ``rounding`` and whether x is bf16 (its bits viewed as int16)."""
    if isinstance(f, _formats.FixedFormat):
        grid_kind, mbits, emin, frac = GRID_FIXED, 0, 0, f.frac_bits
        neg_limit, saturate, has_inf = -f.min_value, True, False
    else:
        grid_kind = GRID_FLOAT if f.subnormals else GRID_FLOAT_NO_SUBNORMALS
        mbits, emin, frac = f.mbits, f.emin, 0
        neg_limit, saturate, has_inf = f.max_finite, _formats.default_overflow(f) == "saturate", f.ieee
    return dict(GRID=grid_kind, MBITS=mbits, EMIN=emin, FRAC_BITS=frac, MAX_FINITE=float(f.max_finite),
                NEG_LIMIT=float(neg_limit), SATURATE=saturate, HAS_INF=has_inf,
                STOCHASTIC=rounding == "stochastic", BF16_BITS=bf16, BLOCK=ROUND_TO_BLOCK)


def round_to(x: torch.Tensor, fmt, rounding: str, seed) -> torch.Tensor:
    """Launcher: bit-identical to :func:`bertsilicon.formats.round_to` (default overflow policy) for
    float formats (with or without subnormals) and fixed point; integer formats (which need a scale) are
    not served here. Element i of the flattened (contiguous) tensor uses Philox counter i, as the
    reference does."""
    f = _formats.get_format(fmt)
    xc = x.contiguous()
    out = torch.empty_like(xc)
    n = xc.numel()
    if n == 0:
        return out.view(x.shape)
    bf16 = x.dtype == torch.bfloat16
    seed64 = int(seed or 0) & 0xFFFFFFFFFFFFFFFF
    if seed64 >= 1 << 63:  # pass as a signed int64 with the same bits (tl.randint splits it into two words)
        seed64 -= 1 << 64
    _round_to_kernel[(cdiv(n, ROUND_TO_BLOCK),)](
        xc.view(torch.int16) if bf16 else xc, out.view(torch.int16) if bf16 else out, n, seed64,
        **round_to_constexprs(f, rounding, bf16), num_warps=ROUND_TO_WARPS)
    return out.view(x.shape)
