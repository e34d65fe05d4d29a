"""The CUDA-graph path of ``FusedEncoder`` (bertsilicon/models/optimize.py), exercised without a GPU.

A captured graph is, to the encoder, ``CapturedGraph(replay, inputs, output)``: ``replay()`` recomputes the
static ``output`` from the static ``inputs``. Here ``capture_graph`` is replaced by an eager stand-in (replay =
run the recorded body again and copy into the same output tensor) and the graph path is allowed on CPU
tensors, so everything but the CUDA capture itself runs in CI: the bucketing, the static buffers (scratch
rows past the real tokens, empty sequences past the batch), copy-in / copy-out, reuse, the cache limit and
the capture-failure fallback. The encoder must give the eager path's output bit for bit (same kernels on
the same rows: every op is row-local or bounded by the offsets). The real capture is tested on a GPU
(tests/models/test_optimize_gpu.py).
"""
import copy

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon.models import cuda_graphs as cg
from bertsilicon.models.encoder import FusedEncoder
from bertsilicon.models.layers import FusedEncoderLayer, FusedLayerBase
from numerics import ragged_mask

H, HEADS = 52, 2  # head dim 26


def _model(seed: int = 0, layers: int = 2) -> transformers.BertModel:
    cfg = bertsilicon.student_config("bert-base", num_hidden_layers=layers, hidden_size=H, num_attention_heads=HEADS,
                                     intermediate_size=72)
    cfg.initializer_range = 1.5 / H ** 0.5  # spread-out attention scores: a masking bug moves the output
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def _inputs(batch: int, length: int, seed: int, fully_padded_row: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = ragged_mask(batch, length, g, fully_padded_row=fully_padded_row)
    return {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g), "attention_mask": mask}


def _hidden(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _encoder(model) -> FusedEncoder:
    return next(m for m in model.modules() if isinstance(m, FusedEncoder))


@pytest.fixture
def captures(monkeypatch):
    """Graph path on CPU with an eager stand-in for the capture (:func:`cg.replay_eagerly`, made to run no
    layer sync on replay, as a graph); returns the list of the graphs captured."""
    made = []

    def eager_capture(body, inputs, pool):
        graph = cg.replay_eagerly(body, inputs, pool)
        made.append(graph)

        def replay():  # a CUDA graph runs no Python: what the layers' forwards check on the host (their
            with monkeypatch.context() as m:  # prepared copies' sync) does not happen in a replay
                m.setattr(FusedLayerBase, "sync_prepared", lambda self: False)
                graph_replay()
        graph_replay, graph.replay = graph.replay, replay
        return graph

    monkeypatch.setattr(cg, "capture_graph", eager_capture)
    monkeypatch.setattr(cg, "CAPTURE_DEVICES", ("cuda", "cpu"))
    return made


def _pair(model, precision, backend="cpu", **kwargs):
    """(eager, graphs): the same optimized model twice, the second with its graph path switched on."""
    device = next(model.parameters()).device
    calib = {k: v.to(device) for k, v in _inputs(4, 19, seed=99).items()}
    eager = bertsilicon.optimize(copy.deepcopy(model), precision, backend=backend, calibration=calib, **kwargs)
    graphs = copy.deepcopy(eager)
    _encoder(graphs).cuda_graphs = True
    return eager, graphs


def _keys(model) -> list:
    return list(_encoder(model).__dict__["graphs"].graphs)


def test_graph_tokens_keep_the_kernels_bucket_and_waste_at_most_an_eighth():
    from bertsilicon.kernels._common import token_bucket

    seen = {}
    for tokens in range(1, 9000):
        g = cg.graph_tokens(tokens)
        assert g >= tokens and token_bucket(g) == token_bucket(tokens), tokens
        assert g - tokens < max(16, token_bucket(tokens) // 8), tokens
        seen.setdefault(token_bucket(tokens), set()).add(g)
    assert all(len(v) <= 8 for v in seen.values())
    assert [cg.graph_tokens(t) for t in (1, 27, 426, 1919, 2049)] == [16, 32, 448, 2048, 2560]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_packed_graph_equals_the_eager_padding_free_path(captures, precision):
    eager, graphs = _pair(_model(1), precision)
    inputs = _inputs(5, 77, seed=2)  # batch bucket 8 (3 empty sequences), a fully padded row, scratch rows
    out = _hidden(graphs, inputs)
    (key,) = _keys(graphs)
    real_tokens = int(inputs["attention_mask"].sum())
    assert (key.path, key.batch, key.length, key.tokens) == ("packed", 8, 128, cg.graph_tokens(real_tokens))
    assert key.tokens > real_tokens  # the scratch rows are exercised
    assert torch.equal(out, _hidden(eager, inputs))
    real = inputs["attention_mask"].bool()
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))


