"""The GEMM driver's cache blocking (csrc/gemm.cpp, ``Blocking``) at its edges, on every path: row groups,
panel groups and k-blocks that end ragged, the panel group shrunk to spread few rows over the threads, the
copied A block (AVX2), at 1 and 2 threads. fp32 / bf16 by the numerics rule (float64 reference, error at most
2x plain torch's + floor); the int8 kinds' sums exactly (int64 reference), 7-bit and 8-bit weights.

Shapes (AVX2 blocking: 72-row groups, up to 8 panels of 16 columns, 256-step k-blocks; AVX-512: 96 rows,
1 panel of 64, 64 steps): M 150 = 72 + 72 + 6 (and 6 + 5 + 4 rows in the tiles' tails), N 300 = 18 panels
+ 12 columns (AVX2 panel groups 7 + 7 + 5 at 2 threads, 8 + 8 + 3 at 1), K 600 = 256 + 256 + 88 (and
9 x 64 + 24); M 5 x N 40: one tile for 2 threads; K 257: one step past a k-block.
"""
import pytest
import torch

from bertsilicon import ops
from bertsilicon import reference as ref
from numerics import assert_numerics, poison_allocator
from cpu_isa import cpu_isas, isa  # noqa: F401  (isa is a fixture)

pytestmark = pytest.mark.skipif(not cpu_isas(), reason="C++ extension not built")

ISAS = [p for p in cpu_isas() if p != "scalar"]  # the scalar path has no blocking
SHAPES = [(150, 600, 300), (5, 257, 40), (73, 1537, 129)]


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_blocking_edges(isa, threads, dtype, M, K, N):
    g = torch.Generator().manual_seed(M * K + N + threads)
    x = (torch.randn(M, K, generator=g) + 0.1).to(dtype)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
    b = (torch.randn(N, generator=g) * 0.5).to(dtype)
    ref64 = ref.linear(x.double(), w.double(), b.double(), "gelu")
    poison_allocator(ref64.to(dtype))
    out = ops.linear(x, w, b, "gelu", backend="cpu")
    assert out.dtype == dtype
    assert_numerics(out, ref64, ref.activate(torch.nn.functional.linear(x, w, b), "gelu"),
                    f"linear[{isa}, {threads} threads] {dtype} M={M} K={K} N={N}")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("weight_max", [63, 127])  # AVX2: the u8 x s7 kernel, then the int16-pair kernel
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_blocking_edges_exact(isa, threads, weight_max, M, K, N):
    from bertsilicon.backends.cpu import gemm as cpu_gemm

    g = torch.Generator().manual_seed(M + K * N + weight_max + threads)
    x = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-weight_max, weight_max + 1, (N, K), generator=g, dtype=torch.int8)
    x[0], w[0] = 127, weight_max  # the largest sums next to random ones
    assert torch.equal(cpu_gemm.int8_matmul(x, w).long(), x.long() @ w.long().t())
