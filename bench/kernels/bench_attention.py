"""attention with a ragged key-padding mask (B 8, H 12, L 128, D 32, the MiniLM-L6 shape; and D 64,
BERT-base's) vs torch SDPA on CPU given the equivalent boolean mask [B, 1, 1, L]; fp32 and bf16.

Inputs are the model wrapper's views ([B, L, H, D].transpose(1, 2)) for both providers. Lengths are
random in [1, L] with the first sequence full (no fully padded sequence: SDPA returns NaN there).
FLOPs: 4 B H L^2 D on the padded length for both (ours skips padded keys; SDPA does not)."""
import pytest
import torch
import torch.nn.functional as F

import harness
from bertsilicon import ops

B, H, L = 8, 12, 128


def _inputs(D, dt, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, D, generator=g).to(dt).transpose(1, 2) for _ in range(3))
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    mask = (torch.arange(L)[None, :] < lengths[:, None]).to(torch.int64)
    return q, k, v, mask, lengths


@pytest.mark.parametrize("provider", [harness.OURS, "torch_sdpa"])
@pytest.mark.parametrize("dtype", list(harness.DTYPES))
@pytest.mark.parametrize("D", [32, 64])
def test_attention_ragged(benchmark, D, dtype, provider):
    dt = harness.DTYPES[dtype]
    q, k, v, mask, lengths = _inputs(D, dt)
    if provider == harness.OURS:
        fn = lambda: ops.attention(q, k, v, mask, backend="cpu")  # noqa: E731
    else:
        keep = mask.bool()[:, None, None, :]
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # noqa: E731
    real = int(lengths.sum())
    harness.run(benchmark, fn, op="attention", case=f"B{B} H{H} L{L} D{D} {dtype} ragged ({real}/{B * L} real keys)",
                provider=provider, flops=harness.attention_flops(B, H, L, L, D),
                nbytes=harness.attention_bytes(B, H, L, L, D, dt))
