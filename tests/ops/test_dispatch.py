"""Backend selection, explicit-backend errors, bad input, and torch.compile through the custom ops."""
import pytest
import torch

from bertsilicon import ops
from bertsilicon.backends import registry


def _ln_args(dtype=torch.float32, n=64):
    return torch.randn(3, n, dtype=dtype), torch.randn(3, n, dtype=dtype), torch.randn(n), torch.randn(n)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend='cuda' is unknown"):
        ops.add_layernorm(*_ln_args(), backend="cuda")


def test_missing_kernel_is_an_error_not_a_fallback(monkeypatch):
    """A backend without a kernel for an op raises when asked for; backend=None falls back to reference."""
    if registry.load("cpu") is not None:
        pytest.skip("C++ extension not built")
    monkeypatch.delitem(registry.REGISTRY, ("linear", "cpu"), raising=False)
    x, w = torch.randn(2, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="backend='cpu'.*no linear kernel"):
        ops.linear(x, w, backend="cpu")
    assert ops.which_backend("linear", x, w, None, None) == "reference"


def test_triton_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ops.add_layernorm(*_ln_args(), backend="triton")


@pytest.mark.parametrize("call, match", [
    (lambda: ops.add_layernorm(torch.randn(3, 8), torch.randn(3, 9), torch.randn(8), torch.randn(8)), "residual has shape"),
    (lambda: ops.add_layernorm(torch.randn(3, 8), torch.randn(3, 8).half(), torch.randn(8), torch.randn(8)), "dtypes differ"),
    (lambda: ops.add_layernorm(torch.randn(3, 8), torch.randn(3, 8), torch.randn(7), torch.randn(8)), "weight has shape"),
    (lambda: ops.add_layernorm(torch.ones(3, 8, dtype=torch.int32), torch.ones(3, 8, dtype=torch.int32), torch.randn(8), torch.randn(8)), "x has dtype"),
    (lambda: ops.add_layernorm([1.0], torch.randn(1), torch.randn(1), torch.randn(1)), "x must be a torch.Tensor"),
    (lambda: ops.attention(torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8)), "v has shape"),
    (lambda: ops.attention(torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.ones(2, 4)), "attention_mask has shape"),
    (lambda: ops.attention(torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)), "q must have 4 dims"),
    (lambda: ops.bias_gelu(torch.randn(3, 8), torch.randn(8), approximate="erf"), "approximate='erf'"),
    (lambda: ops.bias_gelu(torch.randn(3, 8), torch.randn(4)), "bias has shape"),
    (lambda: ops.linear(torch.randn(3, 8), torch.randn(4, 9)), "weight has shape"),
    (lambda: ops.linear(torch.randn(3, 8), torch.randn(4, 8), activation="swish"), "activation='swish'"),
    (lambda: ops.quantize(torch.randn(3, 8), granularity="per_row"), "granularity='per_row'"),
    (lambda: ops.quantize(torch.randn(3, 8), dtype="int4"), "dtype='int4'"),
    (lambda: ops.int8_linear(torch.randn(2, 8), torch.ones(2, 1), torch.ones(3, 8, dtype=torch.int8), torch.ones(3)), "x_q has dtype"),
    (lambda: ops.int8_linear(torch.ones(2, 8, dtype=torch.int8), torch.ones(3, 1), torch.ones(3, 8, dtype=torch.int8), torch.ones(3)), "x_scale has shape"),
    (lambda: ops.int8_linear(torch.ones(2, 8, dtype=torch.int8), torch.ones(2, 1), torch.ones(3, 8, dtype=torch.int8), torch.ones(4)), "w_scale has shape"),
    (lambda: ops.round_to(torch.randn(3), "int3"), "fmt='int3'"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_torch_compile_captures_the_ops():
    def block(x, r, w, b, bias):
        h = ops.bias_gelu(x, bias)
        return ops.add_layernorm(h, r, w, b)

    x, r, w, b = _ln_args(n=96)
    bias = torch.randn(96)
    eager = block(x, r, w, b, bias)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, r, w, b, bias), eager)
    # new shapes still work (dynamic dims go through register_fake)
    x2, r2 = torch.randn(5, 96), torch.randn(5, 96)
    torch.testing.assert_close(compiled(x2, r2, w, b, bias), block(x2, r2, w, b, bias))


def test_backend_status_lists_every_backend():
    status = ops.backend_status()
    assert set(status) == set(ops.BACKENDS) and status["reference"] is None
