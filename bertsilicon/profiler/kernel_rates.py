"""The rates of the kernels an optimized model runs, measured on this CPU's kernel path.

A model returned by ``bertsilicon.optimize`` does not run torch's ops: each encoder layer is one C++ call
(QKV GEMM, padding-free attention, output GEMM, add+LayerNorm, FFN GEMMs with the GELU epilogue,
add+LayerNorm). :func:`measure_kernels` times those kernels through the cpu backend, and the per-call costs
around them, so that ``hardware="local"`` prices an optimized model from what it runs:

* ``gemm:<p>``: FLOP/s of one GEMM against its FLOPs — ``fp32`` / ``bf16``: ``linear_packed`` on packed
  weights (x in the weight's dtype, bias); ``int8``: ``int8_linear_dynamic`` on fp32 x (per-token
  quantization, int8 GEMM, dequant + bias epilogue: what an int8 layer runs per GEMM). Timed round-robin
  over distinct weights (:func:`weight_copies`), as a forward reads each weight once from beyond the caches;
  at batch 1 (``M`` = one sequence) a GEMM on a cache-resident weight runs up to 2x faster than in a model;
* ``attention:<dtype>``: FLOP/s of ``attention_varlen`` (``4 * H * sum n_i^2 * D``: both products; softmax
  included) on ``fp32`` and ``bf16`` q, k, v;
* ``add_layernorm``: FLOP/s of the fused residual add + LayerNorm (``9`` FLOPs per element, as counted);
* ``layer_call_s``: the cost of one fused layer call beyond its kernels, and ``forward_s``: the fixed cost
  of one forward of an optimized model (embeddings dispatch, unpadding, re-padding), both from a tiny
  optimized BERT timed at 1 and 3 layers on 8 tokens (where kernel time is negligible; fastest of 30
  interleaved calls each).

Curves are lists of ``(flops of one call, FLOP/s)`` ascending, interpolated log-linearly and clamped at the
ends (:meth:`~.hardware.Hardware.kernel_rate`).
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Dict, List, Sequence, Tuple

from .counts import FLOPS_PER_ELEMENT

# (M tokens, K, N): GEMMs of the students (MiniLM 384/1536, TinyBERT4 312/1200, DistilBERT 768/3072)
GEMMS_FULL = [(64, 128, 128), (128, 384, 384), (128, 384, 1536), (512, 768, 768), (1024, 384, 1536),
              (1024, 768, 3072)]
GEMMS_QUICK = [(64, 128, 128), (256, 256, 256), (512, 384, 512)]
# (sequences, heads, tokens per sequence, head dim)
ATTENTION_FULL = [(1, 12, 128, 32), (1, 12, 128, 64), (8, 12, 128, 32), (8, 12, 128, 64)]
ATTENTION_QUICK = [(1, 4, 32, 16), (2, 4, 64, 32)]
# (tokens, width)
ADD_LN_FULL = [(128, 384), (1024, 384), (4096, 768)]
ADD_LN_QUICK = [(64, 128), (512, 384)]
TINY_BERT = dict(vocab_size=512, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=64)
TINY_TOKENS = 8
ADD_LAYERNORM_FLOPS = FLOPS_PER_ELEMENT["add"] + FLOPS_PER_ELEMENT["layernorm"]

Timer = Callable[[Callable[[], object]], float]  # seconds per call (median)
COLD_WEIGHT_BYTES = 64 << 20  # the distinct weights a GEMM is timed over: more than a last-level cache
MAX_WEIGHT_COPIES = 256


def weight_copies(weight_bytes: int) -> int:
    """How many distinct weights of ``weight_bytes`` bytes a GEMM is timed over, round-robin: enough to fill
    :data:`COLD_WEIGHT_BYTES` (at least 2, at most :data:`MAX_WEIGHT_COPIES`)."""
    return max(2, min(MAX_WEIGHT_COPIES, -(-COLD_WEIGHT_BYTES // max(int(weight_bytes), 1))))


def round_robin(calls: Sequence[Callable[[], object]]) -> Callable[[], object]:
    """One call of the next function of ``calls`` each time (cycling)."""
    it = itertools.cycle(calls)
    return lambda: next(it)()


def _gemm_calls(M: int, K: int, N: int, gen) -> Dict[str, Callable[[], object]]:
    """One GEMM call per precision, each cycling over :func:`weight_copies` distinct packed weights."""
    import torch

    from ..backends.cpu import gemm

    x = torch.randn(M, K, generator=gen)
    w = torch.randn(N, K, generator=gen) / K ** 0.5
    b = torch.randn(N, generator=gen)
    w_q = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=gen)
    w_scale = torch.rand(N, generator=gen) / 127
    x16, copies = x.bfloat16(), range(weight_copies(w.nbytes))
    packed32 = [gemm.pack_linear(w.clone()) for _ in copies]
    packed16 = [gemm.pack_linear(w.bfloat16()) for _ in copies]
    packed8 = [gemm.pack_int8(w_q.clone()) for _ in copies]
    return {"fp32": round_robin([lambda p=p: gemm.linear_packed(x, p, b) for p in packed32]),
            "bf16": round_robin([lambda p=p: gemm.linear_packed(x16, p, b) for p in packed16]),
            "int8": round_robin([lambda p=p: gemm.int8_linear_dynamic(x, p, w_scale, b) for p in packed8])}


def _attention_call(B: int, H: int, n: int, D: int, dtype, gen) -> Callable[[], object]:
    import torch

    from .. import ops

    q, k, v = (torch.randn(B * n, H, D, generator=gen).to(dtype) for _ in range(3))
    cu = torch.arange(0, (B + 1) * n, n, dtype=torch.int32)
    return lambda: ops.attention_varlen(q, k, v, cu, n, backend="cpu")


def _add_layernorm_call(T: int, W: int, gen) -> Callable[[], object]:
    import torch

    from .. import ops

    x, r = torch.randn(T, W, generator=gen), torch.randn(T, W, generator=gen)
    g, b = torch.ones(W), torch.zeros(W)
    return lambda: ops.add_layernorm(x, r, g, b, backend="cpu")


def _tiny_forward(layers: int) -> Callable[[], object]:
    """One forward of a tiny optimized BERT (``layers`` layers, 8 tokens): call overheads, no real work."""
    import torch

    from ..models.optimize import optimize
    from ..models.students import load_student

    ids = torch.randint(5, TINY_BERT["vocab_size"], (1, TINY_TOKENS), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    model = optimize(load_student("minilm-l6", pretrained=False, num_hidden_layers=layers, **TINY_BERT),
                     "fp32", backend="cpu", calibration={"input_ids": ids, "attention_mask": mask})
    return lambda: model(input_ids=ids, attention_mask=mask)


def fastest_calls(*fns: Callable[[], object], calls: int = 30) -> List[float]:
    """The fastest of ``calls`` interleaved single calls of each function, in seconds: overheads are a floor,
    which other work on a shared machine can only raise (a median of a difference of two noisy times is
    not robust; the floors are)."""
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()
    for _ in range(calls):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def steps(quick: bool) -> int:
    """How many measurements :func:`measure_kernels` makes (for a progress bar)."""
    gemms, attention, add_ln = ((GEMMS_QUICK, ATTENTION_QUICK, ADD_LN_QUICK) if quick
                                else (GEMMS_FULL, ATTENTION_FULL, ADD_LN_FULL))
    return 3 * len(gemms) + 2 * len(attention) + len(add_ln) + 2


def measure_kernels(timer: Timer, quick: bool, gen, tick: Callable[[], object]) -> Dict:
    """The kernel record (module doc) measured with ``timer``; ``tick()`` after each measurement."""
    import torch

    gemms, attention, add_ln = ((GEMMS_QUICK, ATTENTION_QUICK, ADD_LN_QUICK) if quick
                                else (GEMMS_FULL, ATTENTION_FULL, ADD_LN_FULL))
    curves: Dict[str, List[Tuple[float, float]]] = {"gemm:fp32": [], "gemm:bf16": [], "gemm:int8": [],
                                                    "attention:fp32": [], "attention:bf16": [], "add_layernorm": []}
    with torch.no_grad():  # not inference mode: packed weights track their tensors' versions
        for M, K, N in gemms:
            flops = 2.0 * M * K * N
            for precision, call in _gemm_calls(M, K, N, gen).items():
                curves[f"gemm:{precision}"].append((flops, flops / timer(call)))
                tick()
        for B, H, n, D in attention:
            flops = 4.0 * B * H * n * n * D
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                curves[f"attention:{name}"].append((flops, flops / timer(_attention_call(B, H, n, D, dtype, gen))))
                tick()
        for T, W in add_ln:
            flops = float(ADD_LAYERNORM_FLOPS * T * W)
            curves["add_layernorm"].append((flops, flops / timer(_add_layernorm_call(T, W, gen))))
            tick()
        one, three = fastest_calls(_tiny_forward(1), _tiny_forward(3))
        tick()
        tick()
    layer_call = max((three - one) / 2, 0.0)
    return {"curves": {k: sorted(v) for k, v in curves.items()}, "layer_call_s": layer_call,
            "forward_s": max(one - layer_call, 0.0)}
