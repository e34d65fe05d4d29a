"""bias_gelu (bias add + GELU, erf and tanh forms) vs torch eager ``F.gelu(x + b)``, tokens 8 x 128,
hidden 384 and 768 (the FFN input of a 384/768-wide student has 4x that width: 1536 and 3072 are
included too), fp32 and bf16. Bytes: read x, write out (+ the bias)."""
import pytest
import torch
import torch.nn.functional as F

import harness
from bertsilicon import ops


@pytest.mark.parametrize("provider", [harness.OURS, "torch"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", list(harness.DTYPES))
@pytest.mark.parametrize("hidden", harness.HIDDENS + (1536,))
def test_bias_gelu(benchmark, hidden, dtype, approximate, provider):
    dt = harness.DTYPES[dtype]
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(harness.TOKENS, hidden, generator=g).to(dt)
    b = (0.1 * torch.randn(hidden, generator=g)).to(dt)
    if provider == harness.OURS:
        fn = lambda: ops.bias_gelu(x, b, approximate, backend="cpu")  # noqa: E731
    else:
        fn = lambda: F.gelu(x + b, approximate=approximate)  # noqa: E731
    form = "erf" if approximate == "none" else "tanh"
    harness.run(benchmark, fn, op="bias_gelu", case=f"{harness.TOKENS}x{hidden} {dtype} {form}", provider=provider,
                nbytes=harness.elementwise_bytes(x.numel(), dt, reads=1, extra=hidden * dt.itemsize))
