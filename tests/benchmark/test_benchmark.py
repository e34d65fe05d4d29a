"""The end-to-end benchmark harness (bertsilicon.benchmark): argument validation, a tiny real run that writes
JSON/Markdown/PNG, skipped-provider reporting, interleaving order, target ratios, README regeneration.
No timer is asserted: only structure, call order and accuracy figures."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from bertsilicon.benchmark import BenchConfig, run_bench, select_providers
from bertsilicon.benchmark import catalog
from bertsilicon.benchmark import cli as bench_cli
from bertsilicon.benchmark import providers as prov
from bertsilicon.benchmark import report, runner

ROOT = Path(__file__).resolve().parents[2]
TINY = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 96}


def _tiny_config(**kw):
    base = dict(models=["bert-L2-H128"], model_overrides={"bert-L2-H128": TINY}, batches=[3], seqs=[24],
                providers=["torch-sdpa", "torch-int8", "onnxruntime", "bertsilicon"], precisions=["fp32", "int8"],
                threads=1, repeats=1, warmup=0, min_sample_s=0.0, accuracy_texts=5, accuracy_batch=2,
                note="test run")
    base.update(kw)
    return BenchConfig(**base)


# ------------------------------------------------------------------------------------------------ #
# bad input                                                                                          #
# ------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize("field, value, named, listed", [
    ("models", ["minilm-l6", "bert-huge"], "models: unknown 'bert-huge'", "tinybert4"),
    ("providers", ["torch", "onnxruntime"], "providers: unknown 'torch'", "torch-compile"),
    ("precisions", ["fp32", "int4"], "precisions: unknown 'int4'", "bf16"),
    ("batches", [8, 0], "batch:", "positive integers"),
    ("seqs", [1024], "seq:", "512"),
    ("padding", "right", "padding: unknown 'right'", "max_length"),
    ("corpus", "wikipedia", "corpus: unknown 'wikipedia'", "docstrings"),
])
def test_unknown_choices_list_the_valid_ones(field, value, named, listed):
    with pytest.raises(ValueError) as err:
        BenchConfig(**{field: value}).validate()
    assert named in str(err.value) and listed in str(err.value)


def test_provider_precision_combination_without_any_match():
    with pytest.raises(ValueError, match="torch-int8 int8"):
        select_providers(["torch-int8"], ["fp32"])


def test_selection_keeps_the_baseline_and_canonical_order():
    chosen = [p.key for p in select_providers(["onnxruntime", "bertsilicon"], ["int8"])]
    assert chosen == ["torch-sdpa fp32", "onnxruntime int8", "bertsilicon int8"]
    assert len(select_providers()) == 23  # torch 5, onnxruntime 5, openvino 4, ctranslate2 4, llama.cpp 1, bertsilicon 4


def test_cli_rejects_unknown_model_with_the_list(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_cli.main(["--models", "minilm-l6,nope", "--out", "unused"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "distilbert" in err and "bert-base" in err


def test_cli_rejects_malformed_batch(capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(["--batch", "1,eight"])
    assert "integers" in capsys.readouterr().err


def test_quick_defaults_and_explicit_overrides():
    args = bench_cli.build_parser().parse_args(["--quick", "--batch", "4", "--threads", "1"])
    cfg = bench_cli.config_from_args(args)
    assert cfg.quick and cfg.models == ["minilm-l6"] and cfg.batches == [4] and cfg.threads == 1
    assert cfg.repeats < BenchConfig().repeats
    full = bench_cli.config_from_args(bench_cli.build_parser().parse_args([]))
    assert full.models == ["minilm-l6", "tinybert4", "distilbert", "bert-base"] and full.batches == [1, 8, 32]


# ------------------------------------------------------------------------------------------------ #
# method                                                                                             #
# ------------------------------------------------------------------------------------------------ #
def test_rounds_are_interleaved_and_rotated():
    calls = []
    runners = {k: (lambda b, k=k: calls.append(k)) for k in "ABC"}
    cfg = BenchConfig(repeats=3, warmup=1, min_sample_s=0.0)
    timed = runner.time_interleaved(runners, batch=None, cfg=cfg)
    # warm-up + probe per provider, then rounds A B C / B C A / C A B
    assert calls == list("AABBCC") + list("ABC") + list("BCA") + list("CAB")
    assert all(len(t["samples"]) == 3 and t["inner"] == 1 for t in timed.values())


def test_a_runner_that_raises_is_reported_not_fatal():
    def broken(b):
        raise RuntimeError("kernel exploded")
    calls = []

    def breaks_in_round_two(b):
        calls.append(b)
        if len(calls) == 3:  # probe, round 1, then round 2 fails
            raise RuntimeError("out of memory")
    timed = runner.time_interleaved({"ok": lambda b: None, "bad": broken, "late": breaks_in_round_two}, None,
                                    BenchConfig(repeats=4, warmup=0, min_sample_s=0.0))
    assert "kernel exploded" in timed["bad"]["error"] and "out of memory" in timed["late"]["error"]
    assert len(timed["ok"]["samples"]) == 4 and len(calls) == 3


def test_embedding_cosine_matches_a_float64_hand_computation():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 7, 26, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    batch = prov.Batch(torch.ones(3, 7, dtype=torch.int64), mask)
    noisy = hidden + 0.3 * torch.randn(3, 7, 26, generator=g)
    emb, ref = runner.embed(lambda b: noisy, [batch]), runner.embed(lambda b: hidden, [batch])
    want = []
    for i, n in enumerate(mask.sum(1).tolist()):
        a, b = noisy[i, :n].double().mean(0), hidden[i, :n].double().mean(0)
        want.append(float(a @ b / (a.norm() * b.norm())))
    mean, low = runner.cosine_stats(emb, ref)
    assert mean == pytest.approx(sum(want) / 3, abs=1e-6) and low == pytest.approx(min(want), abs=1e-6)
    assert low < 0.999  # the padded positions (huge noise there too) must not count


def test_target_ratios_and_verdicts():
    def row(provider, precision, ms, status="ok", cos=0.9999, batch=8):
        return {"model": "minilm-l6", "batch": batch, "seq": 128, "provider": provider, "precision": precision,
                "status": status, "latency_ms": {"median": ms} if ms else None, "cos_mean": cos}
    result = {"config": {"threads": 2}, "rows": [
        row("torch-sdpa", "fp32", 100.0), row("bertsilicon", "fp32", 80.0),
        row("torch-sdpa", "bf16", 200.0), row("bertsilicon", "bf16", 190.0),
        row("onnxruntime", "int8", None, "skipped"), row("bertsilicon", "int8", 30.0),
        row("torch-sdpa", "bf16", 200.0, batch=1), row("bertsilicon", "bf16", 50.0, cos=0.2, batch=1)]}
    targets = runner.target_ratios(result)
    t = {x["ours"]: x for x in targets if x["batch"] == 8}
    assert t["bertsilicon fp32"]["ratio"] == pytest.approx(0.8) and t["bertsilicon fp32"]["verdict"] == "meets"
    assert t["bertsilicon bf16"]["ratio"] == pytest.approx(0.95) and t["bertsilicon bf16"]["verdict"] == "misses"
    assert t["bertsilicon int8"]["ratio"] is None and "onnxruntime int8: skipped" in t["bertsilicon int8"]["verdict"]
    assert all(x["headline"] for x in t.values())
    fast_but_wrong = next(x for x in targets if x["batch"] == 1 and x["ours"] == "bertsilicon bf16")
    assert fast_but_wrong["ratio"] == pytest.approx(0.25) and "output wrong" in fast_but_wrong["verdict"]
    assert not fast_but_wrong["headline"]


# ------------------------------------------------------------------------------------------------ #
# skipped providers                                                                                  #
# ------------------------------------------------------------------------------------------------ #
@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    import bertsilicon

    model = bertsilicon.load_student("bert-L2-H128", **TINY)
    example = runner.example_batch(bertsilicon.load_tokenizer(), 24)
    return prov.BuildContext(model, "tiny", example, 1, str(tmp_path_factory.mktemp("onnx")))


def _provider(key):
    return catalog.provider(key)


def test_onnxruntime_missing_is_skipped_with_the_reason(ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    for key in ("onnxruntime fp32", "onnxruntime int8", "onnxruntime-bert fp32", "onnxruntime-bert int8"):
        run, _, status, reason = prov.build_runner(_provider(key), ctx)
        assert run is None and status == "skipped"
        assert "is not installed" in reason and "[bench]" in reason


def test_onnxruntime_bert_optimizer_fuses_attention_and_matches_the_plain_export(ctx):
    """The ``onnxruntime-bert`` peer is ORT's BERT graph optimizer on the eager-attention export: the row says
    what it fused (Attention among them: the eager pattern is the one its fusion matches), and its fp32 output is
    the plain export's; int8 quantizes that fused graph."""
    pytest.importorskip("onnxruntime")
    b = ctx.example
    plain, _, status, _ = prov.build_runner(_provider("onnxruntime fp32"), ctx)
    fused, _, status_fused, _ = prov.build_runner(_provider("onnxruntime-bert fp32"), ctx)
    assert status == status_fused == "ok"
    assert fused.detail.startswith("fused ") and "Attention 1" in fused.detail and "SkipLayerNormalization" in fused.detail
    mask = b.attention_mask.bool()
    want, got = plain(b)[mask].double(), fused(b)[mask].double()
    assert float((got - want).norm() / want.norm()) < 1e-5
    int8, _, status, _ = prov.build_runner(_provider("onnxruntime-bert int8"), ctx)
    assert status == "ok" and int8.detail == fused.detail
    q = int8(b)[mask].double()
    assert 1e-6 < float((q - want).norm() / want.norm()) < 0.2  # quantized: close, not equal


