"""Triton attention (padded with a key-padding mask, and packed/varlen) against the float64 reference.

Interpreter shapes are small (B <= 3, H 2, L <= 77); the ``gpu`` tests repeat them at BERT-student shapes.
"""
import pytest
import torch

from bertsilicon import ops
from bertsilicon import reference as R
from numerics import assert_numerics, poison_allocator, ragged_mask

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def torch_attention(q, k, v, mask, scale=None):
    """Plain torch at the inputs' dtype (the tolerance peer): every intermediate rounded to that dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is None:
        return torch.matmul(torch.softmax(s, dim=-1), v)
    keep = mask.bool()[:, None, None, :]
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    p = torch.where(keep.any(-1, keepdim=True), p, torch.zeros((), dtype=p.dtype, device=p.device))
    return torch.matmul(p, v)


def _qkv_views(B, L, H, D, dtype, g, device):
    """q, k, v as the model wrapper passes them: [B, L, H, D] projections viewed as [B, H, L, D]."""
    qkv = (torch.randn(B, L, 3, H, D, generator=g) * 1.5).to(dtype).to(device)
    return [qkv[:, :, i].transpose(1, 2) for i in range(3)]


def _check_padded(B, H, L, D, dtype, device, seed, masked=True, scale=None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = _qkv_views(B, L, H, D, dtype, g, device)
    mask = ragged_mask(B, L, g).to(device) if masked else None
    ref64 = R.attention(q.double(), k.double(), v.double(), mask, scale)
    peer = torch_attention(q, k, v, mask, scale)
    poison_allocator(ref64.to(dtype))
    out = ops.attention(q, k, v, mask, scale, backend="triton")
    assert out.dtype == dtype and out.shape == (B, H, L, D)
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), f"attention B{B} H{H} L{L} D{D} {dtype}")
    if masked:
        assert bool((out[-1] == 0).all()), "the fully padded batch row must give zeros"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,D", [(77, 26), (7, 32), (40, 64)])
def test_attention_padded(triton_device, dtype, L, D):
    _check_padded(3, 2, L, D, dtype, triton_device, seed=L * D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_no_mask_custom_scale_and_head_dim_128(triton_device, dtype):
    _check_padded(1, 2, 33, 128, dtype, triton_device, seed=5, masked=False, scale=0.3)


def test_attention_bool_mask_and_cross_lengths(triton_device):
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 2, 5, 32, generator=g).to(triton_device)
    k, v = (torch.randn(2, 2, 50, 32, generator=g).to(triton_device) for _ in range(2))
    mask = ragged_mask(2, 50, g, fully_padded_row=False).bool().to(triton_device)
    out = ops.attention(q, k, v, mask, backend="triton")
    assert_numerics(out.cpu(), R.attention(q.double(), k.double(), v.double(), mask).cpu(),
                    torch_attention(q, k, v, mask).cpu(), "attention bool mask, Lq 5, Lk 50")


def test_attention_mask_with_holes(triton_device):
    """Not a prefix: random holes, a row with only its first key real, a row with only its last key
    real and a fully padded row (the kernel trims trailing padding and masks the holes)."""
    g = torch.Generator().manual_seed(12)
    B, H, L, D = 4, 2, 45, 26
    q, k, v = _qkv_views(B, L, H, D, torch.float16, g, triton_device)
    mask = (torch.rand(B, L, generator=g) < 0.6).to(torch.int32)
    mask[1] = 0
    mask[1, 0] = 1
    mask[2] = 0
    mask[2, -1] = 1
    mask[3] = 0
    mask = mask.to(triton_device)
    out = ops.attention(q, k, v, mask, backend="triton")
    assert_numerics(out.cpu(), R.attention(q.double(), k.double(), v.double(), mask).cpu(),
                    torch_attention(q, k, v, mask).cpu(), "attention, mask with holes")


def test_attention_nan_in_q_stays_in_its_row(triton_device):
    g = torch.Generator().manual_seed(3)
    q, k, v = _qkv_views(2, 9, 2, 26, torch.float32, g, triton_device)
    q = q.clone()
    q[0, 1, 4, 7] = float("nan")
    out = ops.attention(q, k, v, torch.ones(2, 9, dtype=torch.int64, device=triton_device), backend="triton")
    nan_rows = torch.isnan(out).any(-1)
    assert bool(torch.isnan(out[0, 1, 4]).all()) and int(nan_rows.sum()) == 1


def _packed(lengths, H, D, dtype, g, device):
    T = sum(lengths)
    qkv = (torch.randn(T, 3, H, D, generator=g) * 1.5).to(dtype).to(device)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return qkv[:, 0], qkv[:, 1], qkv[:, 2], cu  # strided [T, H, D] views of a fused QKV projection


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [26, 64])
def test_attention_varlen(triton_device, dtype, D):
    g = torch.Generator().manual_seed(D)
    lengths = [77, 0, 5, 1, 40]
    q, k, v, cu = _packed(lengths, 2, D, dtype, g, triton_device)
    ref64 = R.attention_varlen(q.double(), k.double(), v.double(), cu, max(lengths))
    peer = torch.cat([torch_attention(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)), None)[0].transpose(0, 1)
                      for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()) if e > s])
    out = ops.attention_varlen(q, k, v, cu, max(lengths), backend="triton")
    assert out.shape == q.shape and out.dtype == dtype
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), f"attention_varlen D{D} {dtype}")


def test_attention_varlen_equals_padded_attention(triton_device):
    """The packed path and the masked path compute the same thing for the real tokens."""
    g = torch.Generator().manual_seed(21)
    B, L, H, D = 3, 19, 2, 32
    q, k, v = _qkv_views(B, L, H, D, torch.float32, g, triton_device)
    mask = ragged_mask(B, L, g, fully_padded_row=False).to(triton_device)
    padded = ops.attention(q, k, v, mask, backend="triton").transpose(1, 2)  # [B, L, H, D]
    keep = mask.bool()
    packed = [t.transpose(1, 2)[keep] for t in (q, k, v)]                      # [T, H, D]
    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32)
    out = ops.attention_varlen(*packed, cu, L, backend="triton")
    torch.testing.assert_close(out, padded[keep], rtol=1e-6, atol=1e-6)


def test_attention_empty_and_refusals(triton_device):
    q = torch.randn(0, 2, 8, 32, device=triton_device)
    assert ops.attention(q, q, q, backend="triton").shape == (0, 2, 8, 32)
    big = torch.randn(1, 1, 4, 160, device=triton_device)
    with pytest.raises(ValueError, match="head dim 160"):
        ops.attention(big, big, big, backend="triton")
    d64 = torch.randn(1, 1, 4, 32, dtype=torch.float64, device=triton_device)
    with pytest.raises(ValueError, match="float64"):
        ops.attention(d64, d64, d64, backend="triton")
    strided = torch.randn(1, 1, 32, 4, device=triton_device).transpose(-1, -2)
    with pytest.raises(ValueError, match="contiguous last dim"):
        ops.attention(strided, strided, strided, backend="triton")


# ---------------------------------------------------------------------------------------------- #
# full shapes on a GPU                                                                            #
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,D,H", [(128, 64, 12), (512, 64, 12), (257, 32, 12), (128, 26, 12), (128, 128, 8)])
def test_attention_padded_full_shapes(dtype, L, D, H):
    _check_padded(8, H, L, D, dtype, "cuda", seed=L + D)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_varlen_full_shapes(dtype):
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, 513, (16,), generator=g).tolist() + [0, 512]
    q, k, v, cu = _packed(lengths, 12, 64, dtype, g, "cuda")
    ref64 = R.attention_varlen(q.double(), k.double(), v.double(), cu, max(lengths))
    peer = torch.cat([torch_attention(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)), None)[0].transpose(0, 1)
                      for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()) if e > s])
    out = ops.attention_varlen(q, k, v, cu, max(lengths), backend="triton")
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), f"attention_varlen full {dtype}")
