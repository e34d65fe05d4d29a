"""Student-design explorer: the front is the non-dominated set within the budget, the published students
are in the sweep, flags fire on the shapes they describe; CLI."""
import json

import pytest

import bertsilicon as bs
from bertsilicon.profiler import profile


def _dominates(x, y):
    return (x.non_embedding_params >= y.non_embedding_params and x.latency_s <= y.latency_s
            and x.energy_j <= y.energy_j and (x.non_embedding_params > y.non_embedding_params
                                              or x.latency_s < y.latency_s or x.energy_j < y.energy_j))


@pytest.fixture(scope="module")
def t4_fp16():
    return bs.design.explore(hardware="t4", seq_len=128, precision="fp16", latency_budget=2.0,
                             layers=(2, 4, 6), hidden=(256, 384, 512))


def test_front_is_pareto_within_budget(t4_fp16):
    res = t4_fp16
    in_budget = [c for c in res.candidates if c.latency_s * 1e3 <= 2.0 and c.hidden / c.layers <= 128]
    assert res.front and set(id(c) for c in res.front) <= set(id(c) for c in in_budget)
    for c in in_budget:  # on the front <=> nobody in budget (and in the shape band) dominates it
        dominated = any(_dominates(o, c) for o in in_budget if o is not c)
        assert c.pareto == (not dominated), c.name
    assert all(not c.pareto for c in res.candidates if c.latency_s * 1e3 > 2.0 or c.hidden / c.layers > 128)
    shallow = next(c for c in res.candidates if (c.layers, c.hidden) == (2, 512))
    assert any(f.startswith("shallow for its width") for f in shallow.flags)
    assert res.best is max(res.front, key=lambda c: c.non_embedding_params)


def test_candidates_match_the_profiler_and_cover_published_students(t4_fp16):
    names = {n for c in t4_fp16.candidates if c.named for n in c.name.split(" / ")}
    assert set(bs.STUDENTS) <= names  # 24 compact BERTs, TinyBERT, MiniLM, DistilBERT, MobileBERT, ...
    tiny = next(c for c in t4_fp16.candidates if c.name == "tinybert4")
    rep = profile("tinybert4", seq_len=128, precision="fp16", hardware="t4")
    assert tiny.matmul_flops == rep.totals["matmul_flops"] and tiny.params == rep.totals["params"]
    assert tiny.latency_s == rep.totals["latency_s"] and tiny.energy_j == rep.totals["energy_j"]
    assert any("head dim 26 not a multiple of 8" in f for f in tiny.flags)
    small = next(c for c in t4_fp16.candidates if c.name == "bert-L2-H128")
    assert any(f.startswith("embedding-dominated") for f in small.flags)
    base = next(c for c in t4_fp16.candidates if "bert-base" in c.name.split(" / "))
    assert not base.flags
    grid = [c for c in t4_fp16.candidates if not c.named]
    assert {(c.layers, c.hidden) for c in grid} == {(L, H) for L in (2, 4, 6) for H in (256, 384, 512)}
    assert all(32 <= c.head_dim <= 64 and c.hidden % c.heads == 0 for c in grid)


@pytest.mark.parametrize("hardware", ["avx512", "t4"])
def test_picks_vary_width_heads_ffn_and_are_not_always_the_widest(hardware):
    picks = [bs.design.explore(hardware=hardware, seq_len=128, latency_budget=b) for b in (1.0, 3.0)]
    for res in picks:  # the front varies width, heads and FFN size, not depth alone
        assert len({c.hidden for c in res.front}) >= 4 and len({c.heads for c in res.front}) >= 3
        assert len({c.intermediate / c.hidden for c in res.front}) >= 2
        assert res.best.hidden / res.best.layers <= 128
    assert min(r.best.hidden for r in picks) < 768
    # without the shape band the weight-bound device picks the fewest, widest layers at every budget
    unbanded = [bs.design.explore(hardware=hardware, seq_len=128, latency_budget=b, max_aspect=None).best
                for b in (1.0, 3.0)]
    assert all(p.hidden == 768 for p in unbanded)


def test_energy_budget_and_outputs(tmp_path):
    res = bs.design.explore(hardware="h100", seq_len=64, energy_budget=80.0, layers=(2, 4), hidden=(256, 512),
                            include_named=False)
    assert res.front and all(c.energy_j * 1e3 <= 80.0 for c in res.front)
    d = json.loads(res.to_json(tmp_path / "d.json"))
    assert d["energy_budget_mj"] == 80.0 and len(d["front"]) == len(res.front)
    md = res.to_markdown(tmp_path / "d.md")
    assert "Pareto front" in md and "energy <= 80 mJ" in md
    assert res.plot(tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    tight = bs.design.explore(hardware="h100", latency_budget=1e-6, layers=(2,), hidden=(256,), include_named=False)
    assert tight.front == [] and tight.best is None


def test_bad_input():
    with pytest.raises(ValueError, match="known: h100"):
        bs.design.explore(hardware="abacus")
    with pytest.raises(ValueError, match="latency_budget must be a positive number"):
        bs.design.explore(latency_budget=-1)
    with pytest.raises(ValueError, match="seq_len"):
        bs.design.explore(seq_len=0)
    with pytest.raises(ValueError, match="max_aspect must be a positive number"):
        bs.design.explore(max_aspect=-3)


def test_cli_design(tmp_path, capsys):
    from bertsilicon.cli import main

    png, js = tmp_path / "front.png", tmp_path / "front.json"
    assert main(["design", "--hardware", "l4", "--precision", "int8", "--latency-budget", "3", "--layers", "2,4",
                 "--hidden", "256,384", "--plot", str(png), "--json", str(js)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and json.loads(js.read_text())["hardware"] == "l4"
    assert "Pareto front" in capsys.readouterr().out
    assert main(["design", "--precision", "fp64"]) == 2
    assert "known: fp32" in capsys.readouterr().err
