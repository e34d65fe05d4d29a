"""``bertsilicon.profile``: counts -> priced rows -> :class:`~.report.Report` (optionally measured)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from .arch import Arch, arch_from_config
from .counts import count_ops
from .energy import HOROWITZ, EnergyTable
from .kernel_plan import plan_of
from .hardware import check_precision
from .lookup import get_hardware
from .notes import COUNTED, NOT_COUNTED, paper_figures
from .report import Report
from .roofline import price, totals


def _base(model):
    return getattr(model, "base_model", model)


def _optimized_precision(model) -> Optional[str]:
    rep = getattr(model, "bertsilicon_report", None)
    if rep is None:
        return None
    p = rep.get("precision") if isinstance(rep, dict) else getattr(rep, "precision", None)
    return p if isinstance(p, str) else None


def _model_head(model) -> List[Tuple[str, int, int]]:
    """Linear layers of a sequence-classification head (applied to one token per sequence)."""
    import torch

    if not type(model).__name__.endswith("ForSequenceClassification"):
        return []
    prefix = getattr(model, "base_model_prefix", None)
    head = []
    for name, child in model.named_children():
        if name == prefix:
            continue
        for sub, m in child.named_modules() if not isinstance(child, torch.nn.Linear) else [("", child)]:
            if isinstance(m, torch.nn.Linear):
                head.append((f"{name}{'.' + sub if sub else ''}", m.in_features, m.out_features))
    return head


def resolve(model_or_config) -> Tuple[Arch, str, bool, List[Tuple[str, int, int]], Optional[str], object]:
    """(arch, display name, fused, head, precision of an optimized model, the model or None)."""
    from ..models.students import student_config

    if isinstance(model_or_config, str):
        return arch_from_config(student_config(model_or_config), name=model_or_config), model_or_config, False, [], \
            None, None
    config = getattr(model_or_config, "config", None)
    if config is not None and hasattr(model_or_config, "named_modules"):  # a torch module (HF model)
        model = model_or_config
        base = _base(model)
        pooler = getattr(base, "pooler", None)
        has_pooler = pooler is not None and (getattr(pooler, "dense", None) is not None)
        name = getattr(config, "name_or_path", "") or type(model).__name__
        if os.sep in name:  # a local folder: its last two parts are enough to recognise it
            name = "/".join(name.rstrip(os.sep).split(os.sep)[-2:])
        arch = arch_from_config(config, pooler=has_pooler, name=name)
        fused = hasattr(model, "bertsilicon_report")
        return arch, name, fused, _model_head(model), _optimized_precision(model), model
    if hasattr(model_or_config, "model_type") or hasattr(model_or_config, "to_dict"):
        arch = arch_from_config(model_or_config)
        return arch, arch.name or getattr(model_or_config, "model_type", "config"), False, [], None, None
    if isinstance(model_or_config, Arch):
        return model_or_config, model_or_config.name or model_or_config.family, False, [], None, None
    raise TypeError("model_or_config must be a student name (str), a Hugging Face config (BertConfig, "
                    "DistilBertConfig, MobileBertConfig) or a Hugging Face model; got "
                    f"{type(model_or_config).__name__}")


def _attention_impl(model, attn_implementation: Optional[str]) -> str:
    """"eager" or a fused implementation ("sdpa", "flash_attention_2", ...): an explicit argument wins, then
    the model's config, then HF's default for these models ("sdpa")."""
    if attn_implementation is not None:
        if not isinstance(attn_implementation, str):
            raise TypeError(f"attn_implementation must be a str, got {type(attn_implementation).__name__}")
        return attn_implementation
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) if model is not None else None
    return impl or "sdpa"


def _positive_int(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _lengths(attention_mask, batch_size, seq_len) -> Tuple[int, int, Optional[List[int]]]:
    if attention_mask is None:
        return batch_size, seq_len, None
    import torch

    m = torch.as_tensor(attention_mask)
    if m.dim() != 2:
        raise ValueError(f"attention_mask must be 2-D [batch, seq_len], got shape {tuple(m.shape)}")
    B, S = m.shape
    if (batch_size, seq_len) not in ((1, 128), (B, S)):
        raise ValueError(f"attention_mask has shape {(B, S)} but batch_size={batch_size}, seq_len={seq_len} "
                         "were given; leave them out or make them match")
    return B, S, [int(x) for x in (m != 0).sum(1).tolist()]


def model_notes(hw, precision: str, fused: bool, energy: EnergyTable, attn: str,
                own_kernels: bool = False) -> List[str]:
    notes = [
        "latency per op = max(compute time, memory time) + kernels x per-kernel overhead "
        f"({hw.launch_overhead_s * 1e6:.1f} us on {hw.name}); compute time uses "
        + ("measured GEMM-rate curves, attention-matmul rates and element-wise rates of this machine"
           if hw.gemm_curve else "the datasheet dense peak (so compute and memory times are lower bounds)"),
        "kernels: " + ("the fused kernels of bertsilicon.optimize" + (
            ", priced at their measured rates on this CPU's kernel path: each GEMM at its own precision, "
            f"one attention kernel, add+LayerNorm; {hw.layer_call_s * 1e6:.0f} us per layer call, "
            f"{hw.forward_s * 1e6:.0f} us per forward" if own_kernels else "") if fused else
                       f"HF eager execution with attn_implementation={attn!r}"
                       + (" (scores, softmax, context as separate kernels; S x S scores in memory)"
                          if attn == "eager" else " (attention as one fused kernel)")),
        f"energy: {energy.node} — MAC {energy.mac_pj[precision]:.2f} pJ at {precision}, element-wise FLOP "
        f"{energy.flop_pj[hw.int8_float if precision == 'int8' else precision]:.2f} pJ, DRAM "
        f"{energy.dram_pj_per_byte:.2f} pJ/byte (bf16 taken as fp16); the devices are 4-12 nm, so the dynamic "
        "energy is an upper bound for comparisons, not an absolute figure",
        (f"static power {hw.static_power_w:.0f} W x latency" + (" (0.3 x TDP, an assumption)"
                                                               if hw.static_w is None else ""))
        if hw.static_power_w else "static power: unknown for this device, not included",
    ]
    return notes


def profile(model_or_config, batch_size: int = 1, seq_len: int = 128, precision: Optional[str] = None,
            hardware="h100", attention_mask=None, measure: bool = False, repeats: int = 5,
            energy_table: EnergyTable = HOROWITZ, attn_implementation: Optional[str] = None) -> Report:
    """Profile a BERT-family encoder: one row per op per layer, totals, roofline latency and energy.

    ``model_or_config``: a student name (``bertsilicon.STUDENTS``), a ``BertConfig`` /
    ``DistilBertConfig`` / ``MobileBertConfig`` (no weights are built), a Hugging Face model, or a model
    returned by ``bertsilicon.optimize`` (profiled from ``model.config`` with fused kernels; its layers
    are not inspected). ``precision``: ``fp32 | bf16 | fp16 | int8`` (default ``fp32``, or the precision
    an optimized model was built with). ``hardware``: a name from
    :func:`bertsilicon.profiler.known_hardware` or ``"local"`` (this CPU, calibrated). ``attention_mask``
    ``[batch, seq]``: count real tokens only (the padded figures are kept in ``report.padded_totals``).
    ``measure=True``: also time each layer on the current device (the model's, else CUDA if present,
    else CPU) and compare with the prediction (and read NVML energy on a GPU).
    ``attn_implementation``: ``"eager"`` (scores, softmax and context as separate kernels, the score
    matrix in memory) or a fused one (``"sdpa"``...); default: the model's, else HF's default ``"sdpa"``.
    FLOPs do not depend on it; bytes, kernels and latency do.
    """
    arch, name, fused, head, opt_precision, model = resolve(model_or_config)
    hw = get_hardware(hardware)
    precision = check_precision(hw, precision if precision is not None else (opt_precision or "fp32"))
    _positive_int("batch_size", batch_size)
    _positive_int("seq_len", seq_len)
    B, S, lengths = _lengths(attention_mask, batch_size, seq_len)
    if S > arch.max_positions:
        raise ValueError(f"seq_len={S} exceeds the model's max_position_embeddings={arch.max_positions}")
    attn = _attention_impl(model, attn_implementation)
    kw = dict(fused=fused, head=head, fused_attention=attn != "eager")
    # an optimized model on a calibrated CPU: priced on the measured rates of the kernels it runs
    plan = plan_of(model) if fused and hw.kernel_curves else None
    rows = price(count_ops(arch, B, S, lengths, **kw), hw, precision, energy_table, plan)
    padded_totals = None
    if lengths is not None:
        padded_totals = totals(price(count_ops(arch, B, S, None, **kw), hw, precision, energy_table, plan))
    notes = {"counted": COUNTED, "not_counted": NOT_COUNTED,
             "model": model_notes(hw, precision, fused, energy_table, attn, plan is not None),
             "paper_figures": paper_figures()}
    report = Report(model=name, arch=arch, batch_size=B, seq_len=S, precision=precision, hardware=hw, fused=fused,
                    tokens=sum(lengths) if lengths is not None else B * S, padded_tokens=B * S, rows=rows,
                    totals=totals(rows), padded_totals=padded_totals, notes=notes)
    if measure:
        from .measure import measure_report
        report.measured = measure_report(report, model if model is not None else model_or_config,
                                         attention_mask, repeats)
    return report
