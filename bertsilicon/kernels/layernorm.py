"""add_layernorm: ``out = LayerNorm(x + residual) * weight + bias`` over the last dim, fp32 statistics.

Shapes: x, residual ``[rows, N]`` (row stride given, last dim contiguous); weight, bias ``[N]``;
out ``[rows, N]`` contiguous, x's dtype (fp32, bf16 or fp16). One program normalises ``ROWS`` rows held
whole in registers (``BLOCK_N = next_pow2(N)``), so each element is read once and written once:
bytes = rows * N * (2 reads + 1 write) * itemsize + 2 N * 4; FLOPs ~ 8 per element — memory bound.

    h = x + r;  mean = sum(h) / N;  var = sum((h - mean)^2) / N;  out = (h - mean) * rsqrt(var + eps) * w + b

NaN or inf in a row makes the whole output row NaN (as torch).
"""
import torch
import triton
import triton.language as tl

from ._common import cdiv, next_pow2


@triton.jit(do_not_specialize=["rows"])  # a new token count never recompiles
def _add_layernorm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, out_ptr, rows, N, stride_x, stride_r, stride_out,
                          eps, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    row = pid * ROWS + tl.arange(0, ROWS)[:, None]          # [ROWS, 1]
    col = tl.arange(0, BLOCK_N)[None, :]                     # [1, BLOCK_N]
    mask = (row < rows) & (col < N)
    x = tl.load(x_ptr + row * stride_x + col, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * stride_r + col, mask=mask, other=0.0).to(tl.float32)
    h = x + r
    mean = tl.sum(h, axis=1) / N
    c = tl.where(mask, h - mean[:, None], 0.0)
    var = tl.sum(c * c, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + col, mask=col < N, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + col, mask=col < N, other=0.0).to(tl.float32)
    y = c * rstd[:, None] * w + b
    tl.store(out_ptr + row * stride_out + col, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch_config(N: int) -> tuple[int, int, int]:
    """``(ROWS, BLOCK_N, num_warps)`` for rows of N elements: the whole row in registers
    (``BLOCK_N = next_pow2(N)``) and, for short rows, several rows per program so each program moves
    >= ~4K elements."""
    BLOCK_N = next_pow2(N)
    return max(1, min(16, 4096 // BLOCK_N)), BLOCK_N, 4 if BLOCK_N <= 1024 else 8


def add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """Launcher. x, residual ``[..., N]`` with a contiguous last dim; returns a new contiguous tensor."""
    N = x.shape[-1]
    x2 = x.reshape(-1, N)
    r2 = residual.reshape(-1, N)
    out = torch.empty_like(x2, memory_format=torch.contiguous_format)
    rows = x2.shape[0]
    if rows == 0 or N == 0:
        return out.view(x.shape)
    ROWS, BLOCK_N, num_warps = launch_config(N)
    grid = (cdiv(rows, ROWS),)
    _add_layernorm_kernel[grid](x2, r2, weight, bias, out, rows, N, x2.stride(0), r2.stride(0),
                                out.stride(0), eps, ROWS=ROWS, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return out.view(x.shape)
