"""``model.bertsilicon_report``: what :func:`bertsilicon.optimize` replaced, what it kept and why, and the
error it measured against the original model on a small real-text batch at optimize time."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

from .layers import GEMMS as BERT_GEMMS  # the BERT block's GEMMs: one report column each


def _precision_counts(gemms: dict) -> str:
    """``"11 int8, 2 bf16"``: how many of a layer's GEMMs run in each precision ("-" when none)."""
    return ", ".join(f"{n} {p}" for p, n in Counter(gemms.values()).most_common()) or "-"


@dataclass
class LayerReport:
    index: int
    status: str                         # "fused" | "kept"
    reason: str = ""                    # why kept / what fell back
    gemms: dict = field(default_factory=dict)   # GEMM -> precision: {"qkv": "int8", "o": ..., "up": ..., "down": ...}
    rel_error: Optional[float] = None   # ||fused - original||_F / ||original||_F on real tokens (layer alone)
    max_abs_error: Optional[float] = None
    fallbacks: list = field(default_factory=list)  # int8 GEMMs moved to a higher precision, with their error
    wider_int8: list = field(default_factory=list)  # int8 GEMMs given 8-bit weights on a 7-bit-weight path, why
    call: str = ""                      # how a call on the model's device runs: "one C++ call" | "per op (why)"


@dataclass
class OptimizeReport:
    model_class: str
    family: str
    precision: str
    backend: Optional[str]
    unpad: bool
    smooth: Optional[float] = None
    cuda_graphs: bool = False
    refused: str = ""                   # whole model kept unchanged: why
    layers: list = field(default_factory=list)
    backends_used: dict = field(default_factory=dict)   # op -> backend that served it at optimize time
    end_to_end: dict = field(default_factory=dict)      # {"rel_error": ..., "min_pooled_cosine": ..., "sentences": n}
    calibration: str = ""
    error_budget: Optional[float] = None
    notes: list = field(default_factory=list)
    cpu_kernels: str = ""               # the C++ path and the GEMM / attention instructions it runs (cpu backend)
    runtime_fallbacks: Counter = field(default_factory=Counter)  # calls run on the original layers, by reason
    recomputed_backward: int = 0        # calls that needed gradients: fused forward, original layers' backward
    weights: dict = field(default_factory=dict)  # bytes of the weights held, by role (optimize.weight_bytes)

    @property
    def replaced(self) -> list:
        return [layer.index for layer in self.layers if layer.status == "fused"]

    @property
    def kept(self) -> list:
        return [(layer.index, layer.reason) for layer in self.layers if layer.status == "kept"]

    @property
    def int8_fallbacks(self) -> list:
        return [(layer.index, fb) for layer in self.layers for fb in layer.fallbacks]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["runtime_fallbacks"] = dict(self.runtime_fallbacks)
        return d

    def __str__(self) -> str:
        head = (f"bertsilicon.optimize report: {self.model_class} ({self.family}), precision={self.precision}, "
                f"backend={self.backend or 'auto'}, unpad={self.unpad}, smooth={self.smooth}, "
                f"cuda_graphs={self.cuda_graphs}")
        lines = [head]
        if self.refused:
            lines.append(f"  NOT optimized: {self.refused}")
        if self.layers:
            # one column per GEMM for the BERT block; a layer of another shape (MobileBERT: 13 GEMMs) gets one
            # "gemms" column counting its precisions (which GEMMs fell back is in the note)
            names = [n for r in self.layers for n in r.gemms]
            columns = BERT_GEMMS if set(names) <= set(BERT_GEMMS) else ("gemms",)
            rows = [("layer", "status", *columns, "rel err", "max abs err", "call", "note")]
            for r in self.layers:
                g = [r.gemms.get(k, "-") for k in columns] if columns == BERT_GEMMS else [_precision_counts(r.gemms)]
                err = "-" if r.rel_error is None else f"{r.rel_error:.2e}"
                mae = "-" if r.max_abs_error is None else f"{r.max_abs_error:.2e}"
                note = r.reason or "; ".join(r.wider_int8 + r.fallbacks)
                rows.append((str(r.index), r.status, *g, err, mae, r.call or "-", note))
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
            for i, row in enumerate(rows):
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
                if i == 0:
                    lines.append("  " + "  ".join("-" * w for w in widths) + "  ----")
        if self.end_to_end:
            e = self.end_to_end
            lines.append(f"  end to end vs original (calibration: {self.calibration}): "
                         f"rel error {e.get('rel_error', float('nan')):.2e}, "
                         f"min mean-pooled cosine {e.get('min_pooled_cosine', float('nan')):.6f}")
        if self.error_budget is not None:
            lines.append(f"  per-layer error budget (int8 fallback rule): {self.error_budget:.1e}")
        if self.backends_used:
            lines.append("  backends: " + ", ".join(f"{k}={v}" for k, v in sorted(self.backends_used.items())))
        if self.cpu_kernels:
            lines.append(f"  cpu kernels: {self.cpu_kernels}")
        if self.weights:
            lines.append("  weights held: " + ", ".join(f"{role} {n / 2 ** 20:.1f} MiB" for role, n in self.weights.items()))
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.runtime_fallbacks:
            lines.append("  calls run on the original layers: " +
                         ", ".join(f"{k} x{v}" for k, v in self.runtime_fallbacks.items()))
        if self.recomputed_backward:
            lines.append(f"  calls with gradients (fused forward; backward recomputed on the original layers): "
                         f"{self.recomputed_backward}")
        return "\n".join(lines)

    __repr__ = __str__
