"""round_to (nearest-even and stochastic) on 1M fp32 values vs the reference (bertsilicon.formats, plain
torch integer code; the same bits) and, for nearest bf16/fp16, torch's own cast ``x.to(dtype).float()``.
Bytes: read and write 4 bytes per element."""
import pytest
import torch

import harness
from bertsilicon import formats, ops

N = 1 << 20
CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("provider", [harness.OURS, "reference", "torch_cast"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3"])
def test_round_to(benchmark, fmt, rounding, provider):
    if provider == "torch_cast" and (rounding != "nearest" or fmt not in CASTS):
        pytest.skip("torch's cast is round-to-nearest to bf16/fp16 only")
    x = torch.randn(N, generator=torch.Generator().manual_seed(0)) * 10
    seed = 1234 if rounding == "stochastic" else None
    if provider == harness.OURS:
        fn = lambda: ops.round_to(x, fmt, rounding, seed, backend="cpu")  # noqa: E731
    elif provider == "reference":
        fn = lambda: formats.round_to(x, fmt, rounding, seed)  # noqa: E731
    else:
        fn = lambda: x.to(CASTS[fmt]).float()  # noqa: E731
    harness.run(benchmark, fn, op="round_to", case=f"{N} fp32 -> {fmt} {rounding}", provider=provider,
                nbytes=harness.elementwise_bytes(N, torch.float32, reads=1),
                rounds=5 if provider == "reference" else None)  # the reference takes seconds per call