def test_torch_compile_failure_is_skipped_with_the_reason(ctx, monkeypatch):
    def no_compiler(model, **kw):
        def fail(*a, **k):
            raise RuntimeError("no working C++ compiler")
        return fail
    monkeypatch.setattr(torch, "compile", no_compiler)
    run, _, status, reason = prov.build_runner(_provider("torch-compile fp32"), ctx)
    assert run is None and status == "skipped"
    assert reason.startswith("torch.compile failed on this machine") and "no working C++ compiler" in reason


def test_missing_optimize_is_not_built_yet(ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, "bertsilicon.models.optimize", None)
    run, _, status, reason = prov.build_runner(_provider("bertsilicon bf16"), ctx)
    assert run is None and status == "not built yet" and "not built yet" in reason


# ------------------------------------------------------------------------------------------------ #
# a tiny real run                                                                                    #
# ------------------------------------------------------------------------------------------------ #
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "bertsilicon.models.optimize", None)  # exercise the "not built yet" rows
        result = run_bench(_tiny_config(), quiet=True)
    assert torch.get_num_threads() == threads  # the run restores the caller's thread count
    out = tmp_path_factory.mktemp("bench")
    return result, report.write_results(result, out), out


def test_tiny_run_rows(tiny_run):
    result, _, _ = tiny_run
    rows = {f"{r['provider']} {r['precision']}": r for r in result["rows"]}
    assert list(rows) == ["torch-sdpa fp32", "torch-int8 int8", "onnxruntime fp32", "onnxruntime int8",
                          "bertsilicon fp32", "bertsilicon int8"]
    for r in result["rows"]:
        assert r["model"] == "bert-L2-H128" and r["batch"] == 3 and r["threads"] == 1
        assert r["padded_shape"][0] == 3 and 1 <= r["padded_shape"][1] <= 24
        assert 0 < r["real_tokens"] <= 3 * r["padded_shape"][1]
    base = rows["torch-sdpa fp32"]
    assert base["status"] == "ok" and base["speedup"] == 1.0 and base["cos_min"] == pytest.approx(1.0, abs=1e-12)
    assert base["latency_ms"]["n"] == 1 and base["latency_ms"]["min"] <= base["latency_ms"]["median"] <= base["latency_ms"]["max"]
    # ONNX export of the fp32 graph matches HF fp32; int8 rounding moves the embeddings a little, not a lot
    assert rows["onnxruntime fp32"]["cos_min"] > 1 - 1e-6
    for key in ("torch-int8 int8", "onnxruntime int8"):
        assert rows[key]["status"] == "ok", rows[key]["reason"]
        assert 0.9 < rows[key]["cos_min"] < 1 - 1e-7 and rows[key]["cos_min"] <= rows[key]["cos_mean"]
        assert rows[key]["seq_per_s"] > 0 and rows[key]["speedup"] > 0
    for key in ("bertsilicon fp32", "bertsilicon int8"):
        assert rows[key]["status"] == "not built yet" and rows[key]["latency_ms"] is None
    verdicts = {t["ours"]: t["verdict"] for t in result["targets"]}
    assert "bertsilicon fp32: not built yet" in verdicts["bertsilicon fp32"]
    assert "torch-sdpa bf16: not run" in verdicts["bertsilicon bf16"]


