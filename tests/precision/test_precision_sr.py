"""The stochastic-rounding training experiment (bench/studies/sr_training.py) on synthetic features:
with weights kept only in bf16, nearest rounding loses the small updates and falls behind fp32, while
stochastic rounding keeps them in expectation and tracks fp32."""
import importlib.util
from pathlib import Path

import pytest
import torch

from test_formats import _one_thread  # noqa: F401  (autouse: one intra-op thread)

_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "studies" / "sr_training.py"


@pytest.fixture(scope="module")
def sr():
    spec = importlib.util.spec_from_file_location("sr_training", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nearest_stalls_and_stochastic_tracks_fp32(sr):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 24, generator=g)
    y = (x @ torch.randn(24, 6, generator=g)).argmax(1)  # a learnable 6-class problem
    params0 = sr.init_params(24, 16, 6, seed=0)
    common = dict(steps=300, batch=32, lr=0.003, data_seed=1, eval_every=100, x_test=x[:100], y_test=y[:100])
    runs = {m: sr.train(m, params0, x[100:], y[100:], seed=0, **common) for m in ("fp32", "nearest", "stochastic")}
    runs["stochastic2"] = sr.train("stochastic", params0, x[100:], y[100:], seed=1, **common)
    final = {m: r["evals"][-1]["train_loss_full"] for m, r in runs.items()}
    start = float(torch.nn.functional.cross_entropy(sr.forward(params0, x[100:]), y[100:]))
    fp32_gain = start - final["fp32"]
    assert fp32_gain > 0.05, f"the fp32 run must learn something (loss {start:.4f} -> {final['fp32']:.4f})"
    for m in ("stochastic", "stochastic2"):  # tracks fp32 within 10 % of fp32's progress
        assert abs(final[m] - final["fp32"]) < 0.1 * fp32_gain, final
    assert start - final["nearest"] < 0.6 * fp32_gain, f"nearest should fall well behind fp32: {final}"
    changed = {m: sum(r["changed_fraction"]) / len(r["changed_fraction"]) for m, r in runs.items()}
    assert changed["fp32"] > 0.9 and changed["nearest"] < changed["stochastic"] < changed["fp32"], changed
    # all runs start from the same bf16 weights and see the same batches
    assert runs["nearest"]["loss"][0] == runs["stochastic"]["loss"][0] == runs["fp32"]["loss"][0]


def test_seeds_give_different_stochastic_runs_and_the_same_seed_repeats(sr):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    p0 = sr.init_params(8, 8, 3, seed=2)
    kw = dict(steps=20, batch=16, lr=0.01, data_seed=3, eval_every=10, x_test=x, y_test=y)
    a = sr.train("stochastic", p0, x, y, seed=5, **kw)
    assert a["loss"] == sr.train("stochastic", p0, x, y, seed=5, **kw)["loss"]
    assert a["changed_fraction"] != sr.train("stochastic", p0, x, y, seed=6, **kw)["changed_fraction"]
