"""Input readers of ``bertsilicon encode``: a corpus file -> :class:`Rows` (texts, ids, skipped rows).

* ``.txt``: one text per line (the line without its end-of-line characters).
* ``.jsonl``: one JSON object per line; the text is ``field``, the id ``id_field`` (optional).
* ``.csv``: a header row; the text is column ``field``, the id column ``id_field`` (optional).
* ``.parquet``: the text is column ``field`` (a string column), the id column ``id_field`` (optional).

A bad row (not valid JSON, not an object, the field missing, not a string, empty or only white space) is a
:class:`InputError` naming the file, the row and what was expected, unless ``skip_bad=True``: then it is
skipped, counted and listed in :attr:`Rows.skipped` (row number, reason), never dropped silently. Every check
runs before any model is loaded. Without ``id_field`` a text's id is its row number in the file (0-based,
skipped rows counted), so ids always point at input rows.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
DEFAULT_FIELD = "text"


class InputError(ValueError):
    """Bad input: the message names the file, the row or column, and what was expected."""


@dataclass
class Rows:
    """The texts of a corpus file in input order; ``ids[i]`` belongs to ``texts[i]`` (ints or strings)."""

    texts: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (row number, reason)

    def __len__(self) -> int:
        return len(self.texts)


def input_format(path: Path) -> str:
    """The reader a path's suffix selects (``txt | jsonl | csv | parquet``), or an :class:`InputError`."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"input {path}: unknown file type {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def require_pyarrow():
    """``pyarrow`` (parquet input and output), or an :class:`InputError` saying how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("parquet input or output needs pyarrow: pip install 'bertsilicon[parquet]'") from None
    return pyarrow


def fingerprint(path: Path) -> str:
    """sha256 of the file's bytes: what a resumed run checks it is reading the same input."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_rows(path, field: str = DEFAULT_FIELD, id_field: Optional[str] = None, skip_bad: bool = False) -> Rows:
    """Read and check every row of ``path`` (see the module docstring)."""
    path = Path(path)
    fmt = input_format(path)
    if not path.is_file():
        raise InputError(f"input {path}: no such file")
    if fmt == "txt" and id_field is not None:
        raise InputError(f"input {path}: a .txt file has no fields, so id_field={id_field!r} cannot be read; "
                         "use .jsonl, .csv or .parquet for ids")
    records = {"txt": _txt_records, "jsonl": _jsonl_records, "csv": _csv_records,
               "parquet": _parquet_records}[fmt](path, field, id_field)
    rows = Rows()
    for number, text, ident, problem in records:
        if problem is None:
            problem = _text_problem(text, field if fmt != "txt" else None)
        if problem is None and id_field is not None and (ident is None or isinstance(ident, (float, bool))):
            problem = f"id field {id_field!r} is missing or not an int / string (got {ident!r})"
        if problem is not None:
            if not skip_bad:
                raise InputError(f"input {path}, row {number}: {problem} (skip_bad / --skip-bad skips and counts "
                                 "such rows)")
            rows.skipped.append((number, problem))
            continue
        rows.texts.append(text)
        rows.ids.append(number if id_field is None else ident)
    if not rows.texts:
        what = "is empty" if not rows.skipped else f"has no good row ({len(rows.skipped)} skipped)"
        raise InputError(f"input {path} {what}: no text in it")
    if id_field is not None and len({type(i) for i in rows.ids}) > 1:
        raise InputError(f"input {path}: id field {id_field!r} mixes ints and strings; expected one type")
    return rows


def _text_problem(text, field_name: Optional[str]) -> Optional[str]:
    where = "the line" if field_name is None else f"field {field_name!r}"
    if not isinstance(text, str):
        return f"{where} is not a string (got {type(text).__name__})"
    if not text.strip():
        return f"{where} is empty"
    return None


def _txt_records(path: Path, field_name, id_field):
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n"), None, None
            except UnicodeDecodeError as exc:
                yield number, None, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"


def _jsonl_records(path: Path, field_name, id_field):
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield number, None, None, f"not valid JSON ({exc})"
                continue
            if not isinstance(obj, dict):
                yield number, None, None, f"expected a JSON object, got {type(obj).__name__}"
            elif field_name not in obj:
                yield number, None, None, f"field {field_name!r} is missing (fields: {', '.join(obj) or 'none'})"
            else:
                yield number, obj[field_name], obj.get(id_field) if id_field else None, None


def _csv_records(path: Path, field_name, id_field):
    with open(path, newline="", encoding="utf-8", errors="strict") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise InputError(f"input {path}: the header row is not UTF-8 ({exc.reason})") from None
        _require_columns(path, header, field_name, id_field)
        col, id_col = header.index(field_name), header.index(id_field) if id_field else None
        number = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as exc:
                raise InputError(f"input {path}, row {number}: unreadable ({exc})") from None
            if len(values) != len(header):
                yield number, None, None, f"{len(values)} values for {len(header)} columns"
            else:
                yield number, values[col], _csv_id(values[id_col]) if id_col is not None else None, None
            number += 1


def _csv_id(value: str):
    return int(value) if value.lstrip("-").isdigit() else (value or None)


def _parquet_records(path: Path, field_name, id_field):
    pa = require_pyarrow()
    pq = pa.parquet

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"input {path}: not a readable parquet file ({exc})") from None
    _require_columns(path, schema.names, field_name, id_field)
    kind = schema.field(field_name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"input {path}: column {field_name!r} has type {kind}; expected a string column")
    table = pq.read_table(path, columns=[field_name] + ([id_field] if id_field else []))
    texts = table.column(field_name).to_pylist()
    ids = table.column(id_field).to_pylist() if id_field else [None] * len(texts)
    for number, (text, ident) in enumerate(zip(texts, ids)):
        yield number, text, ident, None


def _require_columns(path: Path, names, field_name, id_field) -> None:
    for name, arg in ((field_name, "field"), (id_field, "id_field")):
        if name is not None and name not in names:
            raise InputError(f"input {path}: no column {name!r} ({arg}); columns: {', '.join(names) or 'none'}")