def test_tiny_run_files(tiny_run):
    result, paths, out = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["e2e-latency.png", "e2e-speedup.png", "e2e.json", "e2e.md"]
    saved = json.loads(paths["json"].read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    m = saved["machine"]
    assert m["threads"] == 1 and m["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"model", "flags", "simd_flags", "usable_cores"} <= set(m["cpu"]) and "onnxruntime" in m["versions"]
    assert "commit" in m["git"] and "gpu" in m and saved["note"] == "test run"
    md = paths["md"].read_text()
    for needle in ("> **test run**", "threads fixed at 1", "## Speed targets", "bertsilicon fp32",
                   "not built yet: bertsilicon.optimize is not built yet", "## Method", "onnxruntime | int8"):
        assert needle in md, needle
    for png in paths["png"]:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ------------------------------------------------------------------------------------------------ #
# README                                                                                             #
# ------------------------------------------------------------------------------------------------ #
def test_readme_table_regenerated_between_markers_only(tiny_run, tmp_path):
    result, paths, out = tiny_run
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(before) if line.startswith(report.README_START))
    end = next(i for i, line in enumerate(before) if line.strip() == report.README_END)

    used = report.update_readme(readme, paths["json"])
    after = readme.read_text().splitlines(keepends=True)
    assert used == paths["json"]
    assert after[:start + 1] == before[:start + 1] and after[-(len(before) - end):] == before[end:]
    table = "".join(after[start + 1:len(after) - (len(before) - end)])
    assert "| provider | precision | bert-L2-H128 |" in table and "| onnxruntime | int8 |" in table
    assert "(1.00x)" in table and "not built yet" in table and "**test run.**" in table
    report.update_readme(readme, paths["json"])
    assert readme.read_text().splitlines(keepends=True) == after  # idempotent


def test_readme_without_markers_is_an_error(tiny_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match="perf-table"):
        report.update_readme(readme, tiny_run[1]["json"])


def test_latest_results_prefers_the_newest_full_run(tiny_run, tmp_path):
    result = json.loads(tiny_run[1]["json"].read_text())

    def save(name, quick, date):
        data = dict(result, quick=quick, machine=dict(result["machine"], date_utc=date))
        (tmp_path / name).write_text(json.dumps(data))
    save("e2e.json", False, "2026-01-01T00:00:00+00:00")
    save("e2e-quick.json", True, "2026-06-01T00:00:00+00:00")
    assert report.latest_results(tmp_path).name == "e2e.json"
    (tmp_path / "e2e.json").unlink()
    assert report.latest_results(tmp_path).name == "e2e-quick.json"
    (tmp_path / "e2e-quick.json").unlink()
    with pytest.raises(FileNotFoundError, match="bertsilicon bench"):
        report.latest_results(tmp_path)


def test_busy_machine_is_flagged_and_tag_names_the_files(tiny_run):
    result = json.loads(json.dumps(tiny_run[0]))
    cores = result["machine"]["cpu"]["usable_cores"]
    result["machine"].update(load_average_start=[0.1, 0.1, 0.1], load_average_end=[cores - 0.5, 0.1, 0.1])
    assert not any("busy" in line for line in report.machine_lines(result))
    own = result["machine"]["threads"]
    result["machine"]["load_average_end"] = [cores + own - 0.5, 0.1, 0.1]  # the run's own threads are not "busy"
    assert not any("busy" in line for line in report.machine_lines(result))
    result["machine"]["load_average_end"] = [cores + own + 3.0, 0.1, 0.1]
    assert any("Warning: the machine was busy" in line for line in report.machine_lines(result))
    result["machine"].update(load_average_start=[cores + 1.0, 0.1, 0.1], load_average_end=[0.1, 0.1, 0.1])
    assert any("Warning: the machine was busy" in line for line in report.machine_lines(result))
    assert report.stem(result) == "e2e" and report.stem(dict(result, quick=True, tag="1thread")) == "e2e-quick-1thread"
    with pytest.raises(ValueError, match="tag"):
        BenchConfig(tag="../escape").validate()


def test_results_are_written_without_matplotlib(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths = report.write_results(tiny_run[0], tmp_path)
    assert paths["png"] == [] and paths["json"].exists() and paths["md"].exists()
    assert "PNG plots skipped" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ #
# the GPU run (bench/gpu.py, bench/kernels/gpu.py, bench/e2e/gpu.py): CPU dry run and verdicts     #
# ------------------------------------------------------------------------------------------------ #
def _bench_script(name):
    import importlib

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{name}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU check of a GPU script")
def test_gpu_e2e_dry_run(tmp_path):
    import signal

    e2e, gpu = _bench_script("e2e.gpu"), _bench_script("gpu")
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert e2e.main(["--dry-run", "--models", "minilm-l6", "--precisions", "fp16", "--out", str(tmp_path)]) == 0
    finally:
        signal.signal(signal.SIGTERM, handler)  # the script turns SIGTERM into a clean stop
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2e.json", "e2e.md"]
    data = json.loads((tmp_path / "e2e.json").read_text())
    rows = {(r["batch"], r["provider"], r["precision"]): r for r in data["rows"]}
    keys = [("torch-sdpa", "fp32"), ("torch-sdpa", "fp16"), ("torch-sdpa", "bf16"), ("bertsilicon", "fp16"),
            ("bertsilicon+graphs", "fp16")]  # the graph rows with an eager stand-in for the capture on CPU
    assert sorted(rows) == sorted((b, p, q) for b in (3, 2, 1) for p, q in keys)
    for r in rows.values():
        assert r["status"] == "ok" and r["latency_ms"]["n"] == 1 and r["real_tokens"] <= r["batch"] * 16
        assert r["cos_batch_min"] > 0.999 and r["cos64_min"] > 0.999  # fp16 / bf16 of a tiny model vs fp32
    assert rows[(3, "torch-sdpa", "fp32")]["cos_batch_min"] == pytest.approx(1.0, abs=1e-9)
    assert rows[(3, "torch-sdpa", "fp16")]["speedup_vs_baseline"] == 1.0
    assert data["builds"]["minilm-l6 bertsilicon fp16"]["backends_used"]["linear[fp16]"] == "triton"
    assert [t["path"] for t in data["target"]] == ["CUDA graphs", "eager"]
    for target in data["target"]:
        assert target["model"] == "minilm-l6" and target["batch"] == 3 and target["verdict"] in ("meets", "misses")
    assert data["builds"]["minilm-l6 bertsilicon+graphs fp16"]["cuda_graphs"] is True
    from bertsilicon.models import cuda_graphs as cg
    assert cg.CAPTURE_DEVICES == ("cuda",) and cg.capture_graph is not cg.replay_eagerly  # the emulation is undone
    md = (tmp_path / "e2e.md").read_text()
    assert "## Target: bertsilicon fp16 >= 1.5x" in md and "random weights" in md and "| bertsilicon | fp16 |" in md
    summary = e2e.summary(tmp_path / "e2e.json")
    assert [(r["batch"], r["provider"]) for r in summary["ours"]] == [(b, p) for b in (3, 2, 1)
                                                                      for p in ("bertsilicon", "bertsilicon+graphs")]
    assert "minilm-l6" in gpu.summary_markdown({"dry_run": True, "started_utc": "-", "budget_s": 1, "minilm": "-"},
                                               {"e2e": {"status": "ok", **summary}})


def test_gpu_e2e_target_verdicts():
    e2e = _bench_script("e2e.gpu")

    def row(provider, precision, ms, cos=0.99995, model="distilbert"):
        return {"model": model, "batch": 32, "seq": 128, "provider": provider, "precision": precision,
                "status": "ok" if ms else "failed", "reason": "" if ms else "boom",
                "latency_ms": {"median": ms} if ms else None, "cos_batch_mean": cos}
    verdicts = e2e.target_verdicts([row("torch-sdpa", "fp16", 3.0), row("bertsilicon", "fp16", 1.5),
                                    row("torch-sdpa", "fp16", 3.0, model="m"), row("bertsilicon", "fp16", 2.5, model="m"),
                                    row("torch-sdpa", "fp16", 3.0, model="w"), row("bertsilicon", "fp16", 1.0, 0.9, "w"),
                                    row("torch-sdpa", "fp16", 3.0, model="x"), row("bertsilicon", "fp16", None, model="x")],
                                   batch=32, seq=128)
    got = {v["model"]: v["verdict"] for v in verdicts}
    assert got["distilbert"] == "meets" and verdicts[0]["speedup"] == pytest.approx(2.0)
    assert got["m"] == "misses" and got["w"].startswith("does not count: output wrong")
    assert got["x"] == "n/a (bertsilicon fp16: failed boom)"
    assert {v["path"] for v in verdicts} == {"eager"}  # no graph row measured: no graph verdict
    both = e2e.target_verdicts([row("torch-sdpa", "fp16", 3.0), row("bertsilicon", "fp16", 2.5),
                                row("bertsilicon+graphs", "fp16", 1.0)], batch=32, seq=128)
    assert [(v["path"], v["verdict"]) for v in both] == [("CUDA graphs", "meets"), ("eager", "misses")]
    assert both[0]["speedup"] == pytest.approx(3.0)
    failed = e2e.target_verdicts([row("torch-sdpa", "fp16", 3.0), row("bertsilicon", "fp16", 1.0),
                                  row("bertsilicon+graphs", "fp16", None)], batch=32, seq=128)
    assert failed[0]["verdict"] == "n/a (bertsilicon+graphs fp16: failed boom)"  # a graph row that failed says so


def test_gpu_run_reads_kernel_results_and_junit(tmp_path):
    gpu, kernels = _bench_script("gpu"), _bench_script("kernels.gpu")
    cases = [{"op": "add_layernorm", "shape": "4096x768", "dtype": "float16", "note": "", "check": "",
              "speedup": {"triton vs torch eager": 1.7, "triton vs torch.compile": 0.8}},
             {"op": "attention", "shape": "-", "dtype": "-", "note": "not run: time limit 60 s reached", "speedup": {}}]
    (tmp_path / "kernels.json").write_text(json.dumps({"meta": {"ceilings": {"copy_TBps": 4.3}}, "cases": cases}))
    k = kernels.target_summary(tmp_path / "kernels.json")
    assert [(r["peer"], r["verdict"]) for r in k["targets"]] == [("torch eager", "meets"), ("torch.compile", "misses")]
    assert k["failed_cases"] == ["attention: not run: time limit 60 s reached"] and "targets met 1/2" in k["result"]
    assert kernels.target_summary(tmp_path / "missing.json") == {"result": "no missing.json"}
    (tmp_path / "t.xml").write_text(
        '<testsuites><testsuite><testcase classname="a" name="ok"/><testcase classname="a" name="s"><skipped/></testcase>'
        '<testcase classname="b" name="f"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="c" name="e"><error message="CUDA error">y</error></testcase></testsuite></testsuites>')
    c = gpu.junit_counts([tmp_path / "t.xml", tmp_path / "absent.xml"])
    assert (c["tests"], c["passed"], c["skipped"], c["failed"], c["errors"]) == (4, 1, 1, 1, 1)
    assert c["failures"] == ["b::f: assert 1 == 2", "c::e: CUDA error"]


def test_gpu_host_overhead_counts_seven_launches_per_layer():
    """bench/studies/gpu_host_overhead.py (own process: it stubs Triton's launches): MiniLM-L6 fp16 is 7 launches a layer."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "studies" / "gpu_host_overhead.py"), "--batch", "2", "--rounds", "2"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "minilm-l6 fp16 (GEMMs: fp16) batch 2" in out.stdout, out.stdout
    for path in ("direct launches", "public ops"):  # both paths launch the same kernels
        assert re.search(rf"{path} +median [0-9.]+ ms \(min [0-9.]+\), 42 launches per forward", out.stdout), out.stdout


def test_hidden_cpu_features_are_in_the_machine_lines(tiny_run):
    """A run with BERTSILICON_HIDE_CPU_FEATURES (an older CPU emulated) says so next to the SIMD flags."""
    result = json.loads(json.dumps(tiny_run[0]))
    features = result["machine"]["cpu"]["bertsilicon_cpu_features"]
    if features is None:
        pytest.skip("C++ extension not built")
    simd = next(line for line in report.machine_lines(result) if "SIMD flags" in line)
    assert f"bertsilicon kernels: {features['active_isa']} path" in simd and "hidden" not in simd
    result["machine"]["cpu"]["bertsilicon_cpu_features"] = dict(features, hidden=["avx512_vnni", "avx512_bf16"])
    simd = next(line for line in report.machine_lines(result) if "SIMD flags" in line)
    assert "features hidden from them: avx512_vnni, avx512_bf16" in simd


def test_kernel_environment_is_part_of_the_command(monkeypatch, tiny_run):
    """Variables that change which kernels run are written in front of the command that repeats the run."""
    cli = bench_cli
    for name in cli.KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cli.env_prefix() == ""
    monkeypatch.setenv("BERTSILICON_HIDE_CPU_FEATURES", "avx512_bf16,avx512_vnni")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    prefix = cli.env_prefix()
    assert prefix == "BERTSILICON_HIDE_CPU_FEATURES=avx512_bf16,avx512_vnni ONEDNN_MAX_CPU_ISA=AVX512_CORE "
    result = dict(json.loads(json.dumps(tiny_run[0])), env=prefix, argv="--models minilm-l6")
    assert f"`{prefix}bertsilicon bench --models minilm-l6`" in report.markdown(result)


def test_openvino_missing_is_skipped_with_the_reason(ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    for key in ("openvino fp32", "openvino-default-hint fp32"):
        run, _, status, reason = prov.build_runner(_provider(key), ctx)
        assert run is None and status == "skipped"
        assert "openvino is not installed" in reason and "[peers]" in reason


def test_openvino_f32_pinned_matches_the_export_and_names_its_precision(ctx):
    """The ``openvino fp32`` row runs f32 (hint pinned) and matches ORT on the same export; the default-hint
    row says which precision the plugin chose, and is within bf16's error where that is bf16."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    b = ctx.example
    mask = b.attention_mask.bool()
    ort, _, status, _ = prov.build_runner(_provider("onnxruntime fp32"), ctx)
    ov32, _, status32, _ = prov.build_runner(_provider("openvino fp32"), ctx)
    ovdef, _, status_def, reason = prov.build_runner(_provider("openvino-default-hint fp32"), ctx)
    assert status == status32 == status_def == "ok", reason
    assert ov32.detail == "inference precision f32"
    want = ort(b)[mask].double()
    assert float((ov32(b)[mask].double() - want).norm() / want.norm()) < 1e-5
    got = ovdef(b)[mask].double()
    bound = 1e-5 if ovdef.detail.endswith("f32") else 3e-2
    assert ovdef.detail.startswith("inference precision ")
    assert float((got - want).norm() / want.norm()) < bound
