"""Student design: sweep encoder shapes on a device and return the Pareto front.

``explore(hardware=..., seq_len=..., latency_budget=... | energy_budget=...)`` profiles every shape of
a grid (layers x hidden x heads x FFN width) plus the published students (the 24 compact BERTs of Turc et
al., TinyBERT, MiniLM, BERT-PKD, DistilBERT, MobileBERT, BERT-base) with the analytic profiler, keeps the
shapes within the budget, and returns the Pareto front of

    maximise  non-embedding parameters   (capacity proxy: Kaplan et al. 2020 — loss falls as a power law
                                          of non-embedding parameters; embeddings add little)
    minimise  predicted latency
    minimise  predicted energy

(parameters and FLOPs are reported alongside). Minimising cost alone would make the smallest shape win
everything; capacity is what a student buys with its budget.

Shape band: the parameter proxy holds only for shapes that are not too shallow for their width (Kaplan et
al.'s near-shape-independence is measured over a band of aspect ratios; Turc et al.'s compact BERTs show
depth should be prioritised over width at a fixed size). Without a band, a weight-bandwidth-bound device
(latency ~ parameters, plus a cost per layer) makes the fewest, widest layers win every budget: the pick
was always the grid's widest hidden size. The front therefore keeps shapes with ``hidden / layers <=
max_aspect`` (default 128: DistilBERT's, BERT-PKD-6's and TinyBERT-6's 768 / 6, the widest of the
published 6-layer students); shapes beyond it stay in the candidates, flagged.

Flags: head dims that tensor cores dislike (not a multiple of 8 for fp16/bf16/fp32-TF32 MMA tiles, of 16
for int8) and embedding-dominated students (embedding tables > 50% of parameters: parameters that cost
memory but no compute, and little accuracy).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from .arch import Arch, arch_from_config, bert_arch
from .core import _positive_int
from .counts import count_ops
from .energy import HOROWITZ
from .hardware import check_precision
from .lookup import get_hardware
from .roofline import price, totals

LAYERS = (2, 3, 4, 6, 8, 12)
HIDDEN = (128, 256, 312, 384, 512, 768)
HEADS = (2, 4, 8, 12, 16)
FFN_RATIOS = (2, 4)
# Heads change cost (the score matrices are heads x S^2) but not the capacity proxy, so an unbounded sweep
# would always pick the fewest heads; the sweep keeps the head dims published students use.
HEAD_DIMS = (32, 64)
MAX_ASPECT = 128.0  # hidden / layers of the front's shapes at most (see the module docstring)


@dataclass
class Candidate:
    name: str
    family: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    head_dim: int
    params: int
    non_embedding_params: int
    embedding_fraction: float
    matmul_flops: int
    latency_s: float
    energy_j: float
    flags: List[str] = field(default_factory=list)
    named: bool = False
    pareto: bool = False

    def to_dict(self) -> Dict:
        return asdict(self)


def _flags(a: Arch, precision: str, emb_frac: float, kind: str) -> List[str]:
    flags = []
    need = 16 if precision == "int8" else 8
    if kind == "gpu" and a.head_dim % need:
        flags.append(f"head dim {a.head_dim} not a multiple of {need} (tensor-core tiles pad it)")
    if emb_frac > 0.5:
        flags.append(f"embedding-dominated ({emb_frac:.0%} of parameters are embedding tables)")
    return flags


def named_students() -> Dict[str, Arch]:
    from ..models.students import STUDENTS, student_config

    return {n: arch_from_config(student_config(n), name=n) for n in STUDENTS}


def grid(layers: Iterable[int] = LAYERS, hidden: Iterable[int] = HIDDEN, heads: Iterable[int] = HEADS,
         ffn_ratios: Iterable[float] = FFN_RATIOS, head_dims: tuple = HEAD_DIMS) -> List[Arch]:
    """BERT shapes of the sweep; heads must divide hidden with ``head_dims[0] <= head dim <= head_dims[1]``."""
    out = []
    for L in layers:
        for H in hidden:
            for A in heads:
                if H % A or not head_dims[0] <= H // A <= head_dims[1]:
                    continue
                for r in ffn_ratios:
                    out.append(bert_arch(L, H, A, int(round(r * H)), name=f"L{L}-H{H}-A{A}-F{int(round(r * H))}"))
    return out


def _key(a: Arch):
    return (a.family, a.layers, a.hidden, a.heads, a.intermediate, a.embedding_size, a.inner, a.num_ffn, a.pooler,
            a.type_vocab)


def evaluate(a: Arch, hw, precision: str, batch_size: int, seq_len: int, attn_implementation: str = "sdpa",
             fused: bool = False) -> Candidate:
    """The profile of one shape, as ``profile(a, ...)`` computes it, reduced to a :class:`Candidate`."""
    ops = count_ops(a, batch_size, seq_len, fused=fused, fused_attention=attn_implementation != "eager")
    t = totals(price(ops, hw, precision, HOROWITZ))
    emb = sum(o.params for o in ops if o.layer == "embeddings")
    return Candidate(a.name, a.family, a.layers, a.hidden, a.heads, a.intermediate, a.head_dim, t["params"],
                     t["params"] - emb, emb / t["params"], t["matmul_flops"], t["latency_s"], t["energy_j"],
                     _flags(a, precision, emb / t["params"], hw.kind))


def pareto_front(cands: Sequence[Candidate]) -> List[Candidate]:
    """Shapes no other shape beats: >= capacity, <= latency, <= energy, and strictly better in one."""
    def dominates(x: Candidate, y: Candidate) -> bool:
        ge = (x.non_embedding_params >= y.non_embedding_params and x.latency_s <= y.latency_s
              and x.energy_j <= y.energy_j)
        gt = (x.non_embedding_params > y.non_embedding_params or x.latency_s < y.latency_s
              or x.energy_j < y.energy_j)
        return ge and gt
    front = [c for c in cands if not any(dominates(o, c) for o in cands if o is not c)]
    return sorted(front, key=lambda c: c.latency_s)


@dataclass
class DesignResult:
    hardware: str
    precision: str
    batch_size: int
    seq_len: int
    latency_budget_ms: Optional[float]
    energy_budget_mj: Optional[float]
    candidates: List[Candidate]
    front: List[Candidate]
    max_aspect: Optional[float] = MAX_ASPECT

    @property
    def best(self) -> Optional[Candidate]:
        """The front's highest-capacity shape (within the budget)."""
        return max(self.front, key=lambda c: c.non_embedding_params) if self.front else None

    def to_dict(self) -> Dict:
        return {"hardware": self.hardware, "precision": self.precision, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "latency_budget_ms": self.latency_budget_ms,
                "energy_budget_mj": self.energy_budget_mj, "max_aspect": self.max_aspect,
                "objectives": "max non-embedding params, min latency, min energy", "best": self.best.to_dict() if self.best else None,
                "front": [c.to_dict() for c in self.front], "candidates": [c.to_dict() for c in self.candidates]}

    def to_json(self, path=None) -> str:
        s = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(s)
        return s

    def to_markdown(self, path=None) -> str:
        budget = []
        if self.latency_budget_ms is not None:
            budget.append(f"latency <= {self.latency_budget_ms:g} ms")
        if self.energy_budget_mj is not None:
            budget.append(f"energy <= {self.energy_budget_mj:g} mJ")
        lines = [f"# Student design on {self.hardware} ({self.precision}, batch {self.batch_size} x seq {self.seq_len})",
                 "", f"{len(self.candidates)} shapes, {len(self.front)} on the Pareto front "
                 "(max non-embedding params, min latency, min energy)"
                 + (f"; budget: {', '.join(budget)}" if budget else "; no budget")
                 + (f"; shapes with hidden / layers <= {self.max_aspect:g}" if self.max_aspect else "") + ".", "",
                 "| shape | L | H | A | F | head dim | params (M) | non-emb (M) | GFLOPs | latency (ms) | energy (mJ) | flags |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in self.front:
            lines.append(f"| {c.name}{' *' if c.named else ''} | {c.layers} | {c.hidden} | {c.heads} | {c.intermediate} | "
                         f"{c.head_dim} | {c.params / 1e6:.2f} | {c.non_embedding_params / 1e6:.2f} | "
                         f"{c.matmul_flops / 1e9:.3f} | {c.latency_s * 1e3:.3f} | {c.energy_j * 1e3:.3f} | "
                         f"{'; '.join(c.flags)} |")
        named = [c for c in self.candidates if c.named]
        if named:
            lines += ["", "Published students (* above when on the front):", "",
                      "| student | params (M) | GFLOPs | latency (ms) | energy (mJ) | in budget | flags |",
                      "|---|---|---|---|---|---|---|"]
            for c in sorted(named, key=lambda c: c.latency_s):
                lines.append(f"| {c.name} | {c.params / 1e6:.2f} | {c.matmul_flops / 1e9:.3f} | {c.latency_s * 1e3:.3f} | "
                             f"{c.energy_j * 1e3:.3f} | {'yes' if self._in_budget(c) else 'no'} | {'; '.join(c.flags)} |")
        if self.best:
            lines += ["", f"Highest-capacity shape within the budget: **{self.best.name}**."]
        s = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(s)
        return s

    def in_band(self, c: Candidate) -> bool:
        """Not too shallow for its width: ``hidden / layers <= max_aspect`` (always, with no band)."""
        return self.max_aspect is None or c.hidden / c.layers <= self.max_aspect

    def _in_budget(self, c: Candidate) -> bool:
        return ((self.latency_budget_ms is None or c.latency_s * 1e3 <= self.latency_budget_ms)
                and (self.energy_budget_mj is None or c.energy_j * 1e3 <= self.energy_budget_mj))

    def plot(self, path) -> Path:
        """PNG: capacity against latency and against energy; front highlighted, published students named."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        fig, axes = plt.subplots(1, 2, figsize=(14, 6))
        for ax, attr, unit, budget in ((axes[0], "latency_s", "latency (ms)", self.latency_budget_ms),
                                       (axes[1], "energy_j", "energy (mJ)", self.energy_budget_mj)):
            xs = [getattr(c, attr) * 1e3 for c in self.candidates]
            ys = [c.non_embedding_params / 1e6 for c in self.candidates]
            ax.scatter(xs, ys, s=10, color="0.7", label="swept shapes")
            fr = self.front
            ax.scatter([getattr(c, attr) * 1e3 for c in fr], [c.non_embedding_params / 1e6 for c in fr], s=28,
                       color="C3", label="Pareto front")
            for c in self.candidates:
                if c.named:
                    ax.annotate(c.name.split(" / ")[0], (getattr(c, attr) * 1e3, c.non_embedding_params / 1e6),
                                fontsize=6, alpha=0.8)
            if budget is not None:
                ax.axvline(budget, color="C0", ls="--", label="budget")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(f"predicted {unit}")
            ax.set_ylabel("non-embedding parameters (M)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"Student shapes on {self.hardware}, {self.precision}, batch {self.batch_size} x seq {self.seq_len}")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _budget(name, v) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)


def explore(hardware="h100", seq_len: int = 128, latency_budget: Optional[float] = None,
            energy_budget: Optional[float] = None, batch_size: int = 1, precision: str = "fp32",
            layers: Iterable[int] = LAYERS, hidden: Iterable[int] = HIDDEN, heads: Iterable[int] = HEADS,
            ffn_ratios: Iterable[float] = FFN_RATIOS, head_dims: tuple = HEAD_DIMS,
            include_named: bool = True, attn_implementation: str = "sdpa", fused: bool = False,
            max_aspect: Optional[float] = MAX_ASPECT) -> DesignResult:
    """Sweep student shapes on ``hardware`` and return the Pareto front within the budget.

    ``latency_budget``: milliseconds per batch; ``energy_budget``: millijoules per batch (either, both or
    neither). Grid: ``layers x hidden x heads x ffn_ratios`` (FFN = ratio x hidden; heads must divide
    hidden with ``head_dims[0] <= head dim <= head_dims[1]``), plus every published student when
    ``include_named``. Heads change cost (score matrices: heads x S^2) but not the capacity proxy.
    ``attn_implementation`` / ``fused``: the kernels priced, as in :func:`bertsilicon.profile` (``fused=True``:
    the student will run under ``bertsilicon.optimize``). ``max_aspect``: the front keeps shapes with
    ``hidden / layers <= max_aspect`` (None: every shape; see the module docstring).
    """
    hw = get_hardware(hardware)
    precision = check_precision(hw, precision)
    _positive_int("seq_len", seq_len)
    _positive_int("batch_size", batch_size)
    lb, eb = _budget("latency_budget", latency_budget), _budget("energy_budget", energy_budget)
    max_aspect = _budget("max_aspect", max_aspect)
    shapes: Dict[tuple, Arch] = {}
    labels: Dict[tuple, List[str]] = {}
    named_keys = set()
    if include_named:
        for n, a in named_students().items():
            k = _key(a)
            shapes.setdefault(k, a)
            labels.setdefault(k, []).append(n)
            named_keys.add(k)
    for a in grid(layers, hidden, heads, ffn_ratios, head_dims):
        k = _key(a)
        if k not in shapes:
            shapes[k] = a
            labels[k] = [a.name]
    cands = []
    for k, a in shapes.items():
        if seq_len > a.max_positions:
            continue
        c = evaluate(a, hw, precision, batch_size, seq_len, attn_implementation, fused)
        c.name = " / ".join(labels[k])
        c.named = k in named_keys
        cands.append(c)
    res = DesignResult(hw.name, precision, batch_size, seq_len, lb, eb, cands, [], max_aspect)
    for c in cands:
        if not res.in_band(c):
            c.flags.append(f"shallow for its width (hidden / layers = {c.hidden / c.layers:g} > {max_aspect:g}): "
                           "not on the front")
    res.front = pareto_front([c for c in cands if res._in_budget(c) and res.in_band(c)])
    for c in res.front:
        c.pareto = True
    return res
