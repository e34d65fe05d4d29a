"""The recipes study's data: the hard-label twin's labelled subset and the distilled student's transfer set."""
from __future__ import annotations

import pytest

from bertsilicon.distill.recipes import Settings, labelled_subset, selected_recipes, transfer_set
from bertsilicon.tasks import Split

SPLIT = Split(tuple(f"text {i}" for i in range(23)), tuple(i % 3 if i < 20 else 2 for i in range(23)))


def test_transfer_set_keeps_every_text_and_the_subsets_labels_only():
    labelled, transfer = labelled_subset(SPLIT, 0.25), transfer_set(SPLIT, 0.25)
    # per class, the first ceil(0.25 n_c) texts in the split's order: class 0 (7 texts) -> 2, 1 (7) -> 2, 2 (9) -> 3
    assert labelled.texts == ("text 0", "text 1", "text 2", "text 3", "text 4", "text 5", "text 8")
    assert transfer.texts == SPLIT.texts
    kept = {x: y for x, y in zip(transfer.texts, transfer.labels) if y is not None}
    assert kept == dict(zip(labelled.texts, labelled.labels))
    assert all(SPLIT.labels[i] == y for i, y in enumerate(transfer.labels) if y is not None)
    with pytest.raises(ValueError, match="label_fraction must be in"):
        transfer_set(SPLIT, 0.0)


def test_recipe_overrides_are_checked():
    assert selected_recipes(Settings(recipes=("hinton",), overrides={"temperature": 1.0}))["hinton"].temperature == 1.0
    with pytest.raises(ValueError, match="overrides \\['student'\\] are not recipe settings"):
        selected_recipes(Settings(overrides={"student": "bilstm"}))
    with pytest.raises(ValueError, match="recipes \\['bert'\\] are unknown"):
        selected_recipes(Settings(recipes=("bert",)))
    with pytest.raises(ValueError, match="eval_split must be 'dev' or 'test'"):
        selected_recipes(Settings(eval_split="train"))