def test_packed_graph_is_reused_within_its_buckets(captures):
    eager, graphs = _pair(_model(3), "fp32")
    first = _inputs(5, 60, seed=4)
    _hidden(graphs, first)
    tokens = int(first["attention_mask"].sum())
    # another batch with a batch size, lengths and a token count in the same buckets: replayed, not captured
    g = torch.Generator().manual_seed(5)
    for _ in range(50):
        other = _inputs(6, 64, seed=int(torch.randint(0, 1 << 30, (1,), generator=g)))
        if cg.graph_tokens(int(other["attention_mask"].sum())) == cg.graph_tokens(tokens):
            break
    else:
        pytest.fail("no batch with the same token bucket found")
    out = _hidden(graphs, other)
    assert len(captures) == 1 and len(_keys(graphs)) == 1
    assert torch.equal(out, _hidden(eager, other))  # stale rows of the previous call are not read
    _hidden(graphs, _inputs(2, 9, seed=6))  # new buckets: a second graph
    assert len(captures) == 2 and len(_keys(graphs)) == 2


def _lengths_batch(lengths, length: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).to(torch.int64)
    return {"input_ids": torch.randint(1000, 30000, mask.shape, generator=g), "attention_mask": mask}


def test_a_smaller_batch_in_the_same_graph_sees_only_its_own_sequences(captures):
    eager, graphs = _pair(_model(22), "fp32")
    big = _lengths_batch([40] * 8, 64, seed=23)     # batch bucket 8, 320 tokens: offsets 0, 40, ..., 320
    small = _lengths_batch([64, 64, 64, 64, 63], 64, seed=24)  # batch 5 in bucket 8, 319 -> 320 rows: same graph
    assert torch.equal(_hidden(graphs, big), _hidden(eager, big))
    out = _hidden(graphs, small)
    assert len(captures) == 1  # the offsets past batch 5 must not keep the big batch's (they would cover real rows)
    assert torch.equal(out, _hidden(eager, small))


def test_padded_graph_equals_the_eager_padded_path(captures):
    eager, graphs = _pair(_model(7), "fp32", unpad=False)
    inputs = _inputs(3, 77, seed=8)  # padded to the length bucket 128 inside the graph, keys masked
    out = _hidden(graphs, inputs)
    (key,) = _keys(graphs)
    assert (key.path, key.batch, key.length, key.tokens) == ("padded", 3, 128, 3 * 128)
    assert torch.equal(out, _hidden(eager, inputs))  # padded query positions too: they see the same real keys
    longer = _inputs(3, 120, seed=10, fully_padded_row=False)  # same graph, then the shorter batch again:
    assert torch.equal(_hidden(graphs, longer), _hidden(eager, longer))  # the longer call's mask and tokens
    assert torch.equal(_hidden(graphs, inputs), out) and len(captures) == 1  # past 77 must not be seen
    full = _inputs(3, 50, seed=9, fully_padded_row=False)
    full["attention_mask"].fill_(1)  # no padding: the padded path, graph of (3, 64)
    assert torch.equal(_hidden(graphs, full), _hidden(eager, full))
    assert [k.length for k in _keys(graphs)] == [128, 64]


def test_triton_backend_packed_graph_equals_eager(captures, triton_device):
    pytest.importorskip("triton")
    eager, graphs = _pair(_model(10, layers=1).to(triton_device), "fp32", backend="triton")
    inputs = {k: v.to(triton_device) for k, v in _inputs(3, 13, seed=11).items()}
    assert torch.equal(_hidden(graphs, inputs), _hidden(eager, inputs))
    assert _keys(graphs)[0].path == "packed"


