"""Precision experiments: format emulation on an HF model, drift metrics, the runner, report and CLI.
Small random-weight BERT (2 layers, hidden 128) and a few dozen real docstrings keep it fast."""
import json
import math

import pytest
import torch

from bertsilicon import formats
from bertsilicon.models import eval as model_eval
from bertsilicon.models.students import load_student, load_tokenizer
from bertsilicon.precision import emulate, round_tensor, run_experiment, write_report
from bertsilicon.precision import metrics as M
from bertsilicon.precision.emulate import linear_modules
from test_formats import _one_thread  # noqa: F401  (autouse: one intra-op thread)


@pytest.fixture(scope="module")
def tiny():
    model = load_student("bert-L2-H128", seed=3)
    tok = load_tokenizer()
    enc = tok(["Return the sum of two numbers.", "Open a file and return a stream object for it, or raise OSError."],
              padding=True, return_tensors="pt")
    return model, dict(enc)


def _hidden(model, enc):
    with torch.no_grad():
        return model(**enc).last_hidden_state


def test_emulate_weights_equals_rounded_copy_and_restores(tiny):
    model, enc = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _hidden(model, enc)
    with emulate(model, "bf16", "nearest", "weights"):
        got = _hidden(model, enc)
    manual = load_student("bert-L2-H128", seed=3)
    for _, m in linear_modules(manual):
        m.weight.data = m.weight.data.to(torch.bfloat16).float()
    assert torch.equal(got, _hidden(manual, enc))
    assert not torch.equal(got, ref)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "weights not restored"
    assert torch.equal(_hidden(model, enc), ref)


def test_emulate_activations_and_accumulation_on_one_linear(tiny):
    model, _ = tiny
    _, lin = linear_modules(model)[0]
    x = torch.randn(3, 5, lin.in_features, generator=torch.Generator().manual_seed(1))
    root = model.encoder
    with emulate(model, "e4m3", "nearest", "activations", fp8_scaling=False):
        got = lin(x)
    assert torch.equal(got, torch.nn.functional.linear(formats.round_to(x, "e4m3"), lin.weight, lin.bias))
    with emulate(model, "fp16", "nearest", "accumulation"):
        got = lin(x)
    expect = formats.round_to(torch.nn.functional.linear(x, lin.weight), "fp16") + lin.bias
    assert torch.equal(got, expect)
    assert "forward" not in lin.__dict__ and not lin._forward_pre_hooks and root is model.encoder


def test_emulate_restores_after_an_exception(tiny):
    model, enc = tiny
    ref = _hidden(model, enc)
    with pytest.raises(RuntimeError, match="boom"):
        with emulate(model, "int8", "stochastic", "weights+activations+accumulation", seed=4):
            raise RuntimeError("boom")
    assert torch.equal(_hidden(model, enc), ref)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "toward_zero"])
@pytest.mark.parametrize("fmt, gran", [("int8", "per_token"), ("int4", "per_channel"), ("int8", "per_tensor")])
def test_round_tensor_fast_int_path_is_bit_identical_to_formats(fmt, gran, rounding):
    x = torch.randn(33, 77, generator=torch.Generator().manual_seed(8)) * torch.logspace(-3, 1, 77)
    x[0, :4] = torch.tensor([1e-9, -3e-7, float("nan"), 0.5])
    a = round_tensor(x, fmt, rounding, seed=21, granularity=gran)
    b = formats.round_to(x, fmt, rounding, seed=21, granularity=gran)
    assert bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "toward_zero"])
def test_int_codes_fast_path_on_ties_and_tiny_fractions(rounding):
    from bertsilicon.precision.emulate import _round_int_codes

    y = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 3 + 2.0 ** -20, 7 - 2.0 ** -21, 2.0 ** -30, 5.0] * 400)
    got = _round_int_codes(y, rounding, 9)
    q, _ = formats.quantize(y, "int8", scale=torch.tensor(1.0), rounding=rounding, seed=9)
    assert torch.equal(got, q.float())


