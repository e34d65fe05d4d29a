"""Hardware by name: the datasheet table (:mod:`.hardware`) and ``"local"``, this machine as calibrated
(:mod:`.calibration`)."""
from __future__ import annotations

from typing import List

from .calibration import local_hardware
from .hardware import _ALIASES, HARDWARE, Hardware


def known_hardware() -> List[str]:
    return [*HARDWARE, "local"]


def get_hardware(hardware) -> Hardware:
    """A :class:`Hardware` by name (case-insensitive; aliases such as ``h100-sxm``, ``avx2``), ``"local"``
    (this machine's CPU, from the stored calibration — measured now if there is none), or a
    :class:`Hardware` instance (returned as is)."""
    if isinstance(hardware, Hardware):
        return hardware
    if not isinstance(hardware, str):
        raise TypeError(f"hardware must be a str or Hardware, got {type(hardware).__name__}")
    key = hardware.strip().lower()
    if key == "local":
        return local_hardware()
    key = _ALIASES.get(key, key)
    if key not in HARDWARE:
        aliases = ", ".join(f"{a} (= {n})" for a, n in _ALIASES.items())
        raise ValueError(f"hardware {hardware!r} is unknown; known: {', '.join(known_hardware())}; aliases: {aliases}")
    return HARDWARE[key]
