"""The user's own model and texts in every subcommand (bertsilicon.sources), partial results written as a run
goes, and the run-time estimate printed before it starts. Small random models saved to tmp dirs; no timer."""
import json
import re

import pytest
import torch

from bertsilicon import cli, sources
from bertsilicon.benchmark import cli as bench_cli
from bertsilicon.models.students import load_tokenizer

TEXTS = ["Short one.", "A tiny second text.", "", "The quick brown fox jumps over the lazy dog near the river bank.",
         "A fourth text, of middling length, about parsing command lines.",
         "Fourth: the cache is invalidated when the file changes.", "Fifth and last line of the file."]


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A random 2-layer BERT (not any built-in shape) saved with the uncased tokenizer, as a user's directory."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=80, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("models") / "my-bert"
    model = BertModel(config).eval()
    model.save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


@pytest.fixture()
def texts_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def _kept():
    return [t for t in TEXTS if t.strip()]


# ------------------------------------------------------------------------------------------------ #
# the resolver                                                                                       #
# ------------------------------------------------------------------------------------------------ #
def test_resolver_loads_the_users_directory_and_texts(user_model, texts_file, tmp_path):
    path, n_params = user_model
    model, tok, source = sources.resolve_model(str(path))
    assert source.name == "my-bert" and not source.artifact
    assert sum(p.numel() for p in model.parameters()) == n_params and model.config.hidden_size == 48
    assert tok("hello world")["input_ids"] == load_tokenizer()("hello world")["input_ids"]
    assert sources.read_texts(texts_file) == _kept()  # file order, the blank line skipped
    assert sources.read_texts(texts_file, limit=2) == _kept()[:2]
    rows = tmp_path / "mine.jsonl"
    rows.write_text("\n".join(json.dumps({"text": t}) for t in _kept()))
    assert sources.read_texts(rows) == _kept()


def test_a_saved_optimized_model_is_refused_where_fp32_weights_are_needed(user_model, tmp_path):
    import bertsilicon

    path, _ = user_model
    model, tok, _ = sources.resolve_model(str(path))
    saved = bertsilicon.save(bertsilicon.optimize(model, "fp32"), tmp_path / "artifact", tokenizer=tok)
    assert sources.model_source(str(saved)).artifact
    loaded = sources.load_model(sources.model_source(str(saved)))
    ids = torch.tensor([[101, 7592, 2088, 102]])
    assert torch.equal(loaded(input_ids=ids).last_hidden_state, loaded(input_ids=ids).last_hidden_state)
    with pytest.raises(ValueError, match="saved optimized model: it holds no fp32 GEMM weights"):
        sources.model_source(str(saved), fp32_weights=True)


@pytest.mark.parametrize("command", [["bench", "--no-plots", "--quiet"], ["precision"], ["demo"],
                                     ["distill", "--steps", "1"], ["profile", "--optimized"], ["finetune"]])
def test_every_subcommand_gives_one_line_errors_for_models_and_texts(command, tmp_path, capsys):
    not_a_model = tmp_path / "empty-dir"
    not_a_model.mkdir()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")

    def error(*args):
        argv = [*command, *args, "--out", str(tmp_path / "out")] if command[0] != "profile" else [*command, *args]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error" in line.lower()]  # (progress bars aside)
        assert "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith(f"bertsilicon {command[0]}: error: "), err
        return lines[0]

    model_option = [] if command[0] == "profile" else ["--model"]
    assert "not a directory" in error(*model_option, str(tmp_path / "missing"))
    assert "no config.json" in error(*model_option, str(not_a_model))
    if command[0] not in ("profile", "finetune"):  # shapes / a labelled task: no texts file
        assert f"--texts {empty} has no good row" in error("--texts", str(empty))
        assert "no such file" in error("--texts", str(tmp_path / "nope.txt"))
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are checked


# ------------------------------------------------------------------------------------------------ #
# bench and precision on the user's model and texts, partial results, the estimate                  #
# ------------------------------------------------------------------------------------------------ #
def test_bench_runs_the_users_model_on_their_texts_writing_partial_results(user_model, texts_file, tmp_path,
                                                                           capsys):
    path, n_params = user_model
    out = tmp_path / "bench"
    args = bench_cli.build_parser().parse_args(
        ["--model", str(path), "--texts", str(texts_file), "--batch-size", "2", "--seq-len", "8,12",
         "--providers", "torch-sdpa,bertsilicon", "--precisions", "fp32", "--threads", "1", "--repeats", "1",
         "--warmup", "0", "--accuracy-texts", "3", "--no-plots", "--quiet", "--out", str(out)])
    seen = []

    def after_config(paths, result):  # the files on disk right after the first configuration
        seen.append((json.loads(paths["json"].read_text()), paths["md"].read_text()))

    threads = torch.get_num_threads()
    try:
        assert bench_cli.bench(args, after_config=after_config) == 0
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1  # two configurations (max length 8, 12): one partial write before the last
    partial, md = seen[0]
    assert partial["partial"] == {"done": 1, "total": 2} and {r["seq"] for r in partial["rows"]} == {8}
    assert "Partial results: 1 of 2" in md
    final = json.loads((out / "e2e.json").read_text())
    assert "partial" not in final and {r["seq"] for r in final["rows"]} == {8, 12}
    tok = load_tokenizer()
    for row in final["rows"]:
        assert row["model"] == "my-bert" and row["params_m"] == round(n_params / 1e6, 2)
        longest = max(len(tok(t, truncation=True, max_length=row["seq"])["input_ids"]) for t in _kept()[:2])
        assert row["padded_shape"] == [2, longest] and longest < 8  # the file's first two (short) texts are timed
        assert row["status"] == "ok" and row["cos_mean"] > 0.9999
    err = capsys.readouterr().err
    assert "bench: 2 configuration(s); estimated time ~" in err
    assert "bench: the first configuration took" in err and "more for the other 1" in err