def test_round_tensor_fp8_scaling():
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(2)) * 1e-3  # mostly e4m3 subnormals unscaled
    raw = round_tensor(x, "e4m3", fp8_scaling=False)
    scaled = round_tensor(x, "e4m3")
    assert M.sqnr_db(x, scaled) > M.sqnr_db(x, raw) + 10
    assert M.sqnr_db(x, scaled) > 25  # 3 mantissa bits: ~6 dB per bit + a few


def test_metrics():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1000, generator=g, dtype=torch.float64)
    noise = torch.randn(1000, generator=g, dtype=torch.float64) * 0.01
    expect = 10 * math.log10(float((ref ** 2).sum() / (noise ** 2).sum()))
    assert abs(M.sqnr_db(ref, ref + noise) - expect) < 1e-9 and M.sqnr_db(ref, ref) == math.inf
    emb = torch.randn(60, 16, generator=g)
    assert torch.equal(M.topk_overlap(emb, emb, 10), torch.ones(60, dtype=torch.float64))
    shuffled = M.topk_overlap(torch.randn(60, 16, generator=g), emb, 10)
    assert float(shuffled.mean()) < 0.5
    labels = [f"m{i % 7}" for i in range(60)]
    emb_lab = emb + 3 * torch.nn.functional.one_hot(torch.tensor([i % 7 for i in range(60)]), 16).float()
    correct = M.knn_correct(emb_lab, labels, 5)
    assert float(correct.double().mean()) == pytest.approx(model_eval.knn_accuracy(emb_lab, labels, 5), abs=0)
    lo, hi = M.bootstrap_ci(correct.double(), 500)
    assert lo <= float(correct.double().mean()) <= hi and hi - lo < 0.5
    with pytest.raises(ValueError, match="k must be"):
        M.topk_overlap(emb, emb, 60)


def test_run_experiment_report_and_cli(tmp_path):
    res = run_experiment("bert-L2-H128", ["fp32", "bf16", "int8"], ["nearest", "stochastic"], ["weights"], texts=40,
                         max_length=24, seeds=2, n_boot=100, progress=False)
    runs = {(r["format"], r["rounding"]): r for r in res["runs"]}
    assert set(runs) == {("fp32", "exact"), ("bf16", "nearest"), ("bf16", "stochastic"), ("int8", "nearest"), ("int8", "stochastic")}
    assert runs[("fp32", "exact")]["metrics"]["cosine"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert all(math.isinf(v) for v in runs[("fp32", "exact")]["metrics"]["sqnr_db"]["mean"])
    bf, i8 = runs[("bf16", "nearest")]["metrics"], runs[("int8", "nearest")]["metrics"]
    assert min(bf["sqnr_db"]["mean"]) > min(i8["sqnr_db"]["mean"]) > 10
    assert len(bf["sqnr_db"]["mean"]) == len(res["meta"]["layers"]) == 3
    sr = runs[("bf16", "stochastic")]["metrics"]["cosine"]
    assert sr["seed_band"][0] <= sr["mean"] + 1e-12 and sr["ci95"][0] <= sr["mean"] <= sr["ci95"][1]
    paths = write_report(res, tmp_path, "t")
    assert json.loads(paths["json"].read_text())["runs"][0]["metrics"]["sqnr_db"]["mean"][0] == "inf"
    assert "| bf16 | stochastic |" in paths["md"].read_text() and paths["png"].stat().st_size > 10_000

    from bertsilicon.cli import main
    assert main(["precision", "--model", "bert-L2-H128", "--formats", "e5m2", "--rounding", "nearest", "--where",
                 "weights+accumulation", "--sentences", "24", "--max-length", "16", "--bootstrap", "50",
                 "--out", str(tmp_path), "--stem", "cli"]) == 0
    assert (tmp_path / "cli.png").exists() and "weights+accumulation" in (tmp_path / "cli.md").read_text()


@pytest.mark.parametrize("kwargs, match", [
    (dict(formats_=["fp7"]), "fmt='fp7' is unknown"),
    (dict(formats_=["e9m3"]), "ebits=9 is out of range"),
    (dict(roundings=["up"]), "rounding='up'"),
    (dict(where=["gradients"]), "where="),
    (dict(seeds=0), "seeds must be"),
])
def test_run_experiment_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_experiment("bert-L2-H128", **{"texts": 8, "progress": False, **kwargs})
