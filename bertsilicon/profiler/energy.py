"""Energy per operation and per byte (Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm).

energy = sum_ops (MACs x E_mac[precision] + other FLOPs x E_flop[float]) + bytes x E_dram + P_static x time

* ``E_mac`` = multiply + add: fp32 3.7 + 0.9 = 4.6 pJ; fp16 1.1 + 0.4 = 1.5 pJ; bf16 is not in the table
  and is taken as fp16; int8 = int8 multiply 0.2 + int32 accumulate 0.1 = 0.3 pJ.
* an element-wise FLOP = the mean of an add and a multiply in its float format (fp32 2.3, fp16 0.75 pJ).
* DRAM: 1300-2600 pJ per 64-bit read -> the mid-point, 1950 / 8 = 243.75 pJ per byte, for every byte the
  roofline moves (reads and writes alike). On-chip SRAM/cache traffic is not priced.
* static power: the device's ``static_w`` (default 0.3 x TDP, an assumption) times the predicted latency.

Process node: all per-op and per-byte figures are the **45 nm** ones, used unscaled. Every device in the
table is built on a 4-12 nm process and HBM/GDDR6 cost ~5-10x less per byte than 45 nm-era DRAM, so the
dynamic part is an upper bound, useful for comparing shapes and precisions against each other, not as an
absolute joule figure. Pass your own :class:`EnergyTable` to ``profile(..., energy_table=...)`` to change it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict

HOROWITZ_45NM_PJ = {
    "int8 add": 0.03, "int32 add": 0.1, "fp16 add": 0.4, "fp32 add": 0.9,
    "int8 mult": 0.2, "int32 mult": 3.1, "fp16 mult": 1.1, "fp32 mult": 3.7,
    "8KB SRAM 64b read": 10.0, "DRAM 64b read (low)": 1300.0, "DRAM 64b read (high)": 2600.0,
}
_H = HOROWITZ_45NM_PJ


@dataclass(frozen=True)
class EnergyTable:
    mac_pj: Dict[str, float] = field(default_factory=lambda: {
        "fp32": _H["fp32 mult"] + _H["fp32 add"],
        "fp16": _H["fp16 mult"] + _H["fp16 add"],
        "bf16": _H["fp16 mult"] + _H["fp16 add"],
        "int8": _H["int8 mult"] + _H["int32 add"],
    })
    flop_pj: Dict[str, float] = field(default_factory=lambda: {
        "fp32": (_H["fp32 mult"] + _H["fp32 add"]) / 2,
        "fp16": (_H["fp16 mult"] + _H["fp16 add"]) / 2,
        "bf16": (_H["fp16 mult"] + _H["fp16 add"]) / 2,
    })
    dram_pj_per_byte: float = (_H["DRAM 64b read (low)"] + _H["DRAM 64b read (high)"]) / 2 / 8
    node: str = "45 nm (Horowitz, ISSCC 2014), unscaled"

    def to_dict(self) -> dict:
        return asdict(self)


HOROWITZ = EnergyTable()
