"""`bertsilicon finetune` / `distill-task` end to end (1 step each, short texts), design -> distill."""
from __future__ import annotations

import json

import pytest

import bertsilicon as bs
from bertsilicon.cli import build_parser, main
from bertsilicon.distill.layer_maps import student_from_design, student_from_spec
from bertsilicon.profiler.arch import arch_from_config
from test_distill_losses import one_thread  # noqa: F401  (autouse: small models run on one thread)


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    path = tmp_path_factory.mktemp("design") / "front.json"
    bs.design.explore(hardware="t4", seq_len=64, precision="fp16", latency_budget=1.0, layers=(2, 3),
                      hidden=(256, 384)).to_json(path)
    return path


def test_design_front_entries_are_student_specs(front):
    names = [c["name"] for c in json.loads(front.read_text())["front"]]
    for pick, name in enumerate(names):
        spec = student_from_design(front, pick)
        assert spec == name.split(" / ")[0]
        a = arch_from_config(student_from_spec(spec))  # the shape the explorer priced
        got = json.loads(front.read_text())["front"][pick]
        assert (a.layers, a.hidden, a.heads, a.intermediate) == (got["layers"], got["hidden"], got["heads"],
                                                                  got["intermediate"])
    with pytest.raises(ValueError, match=r"--pick 99 is outside the front"):
        student_from_design(front, 99)
    with pytest.raises(ValueError, match="does not exist"):
        student_from_design(front.parent / "missing.json", 0)


def test_distill_accepts_from_design(front):
    args = build_parser().parse_args(["distill", "--from-design", str(front), "--pick", "1"])
    assert (args.from_design, args.pick) == (str(front), 1)


def test_finetune_then_distill_task(tmp_path, capsys):
    common = ["--steps", "1", "--batch-size", "4", "--max-length", "12", "--threads", "1"]
    assert main(["finetune", *common, "--out", str(tmp_path / "teacher"), "--json", str(tmp_path / "t.json")]) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert set(t["accuracy"]) == {"dev", "test"} and 0 <= t["accuracy"]["test"] <= 1
    assert main(["distill-task", *common, "--teacher", str(tmp_path / "teacher"), "--student", "L1-H64-A2-F128",
                 "--losses", "label_ce=0.5,soft_target=0.5", "--json", str(tmp_path / "s.json"),
                 "--out", str(tmp_path / "student")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["student"] == "L1-H64-A2-F128" and 0 <= s["accuracy"]["test"] <= 1
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "student"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "student"))
    acc = bs.distill.task.accuracy(loaded, tok, bs.tasks.task("docstring-module").test, max_length=12)
    assert acc == pytest.approx(s["accuracy"]["test"], abs=1e-12)  # the same weights the run evaluated
    assert loaded.config.id2label[0] == bs.tasks.task("docstring-module").label_names[0]
    assert "accuracy: dev" in capsys.readouterr().out
    small = tmp_path / "front.json"  # design -> distill end to end: the explorer's entry 0 trained and evaluated
    res = bs.design.explore(hardware="avx512", seq_len=16, layers=(1, 2), hidden=(64, 128), include_named=False)
    res.to_json(small)
    assert main(["distill-task", *common, "--teacher", str(tmp_path / "teacher"), "--from-design", str(small),
                 "--pick", "0", "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["student"] == res.front[0].name
    assert main(["distill-task", *common, "--losses", "soft_target"]) == 2  # a user's mistake: one line, status 2
    assert "need --teacher" in capsys.readouterr().err
    with pytest.raises(ValueError, match="need --teacher"):
        main(["--debug", "distill-task", *common, "--losses", "soft_target"])
