"""encode's input readers and token-budget batcher: every format, ids, bad rows (error or counted skip), budgets."""
import json
import random

import pytest

from bertsilicon.encode.batching import check_budget, token_budget_batches
from bertsilicon.encode.inputs import InputError, read_rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = ["first text", "second, with a comma", 'third "quoted"', "fourth\twith a tab", "fifth é ü"]


def _write(tmp_path, fmt, texts=TEXTS, ids=None):
    path = tmp_path / f"in.{fmt}"
    if fmt == "txt":
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif fmt == "jsonl":
        rows = [{"text": t, **({"id": i} if ids else {})} for t, i in zip(texts, ids or texts)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            for t, i in zip(texts, ids or range(len(texts))):
                w.writerow([i, t])
    else:
        cols = {"text": pa.array(texts, pa.string())}
        if ids:
            cols["id"] = pa.array(ids)
        pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_every_format_reads_texts_in_order(tmp_path, fmt):
    rows = read_rows(_write(tmp_path, fmt))
    assert rows.texts == TEXTS
    assert rows.ids == list(range(len(TEXTS)))  # no id field: the row number
    assert rows.skipped == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("ids", [[10, 7, 3, 99, 5], ["a", "b", "c", "d", "e"]])
def test_ids_are_kept(tmp_path, fmt, ids):
    rows = read_rows(_write(tmp_path, fmt, ids=ids), id_field="id")
    assert rows.ids == ids
    assert rows.texts == TEXTS


def test_missing_column_is_an_error_naming_it(tmp_path):
    for fmt in ("csv", "parquet"):
        path = _write(tmp_path, fmt)
        with pytest.raises(InputError, match=r"no column 'body' \(field\); columns: .*text"):
            read_rows(path, field="body")
    with pytest.raises(InputError, match="row 0: field 'body' is missing"):
        read_rows(_write(tmp_path, "jsonl"), field="body")


def test_empty_file_and_unknown_type_and_missing_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="empty.txt is empty"):
        read_rows(tmp_path / "empty.txt")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(InputError, match="unknown file type '.xml'"):
        read_rows(tmp_path / "x.xml")
    with pytest.raises(InputError, match="no such file"):
        read_rows(tmp_path / "absent.jsonl")
    with pytest.raises(InputError, match="has no fields"):
        read_rows(_write(tmp_path, "txt"), id_field="id")


def test_bad_rows_are_an_error_or_a_counted_skip(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": "good one"}), "{not json", json.dumps({"text": 3}), json.dumps(["a list"]),
             json.dumps({"text": "   "}), json.dumps({"other": "x"}), json.dumps({"text": "good two"})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl, row 1: not valid JSON"):
        read_rows(path)
    rows = read_rows(path, skip_bad=True)
    assert rows.texts == ["good one", "good two"]
    assert rows.ids == [0, 6]  # ids still point at input rows
    assert [n for n, _ in rows.skipped] == [1, 2, 3, 4, 5]
    reasons = " | ".join(r for _, r in rows.skipped)
    for needle in ("not valid JSON", "not a string", "expected a JSON object", "is empty", "is missing"):
        assert needle in reasons


def test_undecodable_line_and_only_bad_rows(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("fine\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="row 1: not UTF-8"):
        read_rows(path)
    assert read_rows(path, skip_bad=True).texts == ["fine"]
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(InputError, match=r"no good row \(2 skipped\)"):
        read_rows(tmp_path / "blank.txt", skip_bad=True)


def test_parquet_non_string_column_and_mixed_ids(tmp_path):
    path = tmp_path / "num.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2])}), path)
    with pytest.raises(InputError, match="column 'text' has type int64; expected a string column"):
        read_rows(path)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text": "a", "id": 1}) + "\n" + json.dumps({"text": "b", "id": "x"}) + "\n")
    with pytest.raises(InputError, match="mixes ints and strings"):
        read_rows(mixed, id_field="id")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_budget_batches_cover_each_index_once_within_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 300) for _ in range(rng.randint(1, 400))]
    budget = rng.choice([256, 700, 4096])
    batches = token_budget_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))                      # every window exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)                  # shortest first
    for b in batches:
        assert sum(lengths[i] for i in b) <= budget or len(b) == 1
    for a, b in zip(batches, batches[1:]):                                 # filled: the next one did not fit
        assert sum(lengths[i] for i in a) + lengths[b[0]] > budget


def test_budget_must_hold_one_window():
    assert check_budget(512, 256) == 512
    for bad in (100, 0, True, 512.0):
        with pytest.raises(ValueError, match="max_batch_tokens must be an int >= the model's max_length"):
            check_budget(bad, 256)
