"""Price an op list at a precision on a device: bytes, roofline latency and energy per op.

For each op (counts in :mod:`.counts`):

    bytes     = weights x b_w + (biases, norms, gathered table rows, activations) x b_f
                (+ GEMM inputs x 1 byte at int8)
    t_compute = matmul FLOPs / R_gemm(precision, GEMM size) + element-wise FLOPs / R_vector(op, size)
    t_memory  = bytes / bandwidth
    latency   = max(t_compute, t_memory) + kernels x launch overhead
    energy    = MACs x E_mac + element-wise FLOPs x E_flop + bytes x E_dram + P_static x latency

``b_w`` / ``b_f``: bytes per weight / float element — fp32 4/4, bf16 and fp16 2/2, int8 1 (weights and
GEMM inputs) with activations in ``hardware.int8_float``. The attention products run in the float
format (int8 quantises only the weight GEMMs, docs/architecture.md). On a datasheet device R_gemm is the dense peak
(so the latency is a lower bound plus overhead); on ``"local"`` it is the measured rate at that GEMM size,
R_vector the measured rate of that element-wise op at that size, and a fused attention (SDPA) is priced
as one kernel at the measured SDPA rate (both matmuls; its softmax included).

With a :class:`~.kernel_plan.KernelPlan` (a model returned by ``bertsilicon.optimize``, priced on
``"local"``), the ops of each fused layer take the measured rates of bertsilicon's own kernels
(:func:`~.kernel_plan.kernel_time`: each GEMM at its own precision, the one attention kernel at the layer's
attention dtype, the fused add+LayerNorm), and the overheads are the measured per-layer call
(``hardware.layer_call_s``, once per layer) and per-forward cost (``hardware.forward_s``, on the embeddings).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .counts import ATTENTION, GEMM, Op
from .energy import EnergyTable
from .hardware import BYTES, Hardware
from .kernel_plan import KernelPlan, kernel_time


def _ew_class(op: Op) -> str:
    name = op.op.lower()
    for cls in ("softmax", "gelu", "relu"):
        if cls in name:
            return cls
    if "norm" in name or op.kind == "gather":
        return "layernorm"
    return "add"


def _overhead(o: Op, hw: Hardware, plan: Optional[KernelPlan], called: set) -> float:
    """Per-kernel launch overhead; with a kernel plan, one layer call per fused layer and one forward."""
    if plan is not None and plan.fused(o.layer):
        first = o.layer not in called
        called.add(o.layer)
        return hw.layer_call_s if first else 0.0
    if plan is not None and o.layer == "embeddings":
        return hw.forward_s if o.kind != GEMM else 0.0
    return o.kernels * hw.launch_overhead_s


def price(ops: Sequence[Op], hw: Hardware, precision: str, energy: EnergyTable,
          plan: Optional[KernelPlan] = None) -> List[Dict]:
    fp = hw.int8_float if precision == "int8" else precision
    b_f = BYTES[fp]
    b_w = BYTES[precision]
    b_in = 1 if precision == "int8" else b_f
    rows = []
    called: set = set()
    for o in ops:
        weight_bytes = o.weight_elems * b_w + (o.params - o.weight_elems) * b_f
        moved = (o.weight_elems * b_w + (o.vector_param_elems + o.table_elems_read + o.act_in_elems
                                         + o.act_out_elems) * b_f + o.gemm_in_elems * b_in)
        per_kernel = o.matmul_flops / max(o.gemm_kernels, 1)
        fused_rate = hw.fused_attention_rate(2 * o.matmul_flops) if o.group == "attention" else None
        measured = kernel_time(o, hw, plan) if plan is not None and plan.fused(o.layer) else None
        if measured is not None:  # bertsilicon's own kernel, measured
            t_compute = measured
            mac_pj = energy.mac_pj[precision] if o.kind == GEMM else energy.mac_pj[fp]
        elif fused_rate is not None:  # measured fused attention: its rate covers both matmuls and the softmax
            t_compute = 2 * o.matmul_flops / fused_rate if o.op == "attention scores" else 0.0
            mac_pj = energy.mac_pj[fp]
        elif o.kind == GEMM:
            t_compute = o.matmul_flops / hw.gemm_rate(precision, per_kernel)
            mac_pj = energy.mac_pj[precision]
        elif o.kind == ATTENTION:
            t_compute = (o.matmul_flops / hw.attention_rate(fp, per_kernel)
                         + o.other_flops / hw.elementwise_rate("add", o.other_flops))
            mac_pj = energy.mac_pj[fp]
        else:
            t_compute = o.other_flops / hw.elementwise_rate(_ew_class(o), o.other_flops) if o.other_flops else 0.0
            mac_pj = 0.0
        t_memory = moved / hw.bandwidth
        t_overhead = _overhead(o, hw, plan, called)
        latency = max(t_compute, t_memory) + t_overhead
        if o.kernels == 0:  # runs inside a neighbour's kernel (fused softmax, GELU epilogue)
            bound = "fused"
        elif t_overhead > max(t_compute, t_memory):
            bound = "overhead"
        else:
            bound = "compute" if t_compute >= t_memory else "memory"
        e_compute = (o.macs * mac_pj + o.other_flops * energy.flop_pj[fp]) * 1e-12
        e_memory = moved * energy.dram_pj_per_byte * 1e-12
        e_static = hw.static_power_w * latency
        rows.append({
            "layer": o.layer, "op": o.op, "kind": o.kind, "tokens": o.tokens, "macs": o.macs,
            "matmul_flops": o.matmul_flops, "flops": o.flops, "params": o.params, "weight_bytes": weight_bytes,
            "activation_bytes": o.act_out_elems * b_f, "bytes": moved,
            "intensity": o.flops / moved if moved else float("inf"), "kernels": o.kernels, "bound": bound,
            "t_compute_s": t_compute, "t_memory_s": t_memory, "t_overhead_s": t_overhead, "latency_s": latency,
            "energy_compute_j": e_compute, "energy_memory_j": e_memory, "energy_static_j": e_static,
            "energy_j": e_compute + e_memory + e_static,
        })
    return rows


SUMMED = ("macs", "matmul_flops", "flops", "params", "weight_bytes", "activation_bytes", "bytes", "kernels",
          "t_compute_s", "t_memory_s", "t_overhead_s", "latency_s", "energy_compute_j", "energy_memory_j",
          "energy_static_j", "energy_j")


def totals(rows: Sequence[Dict]) -> Dict:
    t = {k: sum(r[k] for r in rows) for k in SUMMED}
    t["intensity"] = t["flops"] / t["bytes"] if t["bytes"] else float("inf")
    t["bound"] = "compute" if t["t_compute_s"] >= t["t_memory_s"] else "memory"
    by_bound = {}
    for r in rows:
        by_bound[r["bound"]] = by_bound.get(r["bound"], 0.0) + r["latency_s"]
    t["latency_by_bound_s"] = by_bound
    return t
