"""The reference backend against independent float64 formulas, and at low precision against the rule.

Tolerances of the float64 comparisons: 1e-12 (1e-10 for add_layernorm, whose rsqrt of a variance near eps
amplifies rounding) is ~1e4 float64 ulp of summation-order difference between two exact formulas, while a
wrong scale, mask, bias or activation moves values by >= 1e-3: each can only pass a correct reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from bertsilicon import ops, reference as R
from numerics import assert_numerics, ragged_mask

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("B,H,L,D", [(3, 2, 77, 26), (2, 12, 7, 32), (2, 2, 1, 64), (1, 1, 257, 64)])
def test_attention_matches_explicit_formula(B, H, L, D):
    g = _gen(B * 1000 + L)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3))
    mask = ragged_mask(B, L, g)
    out = ops.attention(q, k, v, mask, backend="reference")
    for b in range(B):
        real = mask[b].bool()
        for h in range(H):
            if not real.any():
                expect = torch.zeros(L, D, dtype=torch.float64)
            else:
                s = q[b, h] @ k[b, h, real].T / math.sqrt(D)
                expect = torch.softmax(s, -1) @ v[b, h, real]
            # float64 against float64: tolerance argued in the module docstring
            torch.testing.assert_close(out[b, h], expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_low_precision_rule(dtype):
    g = _gen(7)
    B, H, L, D = 2, 4, 77, 26
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype) for _ in range(3))
    mask = ragged_mask(B, L, g, fully_padded_row=False)
    ref64 = R.attention(q.double(), k.double(), v.double(), mask)
    add = torch.zeros(B, 1, 1, L, dtype=dtype).masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
    assert_numerics(ops.attention(q, k, v, mask, backend="reference"), ref64, torch_out, f"attention {dtype}")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("n", [384, 1200, 77])
def test_bias_gelu_formula(approximate, n):
    g = _gen(n)
    x = torch.randn(5, n, generator=g, dtype=torch.float64) * 3
    b = torch.randn(n, generator=g, dtype=torch.float64)
    h = x + b
    if approximate == "none":
        expect = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    else:
        expect = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    # float64 against float64: tolerance argued in the module docstring
    torch.testing.assert_close(ops.bias_gelu(x, b, approximate, backend="reference"), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [128, 312, 384, 768, 77])
def test_add_layernorm_formula(n):
    g = _gen(n)
    x, r = torch.randn(2, 9, n, generator=g, dtype=torch.float64), torch.randn(2, 9, n, generator=g, dtype=torch.float64)
    w, b = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    h = x + r
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    expect = (h - mu) / torch.sqrt(var + 1e-12) * w + b
    # float64 against float64: tolerance argued in the module docstring
    torch.testing.assert_close(ops.add_layernorm(x, r, w, b, backend="reference"), expect, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh", "relu"])
def test_linear_formula(activation):
    g = _gen(3)
    x = torch.randn(3, 7, 26, generator=g, dtype=torch.float64)
    w = torch.randn(33, 26, generator=g, dtype=torch.float64)
    b = torch.randn(33, generator=g, dtype=torch.float64)
    y = torch.einsum("btk,nk->btn", x, w) + b
    expect = {None: y, "gelu": F.gelu(y), "gelu_tanh": F.gelu(y, approximate="tanh"), "relu": y.clamp_min(0)}[activation]
    # float64 against float64: tolerance argued in the module docstring
    torch.testing.assert_close(ops.linear(x, w, b, activation, backend="reference"), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_token", "per_channel"])
def test_quantize_properties(granularity):
    g = _gen(11)
    x = torch.randn(6, 5, 77, generator=g) * torch.rand(6, 5, 1, generator=g) * 4
    q, s = ops.quantize(x, granularity=granularity, backend="reference")
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert int(q.abs().max()) <= 127
    err = (q.double() * s.double() - x.double()).abs()
    assert bool((err <= s.double() / 2 * (1 + 1e-6)).all()), "error above half a quantization step"
    # the largest magnitude of each group maps to +-127
    dims = R.quant_reduce_dims(x, granularity)
    assert bool((q.abs().amax(dim=dims) == 127).all())
    expected_shape = {"per_tensor": (1, 1, 1), "per_token": (6, 5, 1), "per_channel": (6, 1, 1)}[granularity]
    assert tuple(s.shape) == expected_shape


def test_quantize_zero_group_and_nan():
    x = torch.randn(3, 16)
    x[1] = 0
    x[2, 3] = float("nan")
    q, s = ops.quantize(x, backend="reference")
    assert float(s[1]) == 1.0 and bool((q[1] == 0).all())
    assert bool(torch.isnan(s[2])) and bool((q[2] == 0).all())


def test_int8_linear_exact_integer_product():
    g = _gen(5)
    xq = torch.randint(-127, 128, (2, 9, 384), generator=g, dtype=torch.int8)
    wq = torch.randint(-127, 128, (50, 384), generator=g, dtype=torch.int8)
    xs, ws = torch.rand(2, 9, 1, generator=g) + 0.1, torch.rand(50, generator=g) + 0.1
    b = torch.randn(50, generator=g)
    acc = (xq.to(torch.int64) @ wq.to(torch.int64).T).double()
    expect = F.gelu(acc * xs.double() * ws.double() + b.double()).float()
    out = ops.int8_linear(xq, xs, wq, ws, b, "gelu", backend="reference")
    # out is the exact float64 result rounded once to fp32 (<= 0.5 ulp = 6e-8 relative): 1e-6 is 16 ulp,
    # while a wrong scale, bias or activation moves values by >= 1e-2
    torch.testing.assert_close(out, expect, rtol=1e-6, atol=1e-6)


def test_empty_tensors():
    x = torch.randn(0, 384)
    w, b = torch.randn(384), torch.randn(384)
    assert ops.add_layernorm(x, x, w, b).shape == (0, 384)
    assert ops.bias_gelu(x, b).shape == (0, 384)
    assert ops.linear(x, torch.randn(5, 384)).shape == (0, 5)
    q, s = ops.quantize(x)
    assert q.shape == (0, 384)


def test_nan_propagates():
    x = torch.randn(4, 64)
    x[1, 5] = float("nan")
    w, b = torch.randn(64), torch.randn(64)
    y = ops.add_layernorm(x, torch.randn(4, 64), w, b, backend="reference")
    assert bool(torch.isnan(y[1]).all()) and not bool(torch.isnan(y[[0, 2, 3]]).any())
    z = ops.bias_gelu(x, b, backend="reference")
    assert bool(torch.isnan(z[1, 5])) and int(torch.isnan(z).sum()) == 1


def test_attention_varlen_equals_padded_attention_at_real_positions():
    g = _gen(21)
    lengths = [77, 1, 0, 30]
    H, D = 3, 26
    L = max(lengths)
    B = len(lengths)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    padded = ops.attention(q, k, v, mask, backend="reference")
    pack = lambda t: torch.cat([t[b, :, :n].transpose(0, 1) for b, n in enumerate(lengths)])  # noqa: E731
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    out = ops.attention_varlen(pack(q), pack(k), pack(v), cu, L, backend="reference")
    # float64 against float64: tolerance argued in the module docstring
    torch.testing.assert_close(out, pack(padded), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        ops.attention_varlen(pack(q), pack(k), pack(v), cu + 1, L)
    with pytest.raises(ValueError, match="max_seqlen"):
        ops.attention_varlen(pack(q), pack(k), pack(v), cu, 10)
