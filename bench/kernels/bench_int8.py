"""int8: quantize, the bare int8 GEMM and int8_linear with its fused dequant + bias + GELU epilogue.

* ``int8_gemm``: exact int32 ``x_q @ w_q^T`` (weight packed once) vs ``torch._int_mm`` (oneDNN), both
  int32 out, at M 1024 and the layer shapes (the headline shape: M 1024, K 384, N 1536). GOP/s = 2 M N K.
* ``int8_linear``: fp32 x in, fp32 out: ours as the model wrapper runs it, ``quant.int8_matmul`` (per-token
  quantize fused into the GEMM's operand, per-channel weight packed once, GELU epilogue; bit-identical
  to ``quantize`` + ``int8_linear``) vs torch's dynamic int8 ``nn.Linear``
  (``torch.ao.quantization.quantize_dynamic``: per-tensor dynamic activation quantization, fbgemm)
  followed by ``F.gelu``. Both include quantizing the activations.
* ``quantize``: per-token int8 of a [1024, H] fp32 activation vs the same formula in torch eager.
Results: ``bench/results/cpu/gemm.{json,md}`` (merged with bench_linear.py's rows).
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import harness
from bertsilicon import ops, quant
from bertsilicon import reference as ref
from bertsilicon.backends.cpu import gemm as _cpu_gemm
from bench_linear import SHAPES, write_gemm_results


@pytest.fixture(scope="module", autouse=True)
def _gemm_results():
    yield
    write_gemm_results()


def _int8_pair(M, K, N, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    return x, w


@pytest.mark.parametrize("provider", [harness.OURS, "torch_int_mm"])
@pytest.mark.parametrize("name,K,N,act", SHAPES, ids=[s[0] for s in SHAPES])
def test_int8_gemm(benchmark, name, K, N, act, provider):
    M = harness.TOKENS
    x, w = _int8_pair(M, K, N, K + N)
    if provider == harness.OURS:
        packed = _cpu_gemm.pack_int8(w)
        fn = lambda: _cpu_gemm.int8_matmul(x, packed)  # noqa: E731
    else:
        w_t = w.t().contiguous()  # _int_mm takes [K, N]; laid out once, like our packing
        fn = lambda: torch._int_mm(x, w_t)  # noqa: E731
    harness.run(benchmark, fn, op="int8_gemm", case=f"{M}x{K}->{N} int8->int32 ({name})", provider=provider,
                flops=harness.gemm_flops(M, N, K), nbytes=M * K + N * K + 4 * M * N)


def _dynamic_int8_linear(w, b):
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize("provider", [harness.OURS, "torch_dynamic_int8"])
@pytest.mark.parametrize("name,K,N,act", SHAPES, ids=[s[0] for s in SHAPES])
def test_int8_linear(benchmark, name, K, N, act, provider):
    M = harness.TOKENS
    g = torch.Generator().manual_seed(K * N + 1)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) * K ** -0.5
    b = 0.1 * torch.randn(N, generator=g)
    act = "gelu"  # the comparison the target is stated for: int8 Linear followed by GELU, on every shape
    if provider == harness.OURS:
        w_q, w_s = quant.quantize_weight(w, backend="cpu")
        fn = lambda: quant.int8_matmul(x, w_q, w_s, b, act, backend="cpu")  # noqa: E731
    else:
        qlin = _dynamic_int8_linear(w, b)
        fn = lambda: F.gelu(qlin(x))  # noqa: E731
    harness.run(benchmark, fn, op="int8_linear", case=f"{M}x{K}->{N} fp32 in/out, gelu ({name})", provider=provider,
                flops=harness.gemm_flops(M, N, K), nbytes=4 * M * K + N * K + 4 * M * N + 4 * N)


@pytest.mark.parametrize("provider", [harness.OURS, "torch"])
@pytest.mark.parametrize("hidden", harness.HIDDENS)
def test_quantize(benchmark, hidden, provider):
    x = torch.randn(harness.TOKENS, hidden, generator=torch.Generator().manual_seed(hidden))
    if provider == harness.OURS:
        fn = lambda: ops.quantize(x, "int8", "per_token", backend="cpu")  # noqa: E731
    else:
        fn = lambda: ref.quantize(x, "int8", "per_token")  # noqa: E731
    harness.run(benchmark, fn, op="quantize", case=f"{harness.TOKENS}x{hidden} fp32 per_token", provider=provider,
                nbytes=x.numel() * 5 + harness.TOKENS * 4)
