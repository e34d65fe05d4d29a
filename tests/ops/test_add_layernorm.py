"""add_layernorm on every backend (C++ on every ISA path, Triton under the interpreter) against float64."""
import pytest
import torch

from bertsilicon import ops
from bertsilicon.backends import registry
from numerics import assert_numerics, poison_allocator

from cpu_isa import cpu_isas, isa  # noqa: F401  (isa is a fixture)

HIDDEN = [128, 312, 384, 512, 768, 77, 1]


def _inputs(rows, n, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, n, generator=g) * 2 + 0.5).to(dtype)
    r = torch.randn(rows, n, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(n, generator=g)).to(dtype)
    b = (0.1 * torch.randn(n, generator=g)).to(dtype)
    return [t.to(device) for t in (x, r, w, b)]


def _check(backend, rows, n, dtype, seed, device="cpu"):
    x, r, w, b = _inputs(rows, n, dtype, seed, device)
    ref64 = torch.nn.functional.layer_norm(x.double() + r.double(), (n,), w.double(), b.double(), 1e-12)
    torch_out = torch.nn.functional.layer_norm(x + r, (n,), w, b, 1e-12)
    poison_allocator(x)
    out = ops.add_layernorm(x, r, w, b, 1e-12, backend=backend)
    assert out.dtype == dtype and out.device == x.device
    assert_numerics(out.cpu(), ref64.cpu(), torch_out.cpu(), f"add_layernorm[{backend}] rows={rows} n={n}")


@pytest.mark.parametrize("isa", cpu_isas(), indirect=True)
@pytest.mark.parametrize("n", HIDDEN)
@pytest.mark.parametrize("rows", [1, 7, 1024])
def test_cpu_add_layernorm(isa, rows, n):
    _check("cpu", rows, n, torch.float32, seed=rows * 31 + n)


@pytest.mark.parametrize("isa", cpu_isas(), indirect=True)
@pytest.mark.parametrize("n", [384, 768, 77, 16, 1])
@pytest.mark.parametrize("rows", [3, 130])
def test_cpu_add_layernorm_bf16(isa, rows, n):
    _check("cpu", rows, n, torch.bfloat16, seed=rows * 7 + n)


@pytest.mark.parametrize("isa", cpu_isas(), indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_add_layernorm_nan_row(isa, dtype):
    x, r, w, b = _inputs(6, 384, dtype, 1)
    x[2, 100] = float("nan")
    x[4, 7] = float("inf")
    out = ops.add_layernorm(x, r, w, b, backend="cpu")
    assert bool(torch.isnan(out[[2, 4]]).all())
    assert bool(torch.isfinite(out[[0, 1, 3, 5]]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,n", [(7, 384), (3, 77), (16, 312), (1, 768)])
def test_triton_add_layernorm(triton_device, dtype, rows, n):
    _check("triton", rows, n, dtype, seed=rows + n, device=triton_device)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [384, 768, 312])
def test_triton_add_layernorm_full_shapes(dtype, n):
    _check("triton", 8 * 128, n, dtype, seed=n, device="cuda")


def test_triton_add_layernorm_strided_rows(triton_device):
    x, r, w, b = _inputs(10, 64, torch.float32, 3, triton_device)
    xs = x[::2]  # row stride 128, last dim contiguous
    out = ops.add_layernorm(xs, r[::2], w, b, backend="triton")
    ref = ops.add_layernorm(xs.double(), r[::2].double(), w.double(), b.double(), backend="reference")
    assert_numerics(out.cpu(), ref.cpu(), torch.nn.functional.layer_norm(xs + r[::2], (64,), w, b, 1e-12).cpu())


def test_cpu_refuses_what_it_cannot_do():
    if registry.load("cpu") is not None:
        pytest.skip("C++ extension not built")
    x, r, w, b = _inputs(4, 64, torch.float64, 0)
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float64"):
        ops.add_layernorm(x, r, w, b, backend="cpu")
    with pytest.raises(ValueError, match="backend='cpu'.*dtype torch.float16"):
        ops.add_layernorm(x.half(), r.half(), w, b, backend="cpu")
    x32, r32, w32, b32 = _inputs(4, 64, torch.float32, 0)
    with pytest.raises(ValueError, match="not contiguous"):
        ops.add_layernorm(x32.t().contiguous().t(), r32, w32, b32, backend="cpu")
    # backend=None on the same input silently uses the reference (no backend was asked for)
    assert ops.which_backend("add_layernorm", x, r, w, b, 1e-12) == "reference"
    assert ops.which_backend("add_layernorm", x32, r32, w32, b32, 1e-12) == "cpu"