def test_calls_over_the_token_budget_or_the_longest_bucket_run_eagerly(captures, monkeypatch):
    eager, graphs = _pair(_model(12), "fp32")
    inputs = _inputs(4, 40, seed=13)
    monkeypatch.setattr(cg, "GRAPH_MAX_TOKENS", cg.graph_tokens(int(inputs["attention_mask"].sum())) - 1)
    assert torch.equal(_hidden(graphs, inputs), _hidden(eager, inputs))
    assert not captures and not _keys(graphs)
    monkeypatch.setattr(cg, "GRAPH_BUCKETS", (16, 32))  # length 40 past the longest bucket
    monkeypatch.setattr(cg, "GRAPH_MAX_TOKENS", 1 << 20)
    assert torch.equal(_hidden(graphs, inputs), _hidden(eager, inputs))
    assert not captures


def test_cache_keeps_the_most_recently_used_graphs(captures, monkeypatch):
    monkeypatch.setattr(cg, "GRAPH_CACHE_SIZE", 2)
    _, graphs = _pair(_model(14), "fp32")
    a, b, c = _inputs(2, 9, seed=15), _inputs(2, 30, seed=16), _inputs(2, 60, seed=17)
    for inputs in (a, b, a, c):  # a is used again before c arrives: b is the least recently used
        _hidden(graphs, inputs)
    assert [k.length for k in _keys(graphs)] == [16, 64]
    assert len(captures) == 3


def test_a_failing_capture_runs_eagerly_and_says_so(monkeypatch):
    monkeypatch.setattr(cg, "CAPTURE_DEVICES", ("cuda", "cpu"))

    def failing(body, inputs, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cg, "capture_graph", failing)
    eager, graphs = _pair(_model(18), "fp32")
    inputs = _inputs(3, 20, seed=19)
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        out = _hidden(graphs, inputs)
    assert torch.equal(out, _hidden(eager, inputs))
    assert not _encoder(graphs).cuda_graphs and not _keys(graphs)
    assert any("stream is capturing" in n for n in graphs.bertsilicon_report.notes)


@pytest.mark.parametrize("host_read", [
    lambda t: t[0].item(), lambda t: bool(t[-1] > 0), lambda t: int(t.sum()), lambda t: t.tolist(),
    lambda t: t.nonzero(), lambda t: t[t > 0], lambda t: t.masked_select(t > 0), lambda t: t.unique(),
    lambda t: torch.tensor([1, 2], device=t.device),
], ids=["item", "bool", "int", "tolist", "nonzero", "bool-index", "masked_select", "unique", "torch.tensor"])
def test_the_stand_in_refuses_what_a_stream_capture_refuses(host_read):
    t = torch.arange(6, dtype=torch.int32)
    with pytest.raises(cg.GraphCaptureError), cg.no_host_reads():
        host_read(t)
    host_read(t)  # fine outside, and tolist is restored
    assert t.tolist() == list(range(6))


def test_the_stand_in_allows_the_work_of_a_graph():
    x, cu = torch.randn(8, 4), torch.tensor([0, 3, 8], dtype=torch.int32)
    with cg.no_host_reads():  # shapes, views, device-side copies and index ops with index tensors: all capturable
        y = x.new_zeros(8, 4).index_copy_(0, torch.arange(8), x @ torch.eye(4))
        x.index_select(0, cu[:2].long()), y[:3].copy_(x[:3]), cu[1:].fill_(8), torch.where(x > 0, x, 0.0)
    assert torch.equal(y, x)


def test_a_host_read_in_the_layers_turns_graphs_off_with_a_note(captures, monkeypatch):
    """A planted bug: the packed layers check their offsets on the host again (a sync per layer, which a CUDA
    capture refuses): the stand-in's capture fails as the GPU's would, the call runs eagerly, and says why."""
    eager, graphs = _pair(_model(30), "fp32")
    forward_packed = FusedEncoderLayer.forward_packed
    monkeypatch.setattr(FusedEncoderLayer, "forward_packed",
                        lambda self, x, cu, longest, stats=None, offsets_checked=False:
                        forward_packed(self, x, cu, longest, stats, offsets_checked=False))
    inputs = _inputs(4, 40, seed=31)
    with pytest.warns(UserWarning, match="CUDA graph capture failed.*tolist"):
        out = _hidden(graphs, inputs)
    assert torch.equal(out, _hidden(eager, inputs))
    assert not _encoder(graphs).cuda_graphs and not _keys(graphs) and not captures


