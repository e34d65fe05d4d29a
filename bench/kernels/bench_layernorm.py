"""add_layernorm (residual add + LayerNorm, fp32 statistics) vs torch eager ``F.layer_norm(x + r)``,
tokens 8 x 128, hidden 384 and 768, fp32 and bf16. Bytes: read x, residual; write out; + weight, bias."""
import pytest
import torch
import torch.nn.functional as F

import harness
from bertsilicon import ops


@pytest.mark.parametrize("provider", [harness.OURS, "torch"])
@pytest.mark.parametrize("dtype", list(harness.DTYPES))
@pytest.mark.parametrize("hidden", harness.HIDDENS)
def test_add_layernorm(benchmark, hidden, dtype, provider):
    dt = harness.DTYPES[dtype]
    g = torch.Generator().manual_seed(hidden)
    x, r = (torch.randn(harness.TOKENS, hidden, generator=g).to(dt) for _ in range(2))
    w, b = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dt), (0.1 * torch.randn(hidden, generator=g)).to(dt)
    if provider == harness.OURS:
        fn = lambda: ops.add_layernorm(x, r, w, b, 1e-12, backend="cpu")  # noqa: E731
    else:
        fn = lambda: F.layer_norm(x + r, (hidden,), w, b, 1e-12)  # noqa: E731
    harness.run(benchmark, fn, op="add_layernorm", case=f"{harness.TOKENS}x{hidden} {dtype}", provider=provider,
                nbytes=harness.elementwise_bytes(x.numel(), dt, reads=2, extra=2 * hidden * dt.itemsize))
