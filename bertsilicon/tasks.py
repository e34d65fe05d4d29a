"""Labelled real tasks built from the shipped CPython text (nothing is downloaded), with fixed splits.

    from bertsilicon.tasks import task
    t = task("docstring-module")
    t.train.texts, t.train.labels      # list[str], list[int] (indices into t.label_names)
    t.dev, t.test                      # the same; no text occurs in two splits
    t.label_names                      # ("asyncio", "ast", ...): label i is the module label_names[i]

``"docstring-module"``: which standard-library module a docstring paragraph comes from. Texts: the first
paragraphs (at least :data:`MIN_CHARS` characters) of the docstrings of every module in
``bertsilicon.data.DOCSTRING_MODULES`` and ``TRAIN_DOCSTRING_MODULES``; a text that occurs under two
modules is dropped (its label would be ambiguous), a repeated text is kept once. Classes: the modules with
at least :data:`MIN_PER_CLASS` texts (41 modules on CPython 3.12). Splits, per class: the texts ordered by
the SHA-256 of their UTF-8 bytes, then 3 of every 5 to train, 1 to dev, 1 to test — stratified, and a pure
function of the texts, so the splits are the same on every run of one Python version.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

TASKS = ("docstring-module",)
MIN_CHARS = 40
MIN_PER_CLASS = 25
SPLITS = ("train", "dev", "test")
_SPLIT_OF_POSITION = ("train", "train", "train", "dev", "test")  # position mod 5 in the hash order


@dataclass(frozen=True)
class Split:
    """One split: ``texts[i]`` has label ``labels[i]`` (an index into the task's ``label_names``)."""

    texts: tuple
    labels: tuple

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Task:
    """A labelled task: name, class names and the three fixed splits."""

    name: str
    label_names: tuple
    train: Split
    dev: Split
    test: Split

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is unknown; expected one of {SPLITS}")
        return getattr(self, name)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=None)
def _docstring_module() -> Task:
    from .data import corpus

    modules_of = defaultdict(set)
    for name in ("docstrings", "docstrings-train"):
        c = corpus(name, min_chars=MIN_CHARS)
        for text, module in zip(c.texts, c.labels):
            modules_of[text].add(module)
    by_module = defaultdict(list)
    for text, modules in modules_of.items():
        if len(modules) == 1:
            by_module[next(iter(modules))].append(text)
    counts = Counter({m: len(texts) for m, texts in by_module.items()})
    label_names = tuple(sorted(m for m, n in counts.items() if n >= MIN_PER_CLASS))
    parts = {s: ([], []) for s in SPLITS}
    for label, module in enumerate(label_names):
        for position, text in enumerate(sorted(by_module[module], key=_digest)):
            texts, labels = parts[_SPLIT_OF_POSITION[position % len(_SPLIT_OF_POSITION)]]
            texts.append(text)
            labels.append(label)
    return Task("docstring-module", label_names,
                *(Split(tuple(parts[s][0]), tuple(parts[s][1])) for s in SPLITS))


def task(name: str = "docstring-module") -> Task:
    """The labelled task ``name`` (one of :data:`TASKS`); see the module docstring."""
    if name == "docstring-module":
        return _docstring_module()
    raise ValueError(f"task {name!r} is unknown; expected one of {TASKS}")


__all__ = ["TASKS", "Task", "Split", "task", "SPLITS"]
