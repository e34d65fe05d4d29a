"""The labelled task: fixed, stratified, disjoint splits of real text."""
import hashlib
from collections import Counter

import pytest

from bertsilicon.data import corpus
from bertsilicon.tasks import MIN_CHARS, MIN_PER_CLASS, task


@pytest.fixture(scope="module")
def t():
    return task("docstring-module")


def test_no_text_crosses_splits(t):
    sets = [set(s.texts) for s in (t.train, t.dev, t.test)]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    for s, unique in zip((t.train, t.dev, t.test), sets):
        assert len(unique) == len(s.texts)  # no text twice inside a split either


def test_at_least_20_classes_each_in_every_split(t):
    assert t.num_labels >= 20
    for s in (t.train, t.dev, t.test):
        assert len(s.texts) == len(s.labels)
        assert set(s.labels) == set(range(t.num_labels))
        assert all(isinstance(x, str) and len(x) >= MIN_CHARS for x in s.texts)


def test_labels_are_the_source_modules(t):
    """Every text carries the module it was collected from (recomputed here from the corpora)."""
    source = {}
    for name in ("docstrings", "docstrings-train"):
        c = corpus(name, min_chars=MIN_CHARS)
        for text, module in zip(c.texts, c.labels):
            source.setdefault(text, set()).add(module)
    for s in (t.train, t.dev, t.test):
        for text, label in zip(s.texts, s.labels):
            assert source[text] == {t.label_names[label]}


def test_split_sizes_are_stratified_3_1_1(t):
    n = Counter(t.train.labels), Counter(t.dev.labels), Counter(t.test.labels)
    for label in range(t.num_labels):
        total = n[0][label] + n[1][label] + n[2][label]
        assert total >= MIN_PER_CLASS
        assert n[0][label] == 3 * (total // 5) + min(total % 5, 3)
        assert n[2][label] == total // 5


def test_split_is_a_function_of_the_text(t):
    """Within a class, the hash order decides: the first text of the class by SHA-256 is in train."""
    for label in range(t.num_labels):
        texts = [x for s in (t.train, t.dev, t.test) for x, y in zip(s.texts, s.labels) if y == label]
        first = min(texts, key=lambda x: hashlib.sha256(x.encode()).hexdigest())
        assert first in t.train.texts


def test_bad_names():
    with pytest.raises(ValueError, match="task 'nope' is unknown"):
        task("nope")
    with pytest.raises(ValueError, match="split 'val' is unknown"):
        task().split("val")


def test_splits_do_not_depend_on_what_the_process_imported():
    """transformers adds methods to logging.Logger; the task must not pick their docstrings up (nor any other
    package's additions to a standard-library class), so every process sees the same splits."""
    import subprocess
    import sys

    code = ("import sys, hashlib\n"
            "if sys.argv[1] == 'after': import transformers, logging; assert hasattr(logging.Logger, 'warning_once')\n"
            "from bertsilicon.tasks import task\n"
            "t = task('docstring-module')\n"
            "print(hashlib.sha256(repr([(s.texts, s.labels) for s in (t.train, t.dev, t.test)]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, when], capture_output=True, text=True, check=True).stdout
               for when in ("bare", "after")}
    assert len(digests) == 1