def test_moving_the_model_drops_its_graphs(captures):
    _, graphs = _pair(_model(20), "fp32")
    _hidden(graphs, _inputs(2, 9, seed=21))
    assert _keys(graphs)
    graphs.to(torch.float32)  # nn.Module._apply: captured graphs would point at the old tensors
    assert not _keys(graphs) and _encoder(graphs).__dict__["graphs"].pool is None


def test_a_graph_captured_under_inference_mode_serves_no_grad_calls_too(captures):
    eager, graphs = _pair(_model(25), "fp32")
    inputs = _inputs(3, 30, seed=26)
    with torch.inference_mode():  # what benchmarks and servers use
        first = graphs(**inputs).last_hidden_state
    with torch.no_grad():  # the static inputs must be normal tensors, written outside inference mode
        second = graphs(**inputs).last_hidden_state
    assert len(captures) == 1 and _encoder(graphs).cuda_graphs and not graphs.bertsilicon_report.notes
    assert torch.equal(first, second) and torch.equal(second, _hidden(eager, inputs))


def test_the_gpu_benchmark_tells_a_graph_row_from_an_eager_one(captures):
    """bench/e2e/gpu.py marks a graph row 'failed: not the graph path' unless a graph serves that batch size."""
    import importlib
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    e2e = importlib.import_module("bench.e2e.gpu")
    eager, graphs = _pair(_model(27), "fp32")
    run = SimpleNamespace(model=graphs)
    assert e2e.graph_problem(run, 5) == "no graph was captured for batch 5"
    _hidden(graphs, _inputs(5, 40, seed=28))  # packed: the graph of batch bucket 8 serves batch 5
    assert e2e.graph_problem(run, 5) is None and e2e.graph_problem(run, 3) is not None
    assert e2e.graph_problem(SimpleNamespace(model=eager), 5) == "cuda_graphs is off"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphs_follow_weight_changes(captures, precision):
    """A replay never runs the layers' forwards: the encoder syncs the prepared copies in place first (the
    graph keeps reading the same tensors) and drops its graphs when a tensor the layers read was replaced."""
    model = _model(29)
    eager, graphs = _pair(model, precision)
    inputs = _inputs(4, 30, seed=30)
    before = _hidden(graphs, inputs)
    other = _model(31).state_dict()
    for m in (eager, graphs):  # in place: same parameters, new values (prepared copies re-derived in place)
        m.load_state_dict(other)
    after = _hidden(graphs, inputs)
    assert len(captures) == 1 and not torch.equal(after, before)
    assert torch.equal(after, _hidden(eager, inputs))
    for m in (eager, graphs):  # replaced: a new Parameter object, read directly by fp32 GEMMs / LayerNorm
        ln = m.encoder.layer[0].output.LayerNorm
        ln.weight = torch.nn.Parameter(ln.weight.detach() * 1.5)
    replaced = _hidden(graphs, inputs)
    assert len(captures) == 2, "a replaced parameter must drop the graphs that read the old one"
    assert not torch.equal(replaced, after) and torch.equal(replaced, _hidden(eager, inputs))




def test_optimize_captures_no_graph_for_its_calibration_batch(captures):
    """optimize's own error measurement runs eagerly: no graph is captured (and held) for the calibration shape."""
    calib = _inputs(4, 19, seed=99)
    model = bertsilicon.optimize(_model(33), "fp32", backend="cpu", calibration=calib, cuda_graphs=True)
    assert _encoder(model).cuda_graphs and model.bertsilicon_report.cuda_graphs
    assert not captures and not _keys(model)
    _hidden(model, calib)  # the same shape afterwards: captured now, on the first real call
    assert len(captures) == 1 and len(_keys(model)) == 1
