"""Every provider a run can pick, in one list: the engines of ``providers`` and the peers of ``peers`` (and
``llama``), bertsilicon's own rows last. Selection by name and precision."""
from __future__ import annotations

from typing import Optional

from .llama import LLAMA_PROVIDERS
from .peers import PEERS
from .providers import BASELINE, BUILTIN_PROVIDERS, PRECISIONS, Provider

PROVIDERS: tuple[Provider, ...] = (
    *(p for p in BUILTIN_PROVIDERS if p.name != "bertsilicon"),
    *PEERS,
    *LLAMA_PROVIDERS,
    *(p for p in BUILTIN_PROVIDERS if p.name == "bertsilicon"),
)
PROVIDER_NAMES = tuple(dict.fromkeys(p.name for p in PROVIDERS))


def provider(key: str) -> Provider:
    """The provider ``"name precision"`` (e.g. ``"ctranslate2 int8"``); ``ValueError`` lists the valid keys."""
    for p in PROVIDERS:
        if p.key == key:
            return p
    raise ValueError(f"provider {key!r} is unknown; expected one of: {', '.join(p.key for p in PROVIDERS)}")


def select_providers(names: Optional[list[str]] = None, precisions: Optional[list[str]] = None) -> list[Provider]:
    """The providers matching ``names`` x ``precisions`` (None = all), in the canonical order; the baseline
    (torch-sdpa fp32) is always included, since every speed-up is quoted against it. Unknown names raise
    ``ValueError`` listing the valid ones."""
    names = list(PROVIDER_NAMES) if names is None else list(names)
    precisions = list(PRECISIONS) if precisions is None else list(precisions)
    bad = [n for n in names if n not in PROVIDER_NAMES]
    if bad:
        raise ValueError(f"providers: unknown {', '.join(map(repr, bad))}; expected any of: {', '.join(PROVIDER_NAMES)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"precisions: unknown {', '.join(map(repr, bad))}; expected any of: {', '.join(PRECISIONS)}")
    chosen = [p for p in PROVIDERS if p.name in names and p.precision in precisions]
    if not chosen:
        offered = ", ".join(p.key for p in PROVIDERS if p.name in names)
        raise ValueError(f"providers {names} offer no precision among {precisions}; they offer: {offered}")
    return [p for p in PROVIDERS if p in chosen or (p.name, p.precision) == BASELINE]
