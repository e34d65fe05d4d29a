"""The peer engines (CTranslate2, OpenVINO + NNCF, ORT static QDQ) against a float64 reference on a tiny random
BERT, and the columns' measures (kNN, retrieval, quality ratio, invariance, cold start) on inputs whose answer
is known. Each peer test skips only when its package is absent."""
import sys

import pytest
import torch

import bertsilicon
from bertsilicon.benchmark import catalog, columns, coldstart, peers, peers_cli
from bertsilicon.benchmark.providers import Batch, BuildContext, build_runner, tokenize
from bertsilicon.benchmark.runner import BenchConfig, example_batch

TINY = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 96}
FP32_FLOOR = 1e-6
# int8 rows: error at most 2x torch's dynamic int8 (per-tensor weights and activations) on the same model + a floor.
# Dynamic ranges (taken per call): 1e-2, one quantization step of a per-row range (1/127 of its largest value). Static ranges (calibrated once, per tensor, held for every input: the
# attention products' too): 2e-2, two quantization steps of a calibrated range (range / 255, ~1% of the output
# norm of this model's layer).
INT8_FLOOR = {"dynamic": 1e-2, "static": 2e-2}
STATIC = ("onnxruntime-qdq int8", "openvino-nncf int8", "openvino-nncf-static int8")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    torch.manual_seed(0)
    model = bertsilicon.load_student("bert-L2-H128", **TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(peers, "CALIBRATION_TEXTS", 24)  # the real texts, fewer of them
        yield BuildContext(model, "tiny", example_batch(bertsilicon.load_tokenizer(), 24), 1,
                           str(tmp_path_factory.mktemp("peers")))


@pytest.fixture(scope="module")
def batch_and_reference(ctx):
    """Five real texts of different lengths (ragged) and the model's float64 output on their real tokens."""
    from bertsilicon import data

    b = tokenize(bertsilicon.load_tokenizer(), data.corpus("pydoc").subset(5, seed=7).texts, 40, "longest")
    with torch.inference_mode():
        ref = ctx.fresh_model().double()(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
    return b, ref[b.attention_mask.bool()]


def _error(run, b, ref) -> float:
    with torch.inference_mode():
        got = run(b)[b.attention_mask.bool()].double()
    assert torch.isfinite(got).all()
    return float((got - ref).norm() / ref.norm())


def _build(key, ctx):
    run, _, status, reason = build_runner(catalog.provider(key), ctx)
    assert status == "ok", f"{key}: {status}: {reason}"
    return run


@pytest.fixture(scope="module")
def torch_errors(ctx, batch_and_reference):
    """Plain torch's relative error at fp32 and at dynamic int8: the yardsticks of the peers' tolerances."""
    b, ref = batch_and_reference
    fp32 = _error(lambda x: ctx.model(input_ids=x.input_ids, attention_mask=x.attention_mask).last_hidden_state, b, ref)
    return {"fp32": fp32, "int8": _error(_build("torch-int8 int8", ctx), b, ref)}


@pytest.mark.parametrize("key, package", [
    ("ctranslate2 fp32", "ctranslate2"),
    ("ctranslate2 int8", "ctranslate2"),
    ("ctranslate2-int8f32 int8", "ctranslate2"),
    ("onnxruntime-qdq int8", "onnxruntime"),
    ("openvino-nncf int8", "nncf"),
    ("openvino-nncf-static int8", "nncf"),
])
def test_peer_matches_float64_within_its_precision(key, package, ctx, batch_and_reference, torch_errors):
    pytest.importorskip(package)
    b, ref = batch_and_reference
    err = _error(_build(key, ctx), b, ref)
    precision = key.split()[1]
    floor = FP32_FLOOR if precision == "fp32" else INT8_FLOOR["static" if key in STATIC else "dynamic"]
    bound = 2 * torch_errors[precision] + floor
    print(f"{key}: relative error {err:.2e}, bound {bound:.2e}")
    assert err <= bound, f"{key}: relative error {err:.2e} > {bound:.2e}"
    if precision == "int8":
        assert err > 2 * torch_errors["fp32"]  # it quantized something: not the fp32 graph under another name


def test_ctranslate2_names_its_compute_type_and_refuses_one_it_lacks(ctx, monkeypatch):
    ct2 = pytest.importorskip("ctranslate2")
    assert _build("ctranslate2-int8f32 int8", ctx).detail == "compute type int8_float32"
    monkeypatch.setattr(ct2, "get_supported_compute_types", lambda device: {"float32"})
    run, _, status, reason = build_runner(catalog.provider("ctranslate2 int8"), ctx)
    assert run is None and status == "skipped" and "not int8" in reason and "float32" in reason


@pytest.mark.parametrize("key, module", [("ctranslate2 int8", "ctranslate2"), ("openvino-nncf int8", "nncf"),
                                         ("onnxruntime-qdq int8", "onnxruntime"), ("llama.cpp int8", "llama_cpp")])
def test_missing_package_is_skipped_with_the_reason(key, module, ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    run, _, status, reason = build_runner(catalog.provider(key), ctx)
    assert run is None and status == "skipped" and "not installed" in reason


def test_static_shapes_pad_lengths_up_to_the_step():
    assert [peers.static_length(n, 512) for n in (1, 16, 17, 500, 512)] == [16, 16, 32, 512, 512]
    assert peers.static_length(30, 24) == 24


def test_calibration_batches_are_real_text_or_ids_inside_the_vocabulary(ctx):
    batches = peers.calibration_batches(ctx, texts=10, batch=4)
    assert [b.shape[0] for b in batches] == [4, 4, 2] and all(b.shape[1] <= peers.CALIBRATION_LENGTH for b in batches)
    small = BuildContext(bertsilicon.load_student("bert-L2-H128", vocab_size=500, **TINY), "v", ctx.example, 1, ctx.workdir)
    for b in peers.calibration_batches(small, texts=10, batch=4):
        assert int(b.input_ids.max()) < 500 and (b.input_ids[b.attention_mask == 0] == 0).all()


# ------------------------------------------------------------------------------------------------ #
# the measures, on inputs whose answer is known                                                      #
# ------------------------------------------------------------------------------------------------ #
def test_knn_accuracy_counts_the_votes_of_the_nearest_train_rows():
    gen = torch.Generator().manual_seed(1)
    centers = torch.eye(3, 8, dtype=torch.float64) * 10
    train = centers.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 8, generator=gen, dtype=torch.float64)
    train_labels = [0] * 4 + [1] * 4 + [2] * 4
    test = centers[[0, 1, 2, 2]] + 0.1 * torch.randn(4, 8, generator=gen, dtype=torch.float64)
    assert columns.knn_accuracy(train, train_labels, test, [0, 1, 2, 1], k=3) == 0.75  # the last one is mislabelled
    assert columns.knn_accuracy(train, train_labels, test, [1, 2, 0, 0], k=3) == 0.0
    # a class-1 train row on top of test row 0: its single nearest neighbour is wrong, its 3 nearest vote right
    train, train_labels = torch.cat([train, test[:1]]), train_labels + [1]
    assert columns.knn_accuracy(train, train_labels, test, [0, 1, 2, 2], k=3) == 1.0
    assert columns.knn_accuracy(train, train_labels, test, [0, 1, 2, 2], k=1) == 0.75
    with pytest.raises(ValueError, match="labels"):
        columns.knn_accuracy(train, train_labels[:-1], test, [0, 1, 2, 2])
    with pytest.raises(ValueError, match="k: expected"):
        columns.knn_accuracy(train, train_labels, test, [0, 1, 2, 2], k=14)


def test_retrieval_ranks_each_query_against_every_document():
    docs = torch.eye(4, dtype=torch.float64)
    assert columns.retrieval_scores(docs, docs, at=1) == {"recall@1": 1.0, "mrr": 1.0}
    # query i is closest to document (i + 1) % 4, second closest to its own: rank 2 for every query
    queries = docs.roll(-1, dims=0) * 2 + docs
    assert columns.retrieval_scores(queries, docs, at=1) == {"recall@1": 0.0, "mrr": 0.5}
    assert columns.retrieval_scores(queries, docs, at=2)["recall@2"] == 1.0
    with pytest.raises(ValueError, match="one document per query"):
        columns.retrieval_scores(queries[:3], docs)


def test_quality_ratio_is_the_lowest_score_ratio():
    r = columns.quality_ratios({"knn_accuracy": 0.8, "recall@10": 0.9, "mrr": 0.5}, {"knn_accuracy": 0.8,
                                                                                     "recall@10": 1.0, "mrr": 0.4})
    assert r == {"knn_accuracy_ratio": 1.0, "recall@10_ratio": 0.9, "mrr_ratio": 1.25, "quality_ratio": 0.9}


def test_retrieval_pairs_split_a_paragraph_at_its_first_sentence():
    from bertsilicon import data

    queries, docs = columns.retrieval_pairs(20)
    assert len(queries) == len(docs) == 20
    texts = set(data.corpus("pydoc").texts)
    assert all(f"{q} {d}" in texts and q[-1] in ".!?" for q, d in zip(queries, docs))


def _embedding_runner(shift_per_row: float = 0.0, shift_per_pad: float = 0.0):
    """``[B, L] -> [B, L, 4]``: a fixed embedding of each id, plus ``shift_per_row x (B - 1)`` and
    ``shift_per_pad x`` the number of padded positions: a runner whose batch dependence is known."""
    table = torch.randn(30522, 4, generator=torch.Generator().manual_seed(2))

    def run(b: Batch) -> torch.Tensor:
        pads = (b.attention_mask == 0).sum().to(torch.float32)
        return table[b.input_ids] + shift_per_row * (b.shape[0] - 1) + shift_per_pad * pads
    return run


def test_invariance_measures_batch_and_padding_dependence():
    tok = bertsilicon.load_tokenizer()
    texts = ["a short text", "a somewhat longer text than the first one", "mid length text here"]
    assert columns.invariance(_embedding_runner(), tok, texts, 64) == {"in_batch": 0.0, "padded_512": 0.0}
    got = columns.invariance(_embedding_runner(shift_per_row=1e-3), tok, texts, 64)
    assert got["in_batch"] == pytest.approx(2e-3, rel=1e-4) and got["padded_512"] == 0.0
    shortest = min(len(tok(t)["input_ids"]) for t in texts)
    got = columns.invariance(_embedding_runner(shift_per_pad=1e-4), tok, texts, 64)
    assert got["padded_512"] == pytest.approx(1e-4 * (512 - shortest), rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        columns.invariance(_embedding_runner(), tok, texts[:1], 64)


def test_cold_start_runs_fresh_processes_and_reuses_converted_files(ctx):
    pytest.importorskip("onnxruntime")
    _build("onnxruntime fp32", ctx)  # the export lands in the scratch folder and the cache
    one = tokenize(bertsilicon.load_tokenizer(), ["one sentence"], 24, "longest")
    ballast = torch.ones(2 ** 28)  # 1 GiB held by this process: none of it may show in the child's peak
    got = coldstart.measure("onnxruntime fp32", "bert-L2-H128", TINY, ctx.workdir, ctx.cache, 1, one, repeats=1)
    assert got["processes"] == 1 and 50 < got["peak_rss_mib"] < coldstart.peak_rss_mib() - 1024
    del ballast
    assert 0 < got["import_s"] < got["total_s"] and got["ready_s"] > 0 and got["first_s"] > 0


def test_cold_start_reports_a_failed_process_with_its_last_error_line(ctx, monkeypatch):
    import subprocess

    def failed(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Traceback ...\nValueError: student 'x' is unknown\n")
    monkeypatch.setattr(coldstart.subprocess, "run", failed)
    one = tokenize(bertsilicon.load_tokenizer(), ["one sentence"], 24, "longest")
    got = coldstart.measure("onnxruntime fp32", "x", {}, ctx.workdir, {}, 1, one, repeats=3)
    assert got == {"error": "exit 1: ValueError: student 'x' is unknown"}


def test_unknown_column_lists_the_valid_ones():
    with pytest.raises(ValueError, match="columns: unknown 'speed'.*cold-start"):
        BenchConfig(columns=["quality", "speed"]).validate()


def test_peer_targets_take_the_fastest_int8_peer():
    def row(provider, precision, ms, batch=8, q=None):
        return {"provider": provider, "precision": precision, "batch": batch, "quality_ratio": q,
                "latency_ms": {"median": ms} if ms else None}
    rows = [row("bertsilicon", "int8", 6.0, q=0.9995), row("ctranslate2", "int8", 10.0, q=0.99),
            row("onnxruntime", "int8", 8.0), row("torch-sdpa", "fp32", 2.0), row("openvino-nncf", "int8", None),
            row("bertsilicon", "int8", 3.0, batch=1, q=0.998), row("onnxruntime", "int8", 2.0, batch=1)]
    t = {x["batch"]: x for x in peers_cli.peer_targets({"rows": rows})}
    assert t[8]["peer"] == "onnxruntime int8" and t[8]["ratio"] == 0.75 and t[8]["latency_verdict"] == "meets"
    assert t[8]["quality_verdict"] == "meets"
    assert t[1]["ratio"] == 1.5 and t[1]["latency_verdict"] == "misses" and t[1]["quality_verdict"] == "misses"
