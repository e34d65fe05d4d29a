"""linear (GEMM + fused bias/activation epilogue) vs torch ``F.linear`` (+ the activation), fp32 and bf16.

Shapes: tokens 8 x 128 = 1024, the three GEMM shapes of a BERT-student layer at hidden 384 and 768:
QKV projection (H -> 3H), FFN up (H -> 4H, GELU epilogue), FFN down (4H -> H).

Ops recorded (each against the same ``torch`` peer, measured in the same run):

* ``linear``                 our packed-B micro-kernel on a weight packed once (what the model wrapper runs)
* ``linear (plain op)`` the plain op ``ops.linear(..., backend="cpu")`` on an nn.Linear weight (packed on
  first use, then the cached pack: ``_cpu_gemm.cached_pack``)
* ``linear (torch GEMM + our epilogue)`` the other candidate: torch's GEMM then our in-place epilogue

FLOPs 2 M N K; bytes x (M K) + W (N K) + out (M N) at the dtype's width (+ bias).
Results: ``bench/results/cpu/gemm.{json,md}``.
"""
import pytest
import torch
import torch.nn.functional as F

import harness
from bertsilicon import ops
from bertsilicon import reference as ref
from bertsilicon.backends.cpu import gemm as _cpu_gemm

TARGETS = {"linear/torch": 0.9, "int8_linear/torch_dynamic_int8": 1.0, "int8_gemm/torch_int_mm": 0.7}


NOTES = """
## Reading this table (GEMM family)

- `linear` is our packed-B micro-kernel on a weight packed once (`_cpu_gemm.pack_linear`, what the model
  wrapper runs); `linear (plain op)` is the plain op on an nn.Linear weight (packed on first use and
  cached per weight tensor); `linear (torch GEMM + our epilogue)` is the measured alternative (torch's F.linear, then our
  activation in place). The default (`BERTSILICON_LINEAR_GEMM=own`) is the first.
- `int8_gemm`: exact int32 sums, ours (AVX512-VNNI `vpdpbusd`) vs `torch._int_mm` (oneDNN), weight laid out
  once for both. `int8_linear`: fp32 in, fp32 out, ours = `quant.int8_matmul` as the model runs it (per-token
  quantize fused into the GEMM's operand, per-channel weight, GELU fused; bit-identical to `quantize` +
  `int8_linear`) vs `quantize_dynamic` nn.Linear (per-tensor activations, fbgemm) + `F.gelu`.
- On a machine shared with other jobs the medians swing by 2x or more between runs (on the 2-core dev box,
  shared with six other jobs, they came out in ~8 ms steps of the scheduler, so ratios such as 2.00x / 1.50x
  / 1.00x there are artifacts); the interleaved best-of-N cross-check is in `gemm_bestof.md`
  (`.venv/bin/python bench/kernels/gemm_bestof.py --threads 1 2`; its 1-thread rows are the steadiest).
- Final figures: on a quiet machine run
  `BERTSILICON_BENCH_FINAL=1 .venv/bin/pytest bench/kernels/bench_linear.py bench/kernels/bench_int8.py --benchmark-only -q`
  then `.venv/bin/python bench/kernels/gemm_bestof.py --threads 1 2`.
"""


def target_summary(path) -> str:
    """Per target (op/peer): worst and median speedup over the cases of this file, and whether met."""
    import json
    import statistics

    doc = json.loads(path.read_text())
    lines = ["", "## Targets", "", "| target | cases | worst | median | met on every case |", "|---|---:|---:|---:|---|"]
    for key, target in TARGETS.items():
        op, peer = key.split("/")
        sp = [s["speedup"] for s in doc["speedups"] if s["op"] == op and s["peer"] == peer and s["speedup"]]
        if sp:
            lines.append(f"| {op} vs {peer} >= {target}x | {len(sp)} | {min(sp):.2f}x | {statistics.median(sp):.2f}x "
                         f"| {'yes' if min(sp) >= target else 'no'} |")
    return "\n".join(lines) + "\n"


def write_gemm_results():
    import os

    path = harness.write_results("gemm", targets=TARGETS, preliminary=os.environ.get("BERTSILICON_BENCH_FINAL") != "1")
    if path is not None:
        md = path.with_suffix(".md")
        md.write_text(md.read_text() + target_summary(path) + NOTES)
        print(f"\nresults: {path} and {md}")


@pytest.fixture(scope="module", autouse=True)
def _gemm_results():
    yield
    write_gemm_results()


def layer_shapes():
    """(name, K, N, activation) of the GEMMs of one encoder layer per hidden width."""
    for h in harness.HIDDENS:
        yield f"H{h} qkv", h, 3 * h, None
        yield f"H{h} ffn-up+gelu", h, 4 * h, "gelu"
        yield f"H{h} ffn-down", 4 * h, h, None


SHAPES = list(layer_shapes())
VARIANTS = {"linear": "packed", "linear (plain op)": "op", "linear (torch GEMM + our epilogue)": "torch_gemm"}


@pytest.mark.parametrize("provider", [harness.OURS, "torch"])
@pytest.mark.parametrize("op", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(harness.DTYPES))
@pytest.mark.parametrize("name,K,N,act", SHAPES, ids=[s[0] for s in SHAPES])
def test_linear(benchmark, name, K, N, act, dtype, op, provider):
    dt = harness.DTYPES[dtype]
    M = harness.TOKENS
    g = torch.Generator().manual_seed(K * N)
    x = torch.randn(M, K, generator=g).to(dt)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dt)
    b = (0.1 * torch.randn(N, generator=g)).to(dt)
    if provider == "torch":
        fn = lambda: ref.activate(F.linear(x, w, b), act)  # noqa: E731
    elif VARIANTS[op] == "packed":
        packed = _cpu_gemm.pack_linear(w)
        fn = lambda: _cpu_gemm.linear_packed(x, packed, b, act)  # noqa: E731
    elif VARIANTS[op] == "op":
        fn = lambda: ops.linear(x, w, b, act, backend="cpu")  # noqa: E731
    else:
        fn = lambda: _cpu_gemm.linear_torch_gemm(x, w, b, act)  # noqa: E731
    harness.run(benchmark, fn, op=op, case=f"{M}x{K}->{N} {dtype} {act or 'none'} ({name})", provider=provider,
                flops=harness.gemm_flops(M, N, K), nbytes=(M * K + N * K + M * N + N) * dt.itemsize)
