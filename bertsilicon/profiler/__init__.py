"""Profiler: FLOPs/MACs, parameters, bytes, arithmetic intensity, roofline latency and energy per op per
layer, per precision, per device; and the student-design explorer (:mod:`bertsilicon.profiler.design`).

    report = bertsilicon.profile("minilm-l6", batch_size=8, seq_len=128, precision="int8", hardware="t4")
    print(report.to_markdown()); report.plot("minilm.png"); report.to_json("minilm.json")

Modules: :mod:`.arch` (shapes from HF configs), :mod:`.counts` (analytic op counts), :mod:`.hardware`
(the device table with sources), :mod:`.calibration` (measure this machine: ``hardware="local"``),
:mod:`.roofline` (bytes, latency), :mod:`.energy` (Horowitz 45 nm table), :mod:`.report`, :mod:`.measure`,
:mod:`.design`.
"""
from .arch import Arch, arch_from_config, bert_arch
from .calibration import calibrate, calibration_path
from .core import profile
from .counts import FLOPS_PER_ELEMENT, Op, count_ops
from .energy import HOROWITZ, EnergyTable
from .hardware import HARDWARE, PRECISIONS, Hardware
from .lookup import get_hardware, known_hardware
from .report import Report

__all__ = ["profile", "Report", "Arch", "arch_from_config", "bert_arch", "count_ops", "Op", "FLOPS_PER_ELEMENT",
           "HARDWARE", "PRECISIONS", "Hardware", "get_hardware", "known_hardware", "calibrate", "calibration_path",
           "EnergyTable", "HOROWITZ"]
