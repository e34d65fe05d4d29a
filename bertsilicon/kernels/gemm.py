"""linear and int8_linear: one tiled GEMM kernel with a fused epilogue, selected by constexpr flags.

    float : out[m, n] = act( sum_k x[m, k] w[n, k]                      + bias[n] )   acc fp32
    int8  : out[m, n] = act( (sum_k xq[m, k] wq[n, k]) * xs[m] * ws[n]  + bias[n] )   acc int32

Shapes: x ``[M, K]`` (any strides), w ``[N, K]`` (nn.Linear layout, any strides), bias ``[N]``,
xs ``[M]`` or one value, ws ``[N]`` or one value; out ``[M, N]`` contiguous in x's dtype (float) or
``out_dtype`` (int8). Operands fp32 / bf16 / fp16 (fp32 uses ``input_precision`` from
:func:`bertsilicon.kernels._common.fp32_dot_precision`) or int8 (int32 accumulation: exact while
127 * 127 * K < 2^31; the int32 -> fp32 conversion of the sum rounds once when |sum| > 2^24).

Cost: FLOPs = 2 M N K; fewest bytes = (M K + N K) * itemsize + M N * out itemsize (+ N bias, M + N
scales). At BERT shapes (M = tokens in the thousands, K, N in 384..3072) the arithmetic intensity is
in the hundreds of FLOP/byte, so the kernel is matrix-unit bound; the epilogue is free (it runs on the
accumulator in registers instead of a second pass over M N elements).

Tiling: each program owns a BLOCK_M x BLOCK_N tile of out and walks K in BLOCK_K steps; programs are
ordered in groups of GROUP_M tile rows so neighbouring programs share w tiles in L2. Autotuned on
(M bucket, N, K); M is not specialised, so a new token count neither re-tunes nor recompiles.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (ACTIVATION_CODE, activate, autotune_configs, cdiv, fma_dots, fp32_dot_precision, hardware_class,
                      matrix_unit_dots, mma, token_bucket, upcast_bf16_dots)
from .elementwise import bias_act


def _configs(int8: bool, kind: Optional[str] = None, fma: bool = False) -> list[triton.Config]:
    """Autotuning configs per hardware class (``BLOCK_M, BLOCK_N, BLOCK_K, warps, stages``); ``fma``:
    dots on the FMA units (:func:`bertsilicon.kernels._common.fma_dots`: fp32 with ieee dots on any GPU
    class; every dot on Turing, where :func:`linear` runs the product on cuBLAS instead and int8 is refused,
    so the Turing list is only what an explicit launch would compile)."""
    kind = kind or hardware_class()
    bk = 128 if int8 else 64
    if kind == "interpreter":
        table = [(32, 32, 32, 4, 1)]
    elif fma or not matrix_unit_dots(kind):  # BLOCK_K <= 32: no LDL/STL in sm_90 / sm_75 SASS with triton 3.6
        # or 3.9 (BLOCK_K 64 spills up to ~5000)
        table = [(128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3), (64, 64, 16, 4, 4)]
    elif kind == "hopper":  # 228 KB shared memory: deep pipelines, wide N tiles for wgmma. Not listed:
        # 128x128 with 4 warps (its 128x128 fp32 accumulator spills: ~250 LDL/STL in sm_90 SASS, triton 3.9)
        table = [(128, 256, bk, 8, 3), (128, 128, bk, 8, 4), (64, 128, bk, 4, 4), (128, 64, bk, 4, 4),
                 (64, 64, bk, 4, 4)]
    else:  # Ampere (A100: 164 KB shared memory, mma.sync). Not listed: 128x256 with 8 warps and 128x128 with 4
        # (their accumulators spill 60-2000 LDL/STL in sm_80 SASS with triton 3.6 and 3.9; sass_sm80.md)
        table = [(128, 128, bk // 2, 8, 4), (128, 128, bk, 8, 3), (64, 128, bk // 2, 4, 4),
                 (128, 64, bk // 2, 4, 4), (64, 64, bk // 2, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in table]


@triton.jit(do_not_specialize=["M"])
def _gemm_kernel(x_ptr, w_ptr, out_ptr, bias_ptr, xs_ptr, ws_ptr, M, N, K,
                 stride_xm, stride_xk, stride_wn, stride_wk, stride_om,
                 M_BUCKET: tl.constexpr, INT8: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                 X_SCALE_PER_ROW: tl.constexpr, W_SCALE_PER_COL: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped program order: GROUP_M tile rows share each w column tile while it is in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + ks[None, :] * stride_xk     # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wn + ks[:, None] * stride_wk     # [BLOCK_K, BLOCK_N] = w^T tile
    if INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_left = K - k0
        a = tl.load(x_ptrs, mask=(rows[:, None] < M) & (ks[None, :] < k_left), other=0)
        b = tl.load(w_ptrs, mask=(ks[:, None] < k_left) & (cols[None, :] < N), other=0)
        if INT8:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = mma(a, b, acc, DOT_PRECISION, UPCAST)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue on the accumulator: dequant, bias, activation, cast — one write of the output.
    y = acc.to(tl.float32)
    if INT8:
        if X_SCALE_PER_ROW:
            xs = tl.load(xs_ptr + rows, mask=rows < M, other=0.0)
        else:
            xs = tl.load(xs_ptr + tl.zeros_like(rows))
        if W_SCALE_PER_COL:
            ws = tl.load(ws_ptr + cols, mask=cols < N, other=0.0)
        else:
            ws = tl.load(ws_ptr + tl.zeros_like(cols))
        # y (xs ws), not (y xs) ws: acc * x_scale can overflow where the result does not (activations near
        # fp32's largest value, weight scales < 1); a zero sum keeps (0 xs) ws, as xs ws alone may overflow
        # (inf * 0 = NaN; the reference gives 0, NaN only for a NaN / inf scale). As the C++ epilogue.
        y = tl.where(y == 0, y * xs[:, None] * ws[None, :], y * (xs[:, None] * ws[None, :]))
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    y = activate(y, ACTIVATION)
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


_KEY = ["M_BUCKET", "N", "K", "INT8", "HAS_BIAS", "ACTIVATION"]
_gemm_float = triton.autotune(configs=autotune_configs(_configs(int8=False)), key=_KEY)(_gemm_kernel)
_gemm_fma = triton.autotune(configs=autotune_configs(_configs(int8=False, fma=True)), key=_KEY)(_gemm_kernel)
_gemm_int8 = triton.autotune(configs=autotune_configs(_configs(int8=True)), key=_KEY)(_gemm_kernel)


def _launch(x2, w, out, bias, xs, ws, activation, int8: bool):
    M, K = x2.shape
    N = w.shape[0]
    precision = "ieee" if int8 else (fp32_dot_precision() if x2.dtype == torch.float32 else "tf32")
    kernel = _gemm_int8 if int8 else (_gemm_fma if fma_dots(x2.dtype, precision) else _gemm_float)
    dummy = out  # never read when its flag is off
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    kernel[grid](x2, w, out, bias if bias is not None else dummy, xs if xs is not None else dummy,
                 ws if ws is not None else dummy, M, N, K,
                 x2.stride(0), x2.stride(1), w.stride(0), w.stride(1), out.stride(0),
                 M_BUCKET=token_bucket(M), INT8=int8, HAS_BIAS=bias is not None,
                 ACTIVATION=ACTIVATION_CODE[activation],
                 X_SCALE_PER_ROW=xs is not None and xs.numel() > 1,
                 W_SCALE_PER_COL=ws is not None and ws.numel() > 1,
                 UPCAST=upcast_bf16_dots(x2.dtype), DOT_PRECISION=precision)
    return out


def _product_on_cublas(x2, w, out, bias, activation) -> None:
    """A GPU class whose triton dots miss the matrix units (:func:`matrix_unit_dots`: Turing, where they compile
    to FFMA): the product ``x2 @ w^T`` by cuBLAS on the tensor cores (``torch.mm`` in x's dtype: fp32
    accumulation, rounded once to x's dtype; fp32 follows torch's TF32 flag, as the kernel's fp32 dots do), then
    bias + activation in one in-place pass of the element-wise kernel. One rounding more than the fused kernel
    (the product before the bias): what torch's own ``F.linear`` + ``gelu`` in fp16 does. Bytes: + 2 M N itemsize."""
    torch.mm(x2, w.t(), out=out)
    if bias is not None or activation is not None:
        bias_act(out, bias, ACTIVATION_CODE[activation], out)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str]) -> torch.Tensor:
    """Launcher: ``activation(x @ weight^T + bias)``, x ``[..., K]``, weight ``[N, K]``; out contiguous, x's dtype."""
    K = x.shape[-1]
    N = weight.shape[0]
    x2 = x.reshape(-1, K)
    out = torch.empty((x2.shape[0], N), dtype=x.dtype, device=x.device)
    if out.numel():
        bias = None if bias is None else bias.contiguous()
        if matrix_unit_dots():
            _launch(x2, weight, out, bias, None, None, activation, int8=False)
        else:
            _product_on_cublas(x2, weight, out, bias, activation)
    return out.view(*x.shape[:-1], N)


def int8_linear(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor], activation: Optional[str], out_dtype: torch.dtype) -> torch.Tensor:
    """Launcher: ``activation((x_q @ w_q^T) * x_scale * w_scale + bias)`` in ``out_dtype``; int32 accumulation."""
    K = x_q.shape[-1]
    N = w_q.shape[0]
    x2 = x_q.reshape(-1, K)
    out = torch.empty((x2.shape[0], N), dtype=out_dtype, device=x_q.device)
    if out.numel():
        xs = x_scale.reshape(-1).to(torch.float32).contiguous()
        ws = w_scale.reshape(-1).to(torch.float32).contiguous()
        _launch(x2, w_q, out, None if bias is None else bias.contiguous(), xs, ws, activation, int8=True)
    return out.view(*x_q.shape[:-1], N)
