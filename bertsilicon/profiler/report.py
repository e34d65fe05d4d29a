"""The profile report: rows per op per layer, totals, notes; JSON, Markdown and PNG."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .arch import Arch
from .hardware import Hardware


def _si(x: float, unit: str = "") -> str:
    for scale, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {p}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def _energy(j: float) -> str:
    return f"{j * 1e3:.3f} mJ" if j >= 1e-3 else f"{j * 1e6:.2f} uJ"


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


@dataclass
class Report:
    model: str
    arch: Arch
    batch_size: int
    seq_len: int
    precision: str
    hardware: Hardware
    fused: bool
    tokens: int                     # tokens processed (real tokens when a mask was given)
    padded_tokens: int
    rows: List[Dict]
    totals: Dict
    padded_totals: Optional[Dict]   # the same model on the padded batch (only with an attention mask)
    notes: Dict
    measured: Optional[Dict] = None
    extra: Dict = field(default_factory=dict)

    # -------------------------------------------------------------------------------------------- #
    def per_layer(self) -> Dict[str, Dict[str, float]]:
        out: Dict[str, Dict[str, float]] = {}
        for r in self.rows:
            d = out.setdefault(r["layer"], {"flops": 0, "macs": 0, "latency_s": 0.0, "energy_j": 0.0, "bytes": 0})
            for k in d:
                d[k] += r[k]
        return out

    def to_dict(self) -> Dict:
        return _finite({
            "model": self.model, "arch": self.arch.to_dict(), "batch_size": self.batch_size, "seq_len": self.seq_len,
            "precision": self.precision, "hardware": self.hardware.to_dict(), "fused": self.fused,
            "tokens": self.tokens, "padded_tokens": self.padded_tokens, "rows": self.rows, "totals": self.totals,
            "padded_totals": self.padded_totals, "per_layer": self.per_layer(), "notes": self.notes,
            "measured": self.measured,
        })

    def to_json(self, path=None, indent: int = 1) -> str:
        s = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(s)
        return s

    def summary(self) -> str:
        t = self.totals
        tok = (f"{self.tokens} real of {self.padded_tokens} padded tokens" if self.tokens != self.padded_tokens
               else f"{self.tokens} tokens")
        return (f"{self.model} [{self.arch.describe()}] batch {self.batch_size} x seq {self.seq_len} ({tok}), "
                f"{self.precision} on {self.hardware.name}: {t['matmul_flops'] / 1e9:.4g} matmul GFLOPs "
                f"({t['macs'] / 1e9:.4g} GMACs), {t['flops'] / 1e9:.4g} GFLOPs in all, "
                f"{t['params'] / 1e6:.2f}M params, {_si(t['bytes'], 'B')} moved, {_time(t['latency_s'])}, "
                f"{_energy(t['energy_j'])}")

    def to_markdown(self, path=None, per_op: bool = True) -> str:
        t = self.totals
        hw = self.hardware
        lines = [f"# Profile: {self.model}", "", self.summary(), "",
                 f"- shape: {self.arch.describe()}, {self.arch.family}; "
                 f"{'fused kernels (optimized model)' if self.fused else 'HF eager kernels'}",
                 f"- hardware: **{hw.name}** — {hw.source}",
                 f"- precision: {self.precision}" + (f" (activations around int8 GEMMs in {hw.int8_float})"
                                                    if self.precision == "int8" else ""), "",
                 "## Totals", "", "| quantity | value |", "|---|---|"]
        rows = [("matmul FLOPs (2 x MACs, attention matmuls included)", f"{t['matmul_flops']:,}"),
                ("MACs", f"{t['macs']:,}"), ("all FLOPs (matmul + element-wise)", f"{t['flops']:,}"),
                ("parameters", f"{t['params']:,}"), (f"weight bytes ({self.precision})", _si(t["weight_bytes"], "B")),
                ("activation bytes written", _si(t["activation_bytes"], "B")),
                (f"bytes moved ({self.precision})", _si(t["bytes"], "B")),
                ("arithmetic intensity", f"{t['intensity']:.1f} FLOP/B"), ("bound (compute vs memory time)", t["bound"]),
                ("kernels", str(t["kernels"])), ("roofline latency", _time(t["latency_s"])),
                ("  of which launch/overhead", _time(t["t_overhead_s"])),
                ("energy", _energy(t["energy_j"]) + f" (compute {_energy(t['energy_compute_j'])}, memory "
                 f"{_energy(t['energy_memory_j'])}, static {_energy(t['energy_static_j'])})")]
        lines += [f"| {k} | {v} |" for k, v in rows]
        if self.padded_totals:
            p = self.padded_totals
            lines += ["", "## Real vs padded tokens", "", "| | real tokens | padded |", "|---|---|---|",
                      f"| tokens | {self.tokens} | {self.padded_tokens} |",
                      f"| matmul GFLOPs | {t['matmul_flops'] / 1e9:.4f} | {p['matmul_flops'] / 1e9:.4f} |",
                      f"| latency | {_time(t['latency_s'])} | {_time(p['latency_s'])} |",
                      f"| energy | {_energy(t['energy_j'])} | {_energy(p['energy_j'])} |"]
        lines += ["", "## Per layer", "", "| layer | GFLOPs | latency | energy |", "|---|---|---|---|"]
        for layer, d in self.per_layer().items():
            lines.append(f"| {layer} | {d['flops'] / 1e9:.4f} | {_time(d['latency_s'])} | {_energy(d['energy_j'])} |")
        if self.measured:
            m = self.measured
            lines += ["", f"## Measured on {m['device']} (median of {m['repeats']} runs)", "",
                      "| layer | predicted | measured | error |", "|---|---|---|---|"]
            for r in m["layers"]:
                lines.append(f"| {r['layer']} | {_time(r['predicted_s'])} | {_time(r['measured_s'])} | "
                             f"{r['error'] * 100:+.1f}% |")
            lines.append(f"| **total** | {_time(m['predicted_s'])} | {_time(m['measured_s'])} | "
                         f"{m['error'] * 100:+.1f}% |")
            if m.get("energy_j") is not None:
                lines.append(f"\nMeasured energy (NVML): {_energy(m['energy_j'])} per forward; predicted "
                             f"{_energy(t['energy_j'])}.")
            for n in m.get("notes", []):
                lines.append(f"\n{n}")
        if per_op:
            lines += ["", "## Per op", "",
                      "| layer | op | MACs | FLOPs | params | bytes | FLOP/B | bound | latency | energy |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in self.rows:
                lines.append(f"| {r['layer']} | {r['op']} | {_si(r['macs'])} | {_si(r['flops'])} | {r['params']:,} | "
                             f"{_si(r['bytes'], 'B')} | {r['intensity']:.1f} | {r['bound']} | {_time(r['latency_s'])}"
                             f" | {_energy(r['energy_j'])} |")
        n = self.notes
        lines += ["", "## What is counted", ""] + [f"- {x}" for x in n["counted"]]
        lines += ["", "## What is not counted", ""] + [f"- {x}" for x in n["not_counted"]]
        lines += ["", "## Latency and energy model", ""] + [f"- {x}" for x in n["model"]]
        pf = n.get("paper_figures")
        if pf:
            lines += ["", "## The papers' 22.5 G (BERT-base) and 1.2 G (TinyBERT4)", "",
                      "| convention (seq 128, batch 1) | BERT-base G | TinyBERT4 G |", "|---|---|---|"]
            for k, d in pf["conventions"].items():
                lines.append(f"| {k} | {d['bert-base']:.4f} | {d['tinybert4']:.4f} |")
            lines += ["", pf["explanation"]]
        s = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(s)
        return s

    def plot(self, path) -> Path:
        """A PNG with the roofline (each op at its intensity and attained FLOP/s, under the device's
        memory and compute roofs) and a per-layer stacked bar chart of predicted latency by op."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hw = self.hardware
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
        finite = [r for r in self.rows if r["bytes"] and r["latency_s"] > 0 and r["flops"] > 0]
        xs = [r["intensity"] for r in finite]
        lo, hi = min(xs + [0.1]) / 2, max(xs + [1000.0]) * 2
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        prec_peak = hw.peak[self.precision]
        ax1.plot(grid, [min(hw.bandwidth * x, prec_peak) for x in grid], "k-",
                 label=f"roof: {hw.bandwidth / 1e9:.0f} GB/s, {prec_peak / 1e12:.3g} T{self.precision} peak")
        ax1.plot(grid, [min(hw.bandwidth * x, hw.vector_flops) for x in grid], "k--",
                 label=f"vector roof {hw.vector_flops / 1e12:.3g} TFLOP/s")
        kinds = sorted({_kind(r["op"]) for r in finite})
        cmap = plt.get_cmap("tab10")
        for i, k in enumerate(kinds):
            pts = [r for r in finite if _kind(r["op"]) == k]
            ax1.scatter([r["intensity"] for r in pts], [r["flops"] / r["latency_s"] for r in pts], s=18,
                        color=cmap(i % 10), label=k, alpha=0.8)
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_xlabel("arithmetic intensity (FLOP / byte moved)")
        ax1.set_ylabel("attained FLOP/s (predicted, incl. overhead)")
        ax1.set_title(f"Roofline: {self.model}, {self.precision} on {hw.name}")
        ax1.legend(fontsize=7, loc="lower right")
        ax1.grid(True, which="both", alpha=0.3)

        layers = list(self.per_layer())
        kinds_all = []
        for r in self.rows:
            if _kind(r["op"]) not in kinds_all:
                kinds_all.append(_kind(r["op"]))
        bottom = [0.0] * len(layers)
        for i, k in enumerate(kinds_all):
            vals = [sum(r["latency_s"] for r in self.rows if r["layer"] == layer and _kind(r["op"]) == k) * 1e3
                    for layer in layers]
            ax2.bar(range(len(layers)), vals, bottom=bottom, color=cmap(i % 10), label=k)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax2.set_xticks(range(len(layers)))
        ax2.set_xticklabels([lay.replace("layer ", "L") for lay in layers], rotation=60, fontsize=7)
        ax2.set_ylabel("predicted latency (ms)")
        ax2.set_title(f"Per layer: batch {self.batch_size} x seq {self.seq_len}, total "
                      f"{_time(self.totals['latency_s'])}")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _kind(op: str) -> str:
    """Op family for plots: drop MobileBERT's FFN index and the (attention)/(ffn) qualifiers."""
    base = op.split(" (")[0]
    parts = base.split(" ")
    if parts[0].startswith("ffn") and len(parts) > 1:
        parts[0] = "ffn"
    return " ".join(parts)
