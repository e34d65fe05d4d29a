"""Which of bertsilicon's kernels each encoder layer of an optimized model runs, and their compute time.

``bertsilicon.optimize`` decides per layer and per GEMM (``model.bertsilicon_report``: an int8 layer may keep
a sensitive GEMM in bf16 or fp32) and per layer the attention dtype (int8 layers attend on bf16 q, k, v where
the CPU has AVX512_BF16). :func:`plan_of` reads those decisions from the model; :func:`kernel_time` prices one
counted op of a fused layer at the measured rate of the kernel that runs it (:mod:`.kernel_rates`):

    GEMM           t = 2 M K N / R_gemm:<its precision>(2 M K N)
    attention      t = 4 H sum n_i^2 D / R_attention:<layer's dtype>(same)   (softmax and P V included)
    add+LayerNorm  t = 9 T W / R_add_layernorm(same)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from .counts import ATTENTION, GEMM, Op
from .hardware import Hardware

# counted op name -> the GEMM's name in the optimize report
GEMM_NAMES = {"qkv": "qkv", "output projection": "o", "ffn up": "up", "ffn down": "down"}


@dataclass
class KernelPlan:
    """Per fused layer (``"layer <i>"``): each GEMM's precision and the attention dtype (``fp32``/``bf16``)."""
    precision: str                                            # the model's, for a GEMM the report does not name
    gemms: Dict[str, Dict[str, str]] = field(default_factory=dict)
    attention: Dict[str, str] = field(default_factory=dict)

    def fused(self, layer: str) -> bool:
        return layer in self.gemms


def plan_of(model) -> Optional[KernelPlan]:
    """The kernel plan of an optimized CPU model; None for a plain model or one with no fused layer."""
    import torch

    report = getattr(model, "bertsilicon_report", None)
    if report is None or not hasattr(report, "layers") or not hasattr(model, "modules"):
        return None
    fused_reports = [r for r in report.layers if getattr(r, "status", "") == "fused"]
    modules = [m for m in model.modules() if hasattr(m, "gemm_precision") and hasattr(m, "attention_dtype")]
    if not fused_reports or len(modules) != len(fused_reports):
        return None
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    plan = KernelPlan(precision=report.precision)
    for rep, module in zip(fused_reports, modules):
        layer = f"layer {rep.index}"
        plan.gemms[layer] = {g: ("fp32" if p == "fp16" else p) for g, p in rep.gemms.items()}
        plan.attention[layer] = names.get(module.attention_dtype(torch.device("cpu")), "fp32")
    return plan


def kernel_time(o: Op, hw: Hardware, plan: KernelPlan) -> Optional[float]:
    """Compute seconds of ``o`` (an op of a fused layer) on the measured kernels; None if no measured
    kernel runs it (element-wise work inside a GEMM epilogue, a GEMM of another family)."""
    if o.kind == GEMM:
        gemm = GEMM_NAMES.get(o.op)
        if gemm is None:
            return None
        precision = plan.gemms[o.layer].get(gemm, plan.precision)
        per_kernel = o.matmul_flops / max(o.gemm_kernels, 1)
        rate = hw.kernel_rate(f"gemm:{precision}", per_kernel)
        return None if rate is None else o.matmul_flops / rate
    if o.group == "attention":
        if o.kind != ATTENTION or o.op != "attention scores":
            return 0.0  # softmax and P V: inside the one attention kernel priced on the scores row
        both = 2 * o.matmul_flops
        rate = hw.kernel_rate(f"attention:{plan.attention[o.layer]}", both)
        return None if rate is None else both / rate
    if o.op.startswith("add+layernorm") and o.kernels:
        rate = hw.kernel_rate("add_layernorm", o.other_flops)
        return None if rate is None else o.other_flops / rate
    return None
