"""C++ flash attention (padded with a key mask, and varlen) on every ISA path, against float64."""
import pytest
import torch

from bertsilicon import ops, reference
from cpu_isa import cpu_isas, isa, needs_cpu  # noqa: F401  (isa is a fixture)
from numerics import assert_numerics, poison_allocator, ragged_mask

pytestmark = needs_cpu
ISAS = cpu_isas()


def _qkv(B, H, Lq, Lk, D, dtype, seed, strided=True):
    """q [B, H, Lq, D], k/v [B, H, Lk, D]; strided=True gives the model wrapper's views
    ([B, L, H, D].transpose(1, 2): last dim contiguous, heads interleaved)."""
    g = torch.Generator().manual_seed(seed)

    def make(L, scale):
        t = torch.randn(B, L, H, D, generator=g) * scale
        t = t.to(dtype)
        return t.transpose(1, 2) if strided else t.transpose(1, 2).contiguous()

    return make(Lq, 1.5), make(Lk, 1.5), make(Lk, 1.0)


def _check(q, k, v, mask, scale=None, what=""):
    ref64 = reference.attention(q.double(), k.double(), v.double(), mask, scale)
    torch_out = reference.attention(q, k, v, mask, scale)  # plain torch (matmul + softmax) at the same dtype
    poison_allocator(ref64.to(q.dtype))
    out = ops.attention(q, k, v, mask, scale, backend="cpu")
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_numerics(out, ref64, torch_out, what)
    return out


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [26, 32, 64, 128])
@pytest.mark.parametrize("L", [1, 7, 77, 257])
def test_cpu_attention_ragged(isa, dtype, D, L):
    B, H = 4, 2
    q, k, v = _qkv(B, H, L, L, D, dtype, seed=L * 131 + D)
    mask = ragged_mask(B, L, torch.Generator().manual_seed(L + D))
    out = _check(q, k, v, mask, what=f"attention[{isa}, {dtype}] L={L} D={D}")
    assert bool((out[-1] == 0).all()), "a query whose keys are all padding must give zeros"


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_cpu_attention_cross_scale_mask_kinds(isa):
    """Lq != Lk, contiguous inputs, an explicit scale, no mask, and bool / float masks."""
    q, k, v = _qkv(3, 3, 40, 130, 32, torch.float32, seed=5, strided=False)
    _check(q, k, v, None, 0.3, "no mask, scale 0.3")
    mask = ragged_mask(3, 130, torch.Generator().manual_seed(1))
    _check(q, k, v, mask.bool(), None, "bool mask")
    # non-prefix mask: holes in the middle
    holes = (torch.rand(3, 130, generator=torch.Generator().manual_seed(2)) < 0.6).float()
    _check(q, k, v, holes, None, "float mask with holes")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_cpu_attention_nan_propagates(isa):
    q, k, v = _qkv(2, 2, 9, 9, 32, torch.float32, seed=3)
    q, v = q.clone(), v.clone()
    q[0, 1, 4, 7] = float("nan")  # one query row of one head
    v[1, 0, 2, 5] = float("nan")  # a real key of sequence 1: column 5 of every query of that head
    mask = torch.ones(2, 9, dtype=torch.int64)
    _check(q, k, v, mask, what="NaN")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_cpu_attention_threads_do_not_change_results(isa):
    q, k, v = _qkv(2, 4, 100, 100, 64, torch.float32, seed=9)
    mask = ragged_mask(2, 100, torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.attention(q, k, v, mask, backend="cpu")
        torch.set_num_threads(2)
        two = ops.attention(q, k, v, mask, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_cpu_attention_empty():
    q, k, v = _qkv(2, 2, 0, 5, 32, torch.float32, seed=1)
    assert ops.attention(q, k, v, torch.ones(2, 5), backend="cpu").shape == (2, 2, 0, 32)
    q, k, v = _qkv(2, 2, 3, 0, 32, torch.float32, seed=1)
    out = ops.attention(q, k, v, torch.ones(2, 0), backend="cpu")
    assert out.shape == (2, 2, 3, 32) and bool((out == 0).all())


def _packed(lengths, H, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = [(torch.randn(T, H, D, generator=g) * s).to(dtype) for s in (1.5, 1.5, 1.0)]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [26, 64])
def test_cpu_attention_varlen(isa, dtype, D):
    lengths = [77, 0, 1, 130, 7]
    q, k, v, cu = _packed(lengths, 3, D, dtype, seed=D)
    ref64 = reference.attention_varlen(q.double(), k.double(), v.double(), cu, max(lengths))
    torch_out = reference.attention_varlen(q, k, v, cu, max(lengths))
    out = ops.attention_varlen(q, k, v, cu, max(lengths), backend="cpu")
    assert out.dtype == dtype
    assert_numerics(out, ref64, torch_out, f"attention_varlen[{isa}, {dtype}] D={D}")


def test_cpu_attention_varlen_strided_heads():
    """q/k/v as slices of one packed qkv projection [T, 3, H, D] (strided heads, contiguous last dim)."""
    g = torch.Generator().manual_seed(4)
    lengths = [5, 33, 12]
    qkv = torch.randn(sum(lengths), 3, 4, 32, generator=g)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    cu = torch.tensor([0, 5, 38, 50], dtype=torch.int32)
    ref64 = reference.attention_varlen(q.double(), k.double(), v.double(), cu, 33)
    out = ops.attention_varlen(q, k, v, cu, 33, backend="cpu")
    assert_numerics(out, ref64, reference.attention_varlen(q, k, v, cu, 33), "varlen strided")


def test_cpu_attention_refuses_what_it_cannot_do():
    q, k, v = _qkv(2, 2, 8, 8, 32, torch.float32, seed=1)
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float16"):
        ops.attention(q.half(), k.half(), v.half(), backend="cpu")
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float64"):
        ops.attention(q.double(), k.double(), v.double(), backend="cpu")
    bad = q.transpose(2, 3).contiguous().transpose(2, 3)  # last dim strided
    with pytest.raises(ValueError, match="contiguous last dim"):
        ops.attention(bad, k, v, backend="cpu")
    with pytest.raises(ValueError, match="attention_mask"):
        ops.attention(q, k, v, torch.ones(2, 9), backend="cpu")
    assert ops.which_backend("attention", q.half(), k.half(), v.half(), None, None) == "reference"
    assert ops.which_backend("attention", q, k, v, None, None) == "cpu"
