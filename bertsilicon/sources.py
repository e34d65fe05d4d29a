"""Where a command's model and texts come from: one resolver for every subcommand.

A model is given as ``--model SPEC``:

* nothing: the built-in all-MiniLM-L6-v2 (real weights);
* a student name of :data:`bertsilicon.STUDENTS` (only ``minilm-l6`` has real weights, the others are random);
* a Hugging Face or sentence-transformers directory (``config.json``, the weights, the tokenizer files);
* a saved optimized model (``bertsilicon.save``; ``bertsilicon.json`` in it), loaded by :func:`bertsilicon.load`.
  It holds no fp32 copy of the GEMM weights it replaced, so a command that compares against fp32 (bench,
  precision) asks for the Hugging Face directory it was made from instead.

Texts are given as ``--texts FILE``: ``.txt`` one text a line (blank lines skipped), or ``.jsonl`` / ``.csv`` /
``.parquet`` with a ``text`` field, read by :func:`bertsilicon.encode.inputs.read_rows`. Rows it cannot use are
skipped and counted on stderr, never dropped silently; a file with no text is an error.

Every mistake is a ``ValueError`` naming the option, the path and what was expected: the ``bertsilicon``
command prints it in one line and exits with status 2.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

BUILTIN_MODEL = "minilm-l6"
ARTIFACT_FILE = "bertsilicon.json"


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``: a student name (``path`` None) or a checked directory."""

    spec: str               # what was given (or the built-in name)
    path: Optional[Path]    # the model directory; None for a student built by bertsilicon.load_student
    artifact: bool          # a saved optimized model (bertsilicon.load)

    @property
    def name(self) -> str:
        """A short label without '/' (file names, tables)."""
        return self.spec if self.path is None else self.path.name


def model_source(spec: Optional[str], *, option: str = "--model", fp32_weights: bool = False) -> ModelSource:
    """Check ``spec`` (see the module docstring) without loading weights. ``fp32_weights``: the command needs
    the model's fp32 weights, so a saved optimized model is refused with a one-line reason."""
    from .encode.embedder import ModelError, model_dir
    from .models.students import STUDENTS

    if spec is None or spec in STUDENTS:
        return ModelSource(spec or BUILTIN_MODEL, None, False)
    try:
        path = model_dir(spec)
    except ModelError as exc:
        raise ValueError(f"{option} {spec}: {str(exc).split(': ', 1)[-1]}; or a student name "
                         "(bertsilicon.STUDENTS)") from None
    artifact = (path / ARTIFACT_FILE).is_file()
    if artifact and fp32_weights:
        raise ValueError(f"{option} {spec} is a saved optimized model: it holds no fp32 GEMM weights to compare "
                         "against; give the Hugging Face directory it was made from")
    return ModelSource(spec, path, artifact)


def load_model(source: ModelSource, option: str = "--model"):
    """The model of ``source``, fp32, in eval mode (a saved optimized model as it was saved)."""
    if source.path is None:
        from .models.students import load_student

        return load_student(source.spec)
    if source.artifact:
        from .models.artifact import load

        return load(source.path)
    import torch
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(source.path), local_files_only=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option} {source.spec}: cannot load it as a Hugging Face model "
                         f"({str(exc).splitlines()[0]})") from None


def load_tokenizer(source: ModelSource, option: str = "--model"):
    """The tokenizer of ``source`` (the students share the built-in uncased WordPiece)."""
    if source.path is None:
        from .models.students import load_tokenizer as builtin

        return builtin()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source.path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{option} {source.spec}: no tokenizer could be loaded from it "
                         f"({str(exc).splitlines()[0]})") from None


def resolve_model(spec: Optional[str], *, option: str = "--model", fp32_weights: bool = False):
    """``(model, tokenizer, source)`` of ``--model spec`` in one call."""
    source = model_source(spec, option=option, fp32_weights=fp32_weights)
    return load_model(source, option), load_tokenizer(source, option), source


def read_texts(file, *, option: str = "--texts", field: str = "text", limit: Optional[int] = None) -> list[str]:
    """The texts of ``file`` in file order (at most ``limit``); unusable rows are skipped and counted on stderr."""
    from .encode.inputs import InputError, read_rows

    path = Path(file)
    if path.is_dir():
        raise ValueError(f"{option} {file}: a directory; expected a file (.txt a text a line, .jsonl, .csv, .parquet)")
    try:
        rows = read_rows(path, field=field, skip_bad=True)
    except InputError as exc:
        raise ValueError(f"{option} {file}{str(exc).replace(f'input {path}', '', 1)}") from None
    blank = sum(1 for _, why in rows.skipped if why.endswith("is empty"))
    other = [(n, why) for n, why in rows.skipped if not why.endswith("is empty")]
    if other:
        n, why = other[0]
        print(f"{option} {file}: skipped {len(other)} unusable row(s) (first: row {n}: {why})", file=sys.stderr)
    if blank and path.suffix.lower() != ".txt":
        print(f"{option} {file}: skipped {blank} row(s) with an empty text", file=sys.stderr)
    return rows.texts[:limit] if limit else rows.texts