def test_precision_runs_the_users_model_on_their_texts_writing_partial_results(user_model, texts_file, tmp_path,
                                                                               monkeypatch, capsys):
    from bertsilicon.precision import experiment

    path, _ = user_model
    texts = [f"{i}: {t}" for i in range(3) for t in _kept()]  # 15: more than the top-10 overlap needs
    texts_file.write_text("\n".join(texts))
    written, write_report = [], experiment.write_report

    def spy(result, out_dir, stem="precision", plot=True):
        paths = write_report(result, out_dir, stem, plot=plot)
        written.append(json.loads(paths["json"].read_text())["meta"].get("partial"))
        return paths

    monkeypatch.setattr(experiment, "write_report", spy)
    out = tmp_path / "precision"
    assert cli.main(["precision", "--model", str(path), "--texts", str(texts_file), "--sentences", "0",
                     "--formats", "fp32,bf16", "--rounding", "nearest", "--where", "weights", "--bootstrap", "20",
                     "--seq-len", "16", "--out", str(out), "--stem", "mine"]) == 0
    assert written == [{"done": 1, "total": 2}, None]  # after the first configuration, then the whole run
    result = json.loads((out / "mine.json").read_text())
    assert result["meta"]["model"] == "my-bert" and result["meta"]["texts"] == len(texts)
    assert result["meta"]["labels"] is None and "knn_accuracy" not in result["runs"][1]["metrics"]
    bf16 = result["runs"][1]["metrics"]["cosine"]["mean"]
    assert 0.99 < bf16 < 1.0  # bf16 weights move the embeddings, a little
    err = capsys.readouterr().err
    texts_file.write_text("\n".join(texts[:11]))
    assert cli.main(["precision", "--model", str(path), "--texts", str(texts_file), "--out", str(out)]) == 2
    assert "11 texts; the top-10 retrieval overlap needs at least 12" in capsys.readouterr().err
    assert "precision: 2 configuration(s); estimated time ~" in err and "precision: the first configuration" in err


def test_calibration_writes_partial_sections_and_estimates(tmp_path, capsys, monkeypatch):
    from bertsilicon.profiler import calibration

    path = tmp_path / "cal.json"
    snapshots = []
    from bertsilicon import runlog

    class Watching(runlog.RunClock):
        def finished(self):
            super().finished()
            part = calibration.partial_path(path)
            snapshots.append(sorted(json.loads(part.read_text())) if part.exists() else None)

    monkeypatch.setattr(runlog, "RunClock", Watching)
    monkeypatch.setattr(calibration, "_timer", lambda *_: lambda fn: (fn(), 1e-3)[1])  # what is written, not rates
    rec = calibration.calibrate(quick=True, path=path, progress=False)
    assert "gemm_curve" in snapshots[1] and "attention_curve" not in snapshots[1]  # written after the first section
    assert "bandwidth" in snapshots[-2]
    assert not calibration.partial_path(path).exists() and rec["gemm_curve"]
    err = capsys.readouterr().err
    assert re.search(r"calibration: [67] section\(s\); estimated time ~", err)  # 7 with the C++ kernels built
    assert "calibration: the first section took" in err


def test_the_clock_refines_from_the_first_configuration():
    import io

    from bertsilicon.runlog import RunClock, duration

    stream = io.StringIO()
    clock = RunClock("job", [1, 3], prior_s_per_weight=10.0, stream=stream)
    clock.start()
    assert "~40 s" in stream.getvalue()
    clock.started -= 5.0  # as if the first configuration (weight 1) took 5 s: the other (weight 3) ~15 s
    clock.finished()
    assert "about 15 s more for the other 1" in stream.getvalue()
    assert duration(5400) == "1.5 h" and duration(150) == "2.5 min"
    with pytest.raises(ValueError, match="positive"):
        RunClock("job", [], 1.0)


def test_finetune_puts_the_head_on_the_users_model(user_model, tmp_path, capsys):
    from transformers import AutoConfig

    path, _ = user_model
    out = tmp_path / "teacher"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["finetune", "--model", str(path), "--steps", "1", "--batch-size", "4", "--seq-len", "12",
                         "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    saved = AutoConfig.from_pretrained(out)
    assert saved.hidden_size == 48 and saved.num_hidden_layers == 2 and saved.num_labels > 2
    assert cli.main(["finetune", "--model", "tinybert4", "--out", str(out)]) == 2
    assert "a student without pretrained weights" in capsys.readouterr().err
