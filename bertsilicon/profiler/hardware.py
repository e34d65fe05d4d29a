"""The hardware table: dense peak rates per precision, memory bandwidth, power, with sources.

Every figure is the **dense** (no 2:4 sparsity) datasheet figure; where a datasheet only prints the
sparse figure, the dense one is half of it (said in the source line). CPU peaks are computed from the
vendor's core count, base clock and per-core vector width (formula in the source line): vendors do not
print them. ``"local"`` is not a datasheet: :func:`bertsilicon.profiler.calibration.calibrate` measures
this machine and its entry is built from the stored measurements.

Precisions: ``fp32`` (fp32 matmuls on CUDA cores / FMA units — TF32 off), ``bf16``, ``fp16``, ``int8``
(int8 x int8 -> int32 products; activations around them in ``int8_float``). A device lists only the
precisions it runs natively (T4 has no bf16; the two server CPUs have no bf16 instructions).
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from math import log
from typing import Dict, List, Optional, Sequence, Tuple

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}

T = 1e12
G = 1e9


@dataclass(frozen=True)
class Hardware:
    name: str
    kind: str                        # "gpu" | "cpu"
    peak: Dict[str, float]           # dense matmul FLOP/s (OP/s for int8) per precision
    vector_flops: float              # fp32 element-wise rate (CUDA cores / FMA units), FLOP/s
    bandwidth: float                 # DRAM/HBM bytes/s
    launch_overhead_s: float         # per kernel: launch + framework dispatch (eager PyTorch)
    tdp_w: Optional[float]           # board/package power limit
    process: str                     # process node, for the energy notes
    source: str
    int8_float: str = "fp16"         # float format of activations around int8 GEMMs (GPU fp16, CPU fp32)
    static_w: Optional[float] = None  # static/idle power; None -> 0.3 x TDP (stated assumption)
    # measured GEMM rates: precision -> [(flops of one GEMM, FLOP/s)], ascending; only for "local"
    gemm_curve: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    attention_curve: List[Tuple[float, float]] = field(default_factory=list)  # batched Q K^T / P V
    fused_attention_curve: List[Tuple[float, float]] = field(default_factory=list)  # SDPA: both matmuls
    elementwise_curve: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)  # op class -> curve
    # bertsilicon's own CPU kernels, measured ("gemm:int8", "attention:bf16", "add_layernorm": curves as
    # above) and the per-call costs of an optimized model: only for "local" (profiler.kernel_rates)
    kernel_curves: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    layer_call_s: float = 0.0        # one fused layer call beyond its kernels
    forward_s: float = 0.0           # one forward of an optimized model beyond its layers
    aliases: Tuple[str, ...] = ()

    @property
    def precisions(self) -> Tuple[str, ...]:
        return tuple(p for p in PRECISIONS if self.peak.get(p))

    @property
    def static_power_w(self) -> float:
        if self.static_w is not None:
            return self.static_w
        return 0.3 * self.tdp_w if self.tdp_w else 0.0

    def gemm_rate(self, precision: str, flops: float) -> float:
        """FLOP/s of one GEMM of ``flops`` FLOPs: the measured curve (log-linear interpolation, clamped)
        when calibrated, else the datasheet peak."""
        curve = self.gemm_curve.get(precision)
        return _interp(curve, flops) if curve else self.peak[precision]

    def attention_rate(self, precision: str, flops: float) -> float:
        """FLOP/s of the batched ``Q K^T`` / ``P V`` products (measured when calibrated)."""
        if self.attention_curve and precision == "fp32":
            return _interp(self.attention_curve, flops)
        return self.gemm_rate(precision, flops)

    def fused_attention_rate(self, flops: float) -> Optional[float]:
        """Matmul FLOP/s of a whole fused attention kernel (softmax included), measured; None if not."""
        return _interp(self.fused_attention_curve, flops) if self.fused_attention_curve else None

    def kernel_rate(self, kernel: str, flops: float) -> Optional[float]:
        """FLOP/s of one call of bertsilicon's ``kernel`` (``"gemm:fp32"``, ``"attention:bf16"``,
        ``"add_layernorm"``...) of ``flops`` FLOPs, measured; None where not calibrated."""
        curve = self.kernel_curves.get(kernel)
        return _interp(curve, flops) if curve else None

    def elementwise_rate(self, op_class: str, flops: float) -> float:
        """FLOP/s of an element-wise op (``add``, ``gelu``, ``softmax``, ``layernorm``, ``relu``) of ``flops``
        FLOPs: measured curve when calibrated, else the fp32 vector peak."""
        curve = self.elementwise_curve.get(op_class)
        return _interp(curve, flops) if curve else self.vector_flops

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precisions"] = list(self.precisions)
        return d


def _interp(curve: Sequence[Tuple[float, float]], x: float) -> float:
    xs = [c[0] for c in curve]
    if x <= xs[0]:
        return curve[0][1]
    if x >= xs[-1]:
        return curve[-1][1]
    i = bisect_left(xs, x)
    (x0, y0), (x1, y1) = curve[i - 1], curve[i]
    w = (log(x) - log(x0)) / (log(x1) - log(x0))
    return y0 + w * (y1 - y0)


def _gpu(name, fp32, bf16, fp16, int8, bw, tdp, process, source, aliases=(), launch=5e-6):
    peak = {"fp32": fp32 * T, "bf16": bf16 * T if bf16 else 0.0, "fp16": fp16 * T, "int8": int8 * T}
    return Hardware(name, "gpu", peak, fp32 * T, bw, launch, tdp, process, source, aliases=aliases)


_TABLE = [
    _gpu("h100", 66.9, 989.4, 989.4, 1978.9, 3.35e12, 700, "TSMC 4N",
         "NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (FP32 67 TFLOPS; BF16/FP16 1,979 and INT8 3,958 "
         "with sparsity -> dense 989.4 / 1,978.9; HBM3 3.35 TB/s; up to 700 W)", aliases=("h100-sxm",)),
    _gpu("h200", 66.9, 989.4, 989.4, 1978.9, 4.8e12, 700, "TSMC 4N",
         "NVIDIA H200 Tensor Core GPU datasheet, SXM column (same Hopper compute as H100 SXM; HBM3e 4.8 TB/s, "
         "141 GB; up to 700 W)", aliases=("h200-sxm",)),
    _gpu("a100-40gb", 19.5, 312, 312, 624, 1.555e12, 400, "TSMC 7 nm",
         "NVIDIA A100 Tensor Core GPU datasheet, A100 40GB SXM (FP32 19.5, BF16/FP16 312, INT8 624 dense; "
         "HBM2 1,555 GB/s; 400 W)"),
    _gpu("a100-80gb", 19.5, 312, 312, 624, 2.039e12, 400, "TSMC 7 nm",
         "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM (FP32 19.5, BF16/FP16 312, INT8 624 dense; "
         "HBM2e 2,039 GB/s; 400 W)", aliases=("a100",)),
    _gpu("l4", 30.3, 121, 121, 242.5, 300e9, 72, "TSMC 4N",
         "NVIDIA L4 Tensor Core GPU datasheet (FP32 30.3; BF16/FP16 242 and INT8 485 with sparsity -> dense "
         "121 / 242.5; GDDR6 300 GB/s; 72 W)"),
    _gpu("t4", 8.1, 0, 65, 130, 320e9, 70, "TSMC 12 nm",
         "NVIDIA T4 Tensor Core GPU datasheet (FP32 8.1, mixed FP16/FP32 65, INT8 130 TOPS; GDDR6 320 GB/s; "
         "70 W; Turing has no bf16)"),
    _gpu("rtx4090", 82.6, 165.2, 165.2, 660.6, 1008e9, 450, "TSMC 4N",
         "NVIDIA Ada Lovelace GPU architecture whitepaper v1.0, appendix table for GeForce RTX 4090 (FP32 82.6; "
         "FP16/BF16 tensor with FP32 accumulate 165.2 dense; INT8 660.6 dense; GDDR6X 1,008 GB/s; 450 W)"),
    _gpu("jetson-agx-orin", 5.3, 42.5, 42.5, 85, 204.8e9, 60, "Samsung 8 nm",
         "NVIDIA Jetson AGX Orin 64GB data sheet / technical brief (Ampere GPU 2048 CUDA cores at 1.3 GHz -> "
         "FP32 5.3 TFLOPS; GPU INT8 170 TOPS sparse -> 85 dense, FP16 half of INT8 = 42.5; LPDDR5 204.8 GB/s; "
         "15-60 W module power)", aliases=("orin",), launch=10e-6),
    Hardware("xeon-8380", "cpu",
             {"fp32": 40 * 2.3e9 * 64, "bf16": 0.0, "fp16": 0.0, "int8": 40 * 2.3e9 * 256},
             40 * 2.3e9 * 64, 204.8e9, 5e-6, 270, "Intel 10 nm",
             "Intel ARK, Xeon Platinum 8380 (Ice Lake-SP, AVX-512 VNNI): 40 cores, 2.30 GHz base, 8 channels "
             "DDR4-3200 (204.8 GB/s), 270 W. Peak computed: fp32 = cores x clock x 2 FMA ports x 16 lanes x 2 "
             "= 5.9 TFLOP/s; int8 (VPDPBUSD, 4 MACs per 32-bit lane) = 4x fp32 = 23.6 TOP/s; AVX-512 "
             "clocks under load are below base, so these are upper bounds", int8_float="fp32",
             aliases=("avx512-vnni", "avx512")),
    Hardware("epyc-7763", "cpu",
             {"fp32": 64 * 2.45e9 * 32, "bf16": 0.0, "fp16": 0.0, "int8": 2 * 64 * 2.45e9 * 32},
             64 * 2.45e9 * 32, 204.8e9, 5e-6, 280, "TSMC 7 nm",
             "AMD EPYC 7763 product page (Zen 3, AVX2): 64 cores, 2.45 GHz base, 8 channels DDR4-3200 "
             "(204.8 GB/s), 280 W. Peak computed: fp32 = cores x clock x 2 FMA pipes x 8 lanes x 2 = 5.0 "
             "TFLOP/s; int8 assumed 2x fp32 (AVX2 has no int8 dot product: VPMADDUBSW + VPMADDWD + VPADDD, "
             "as in FBGEMM)", int8_float="fp32", aliases=("avx2",)),
]

HARDWARE: Dict[str, Hardware] = {h.name: h for h in _TABLE}
_ALIASES = {alias: h.name for h in _TABLE for alias in h.aliases}


def check_precision(hw: Hardware, precision) -> str:
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; known: {', '.join(PRECISIONS)}")
    precision = precision.lower()
    if precision not in hw.precisions:
        raise ValueError(f"precision {precision!r} is not supported natively on {hw.name}; "
                         f"it supports: {', '.join(hw.precisions)}")
    return precision


def hardware_table_markdown() -> str:
    rows = ["| hardware | fp32 | bf16 | fp16 | int8 | memory GB/s | W | source |", "|---|---|---|---|---|---|---|---|"]
    for h in _TABLE:
        cells = [f"{h.peak[p] / T:.1f}" if h.peak.get(p) else "-" for p in PRECISIONS]
        rows.append(f"| {h.name} | " + " | ".join(cells) + f" | {h.bandwidth / G:.0f} | {h.tdp_w:.0f} | {h.source} |")
    return "\n".join(rows) + "\n\nRates in dense TFLOP/s (TOP/s for int8)."
