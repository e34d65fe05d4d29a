"""The numerics rule every kernel test uses (docs/architecture.md, "Numerics"):

    max|kernel - ref64|  <=  2 * max|torch_same_dtype - ref64|  +  floor

ref64 is the op computed in float64 from the same (already rounded) inputs; torch_same_dtype is the
plain-torch version of the op run in the kernel's dtype; floor is one unit in the last place of the
kernel's dtype at the reference's largest magnitude. NaN must appear exactly where the reference has NaN.
"""
from __future__ import annotations

import torch

ULP = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float64: 2.0 ** -52}


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    d = (out.double() - ref.double()).abs()
    both_nan = torch.isnan(out.double()) & torch.isnan(ref.double())
    return float(torch.where(both_nan, torch.zeros_like(d), d).max())


def assert_numerics(out: torch.Tensor, ref64: torch.Tensor, torch_out: torch.Tensor, what: str = "") -> None:
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    nan_out, nan_ref = torch.isnan(out.double()), torch.isnan(ref64)
    assert torch.equal(nan_out, nan_ref), (
        f"{what}: NaN pattern differs ({int(nan_out.sum())} NaN in output, {int(nan_ref.sum())} in reference)"
        " — unwritten or wrongly masked elements?")
    if out.numel() == 0:
        return
    scale = float(torch.nan_to_num(ref64.abs(), nan=0.0, posinf=0.0).max())
    floor = ULP[out.dtype] * max(scale, 1.0)
    err = max_err(out, ref64)
    torch_err = max_err(torch_out, ref64)
    assert err <= 2 * torch_err + floor, (
        f"{what}: max error {err:.3e} > 2 x torch's {torch_err:.3e} + floor {floor:.1e} (dtype {out.dtype})")


def poison_allocator(like: torch.Tensor, copies: int = 4) -> None:
    """Fill and free a few NaN buffers the size of the output, so a kernel that leaves elements
    unwritten returns NaN garbage there (the caching allocator on CUDA, malloc reuse on CPU)."""
    if like.is_floating_point():
        bufs = [torch.full_like(like, float("nan")) for _ in range(copies)]
        del bufs


def ragged_mask(batch: int, length: int, generator: torch.Generator, fully_padded_row: bool = True) -> torch.Tensor:
    """[batch, length] int mask: 1 = real token. Row 0 is full; with ``fully_padded_row`` the last row is
    all padding; the rest have random lengths in [1, length]."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    if fully_padded_row and batch > 1:
        lengths[-1] = 0
    return (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
