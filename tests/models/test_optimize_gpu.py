"""bertsilicon.optimize with backend="triton": numerics, unpadding and the CUDA-graph path.

Every test that can also run without a GPU does: on CPU tensors under the Triton interpreter with one-layer
models (hidden 52, 2 heads: head dim 26; 3 sequences of length <= 13, one fully padded), so CI runs this code.
On a GPU (``triton_device`` is "cuda") the same tests use student shapes (TinyBERT-4's hidden 312 / 12 heads:
head dim 26, and DistilBERT's 768 / 12: head dim 64; length 77) and the real MiniLM-L6 on real text for int8. The CUDA-graph tests need a GPU
and are marked ``gpu``. Rules (docs/architecture.md): bf16/fp16 vs HF in the same dtype, both against HF in float64,
error <= 2x HF's + one ulp; int8 mean-pooled cosine >= 0.995 vs fp32 for every sentence.
"""
import copy

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon.models import cuda_graphs as cg
from bertsilicon.models.encoder import FusedEncoder
from bertsilicon.models.eval import mean_pool, pooled_cosines
from numerics import assert_numerics, ragged_mask

# CPU: one layer, hidden 52 = 2 heads of 26, and <= 32 tokens, so every GEMM is one row of 32-wide tiles (the
# interpreter costs ~10 ms per program instance)
TINY = {"bert": dict(num_hidden_layers=1, hidden_size=52, num_attention_heads=2, intermediate_size=40),
        "distilbert": dict(n_layers=1, dim=52, n_heads=2, hidden_dim=40)}
STUDENT = {"bert": ("tinybert4", {}), "distilbert": ("distilbert", dict(n_layers=3))}  # on a GPU


def _model(kind: str, device: str, seed: int = 0):
    """A random-weight BERT / DistilBERT, eval mode, fp32, on ``device``: student-shaped on CUDA, tiny on CPU.

    Weights are drawn with std 1.5 / sqrt(hidden) instead of HF's 0.02, so q and k have std ~1.5 and the
    attention scores a spread of a few units: with 0.02 every softmax is flat and an attention bug (a wrong
    scale, a wrong mask) hardly moves the output."""
    if device == "cuda":
        name, overrides = STUDENT[kind]
    else:
        name, overrides = ("bert-base" if kind == "bert" else "distilbert"), TINY[kind]
    cfg = bertsilicon.student_config(name, **overrides)
    cfg.initializer_range = 1.5 / (cfg.hidden_size if kind == "bert" else cfg.dim) ** 0.5
    torch.manual_seed(seed)
    cls = transformers.BertModel if kind == "bert" else transformers.DistilBertModel
    return cls(cfg).eval().to(device)


def _inputs(device: str, batch: int = None, length: int = None, seed: int = 1):
    """Random token ids and a ragged mask (row 0 full, the last row fully padded)."""
    batch = batch or (6 if device == "cuda" else 3)
    length = length or (77 if device == "cuda" else 13)
    g = torch.Generator().manual_seed(seed)
    mask = ragged_mask(batch, length, g)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _optimize(model, precision, **kwargs):
    """optimize on a copy, backend="triton", calibrated on a random batch other than the test inputs."""
    device = next(model.parameters()).device.type
    kwargs.setdefault("calibration", _inputs(device, seed=99))
    return bertsilicon.optimize(copy.deepcopy(model), precision, backend="triton", **kwargs)


def _hidden(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


# ---------------------------------------------------------------------------------------------- #
# runs on CPU under the interpreter too                                                           #
# ---------------------------------------------------------------------------------------------- #
GPU_ONLY = pytest.mark.gpu  # combinations CI skips to stay fast; a GPU run (python -m bench.gpu) runs them


@pytest.mark.parametrize("kind,precision,dtype", [
    ("bert", "fp16", torch.float16), ("bert", "bf16", torch.bfloat16), ("distilbert", "fp16", torch.float16),
    pytest.param("distilbert", "bf16", torch.bfloat16, marks=GPU_ONLY)])
def test_half_precisions_follow_the_tolerance_rule(triton_device, kind, precision, dtype):
    model = _model(kind, triton_device)
    inputs = _inputs(triton_device)
    ref64 = _hidden(copy.deepcopy(model).double(), inputs)
    hf_half = _hidden(copy.deepcopy(model).to(dtype), inputs)
    m = _optimize(model, precision)
    assert set(m.bertsilicon_report.backends_used.values()) == {"triton"}
    out = _hidden(m, inputs)
    assert out.dtype == torch.float32 and out.device.type == triton_device
    real = inputs["attention_mask"].bool()
    assert_numerics(out[real].cpu(), ref64[real].cpu(), hf_half[real].cpu(), f"{kind} optimize({precision}) vs HF {dtype}")
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))  # unpad=True: padded positions are 0


@pytest.mark.parametrize("kind", ["bert", pytest.param("distilbert", marks=GPU_ONLY)])
def test_unpadded_path_equals_padded_path_at_real_positions(triton_device, kind):
    model = _model(kind, triton_device, seed=3)
    inputs = _inputs(triton_device, seed=4)
    unpadded = _hidden(_optimize(model, "fp32", unpad=True), inputs)
    padded = _hidden(_optimize(model, "fp32", unpad=False), inputs)
    real = inputs["attention_mask"].bool()
    assert not torch.isnan(unpadded).any() and not torch.isnan(padded[real]).any()
    torch.testing.assert_close(unpadded[real], padded[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(unpadded[~real], torch.zeros_like(unpadded[~real]))


@pytest.mark.parametrize("precision,unpad,smooth", [
    ("fp32", True, None), ("fp16", True, None), ("bf16", False, None), ("int8", True, 0.5), ("int8", False, None)])
def test_direct_triton_launches_equal_the_public_ops(triton_device, monkeypatch, precision, unpad, smooth):
    """The layers call the triton launchers directly (bertsilicon/backends/triton/layer.py): bit for bit what
    the same layers give through the public ops (validation + dispatch per op), and no public op runs."""
    from bertsilicon import ops
    from bertsilicon.models.layers import FusedEncoderLayer

    model = _model("bert", triton_device, seed=12)
    inputs = _inputs(triton_device, seed=13)
    direct = _optimize(model, precision, unpad=unpad, smooth=smooth, cuda_graphs=False)
    # optimize calibrates through the direct path: a wrong int8 GEMM there would move every GEMM to fp32
    assert {p for layer in _encoder(direct).layer for p in layer.gemm_precision.values()} == {precision}
    public = copy.deepcopy(direct)
    for layer in _encoder(public).layer:
        layer.direct_launch = False
    with torch.no_grad():
        want = public(**inputs).last_hidden_state
        calls = {"public": 0}

        def refuse(*args, **kwargs):
            calls["public"] += 1
            raise AssertionError("a public op ran on the direct path")
        with monkeypatch.context() as m:
            for name in ("linear", "add_layernorm", "attention", "attention_varlen", "quantize", "int8_linear"):
                m.setattr(ops, name, refuse)
            got = direct(**inputs).last_hidden_state
    assert calls["public"] == 0 and all(layer.direct_triton(got.new_zeros(1, layer.hidden))
                                        for layer in _encoder(direct).layer)
    assert torch.equal(got, want)


def test_direct_triton_launches_keep_an_unservable_op_on_the_public_path(triton_device):
    """backend=None and an op the triton kernels refuse (a head dim over 128): the layer takes the public path,
    which sends that op to the reference — never a triton launch it cannot do."""
    layer = _encoder(_optimize(_model("bert", triton_device), "fp32")).layer[0]
    layer.backend = None
    x = torch.zeros(1, layer.hidden, device=triton_device)
    layer.head_dim, saved = 130, layer.head_dim  # what backends_used asks the attention check about
    try:
        if triton_device == "cpu":  # backend=None on CPU tensors is the cpu backend's: never direct triton
            assert not layer.direct_triton(x)
        else:
            assert layer.backends_used(x)["attention"] == "reference" and not layer.direct_triton(x)
    finally:
        layer.head_dim = saved
    layer._direct_verdicts.clear()
    layer.backend = "triton"
    strided = torch.zeros(layer.hidden, 2, device=triton_device).t()  # [2, H], last-dim stride 2
    assert layer.direct_triton(x) and not layer.direct_triton(strided)


def _int8_case(device):
    """(fp32 model, test inputs, calibration): the real MiniLM and real text on a GPU; tiny random BERT on CPU."""
    if device != "cuda":
        return _model("bert", device, seed=5), _inputs(device, seed=6), _inputs(device, seed=7)
    tok = bertsilicon.load_tokenizer()
    texts = (bertsilicon.data.corpus("docstrings").subset(16, seed=7).texts
             + bertsilicon.data.corpus("pydoc").subset(16, seed=7).texts)
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    calib = bertsilicon.data.corpus("pydoc").subset(8, seed=11).texts  # disjoint from the test texts' seed
    return bertsilicon.load_student("minilm-l6").to(device), inputs, calib


def test_int8_pooled_cosine_every_sentence(triton_device):
    model, inputs, calib = _int8_case(triton_device)
    m = _optimize(model, "int8", smooth=0.5, calibration=calib)
    report = m.bertsilicon_report
    assert report.backends_used["int8_linear"] == "triton" and report.backends_used["quantize"] == "triton"
    assert any(g == "int8" for r in report.layers for g in r.gemms.values())
    rows = inputs["attention_mask"].bool().any(1)  # sentences with a real token
    got = mean_pool(_hidden(m, inputs), inputs["attention_mask"])[rows]
    ref = mean_pool(_hidden(model, inputs), inputs["attention_mask"])[rows]
    cos = pooled_cosines(got.cpu(), ref.cpu())
    assert float(cos.min()) >= 0.995, f"worst sentence cosine {float(cos.min()):.5f}"


# ---------------------------------------------------------------------------------------------- #
# CUDA graphs (GPU only)                                                                          #
# ---------------------------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def graph_models():
    """(HF fp32 model, eager fp16, graphs fp16): both optimized with unpad=False, so the graph path (which runs
    the padded layers) and the eager path run the same kernels on the same shapes at a full bucket length."""
    model = _model("bert", "cuda", seed=8)
    eager = _optimize(model, "fp16", unpad=False, cuda_graphs=False)
    graphs = _optimize(model, "fp16", unpad=False, cuda_graphs=True)
    return model, eager, graphs


def _graph_keys(model) -> list:
    """The ``GraphKey``s of the graphs the model's encoder holds, least recently used first."""
    return list(_encoder(model).__dict__["graphs"].graphs)


def _encoder(model) -> FusedEncoder:
    return next(m for m in model.modules() if isinstance(m, FusedEncoder))


@pytest.fixture
def captures(monkeypatch):
    """The CUDA graphs created while the test runs (``torch.cuda.CUDAGraph`` wrapped by a counting factory)."""
    made, real = [], torch.cuda.CUDAGraph

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(torch.cuda, "CUDAGraph", counting)
    return made


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager_and_reuses_its_bucket(graph_models, captures):
    model, eager, graphs = graph_models
    bucket = 128
    assert bucket in cg.GRAPH_BUCKETS
    full = _inputs("cuda", batch=4, length=bucket, seed=9)  # a full bucket: no bucket padding
    got = _hidden(graphs, full)
    assert len(captures) == 1
    assert cg.GraphKey("padded", 4, bucket, 4 * bucket, torch.float16, got.device) in _graph_keys(graphs)
    assert torch.equal(got, _hidden(eager, full)), "graph replay differs from the eager padded path"
    assert _encoder(graphs).cuda_graphs and not graphs.bertsilicon_report.notes  # no capture fell back

    shorter = _inputs("cuda", batch=4, length=77, seed=10)  # same bucket: replays the same graph
    keys = _graph_keys(graphs)
    out = _hidden(graphs, shorter)
    assert len(captures) == 1 and _graph_keys(graphs) == keys, "a length in the same bucket captured again"
    real = shorter["attention_mask"].bool()
    ref64 = _hidden(copy.deepcopy(model).double(), shorter)
    hf16 = _hidden(copy.deepcopy(model).half(), shorter)
    assert_numerics(out[real].cpu(), ref64[real].cpu(), hf16[real].cpu(), "graph replay, length 77 in bucket 128")
    assert torch.equal(out, _hidden(eager, shorter)), "bucket padding changed the real positions"


@pytest.mark.gpu
def test_calls_over_the_token_budget_run_eagerly(graph_models, captures):
    _, eager, graphs = graph_models
    batch = cg.GRAPH_MAX_TOKENS // 64 + 1  # batch x length bucket 64 > GRAPH_MAX_TOKENS
    big = _inputs("cuda", batch=batch, length=64, seed=11)
    assert torch.equal(_hidden(graphs, big), _hidden(eager, big))
    assert not captures and not any(k.batch == batch for k in _graph_keys(graphs))


@pytest.mark.gpu
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("int8", None)])
def test_packed_cuda_graph_equals_the_eager_padding_free_path(captures, precision, dtype):
    """unpad=True: the graph runs the layers on the packed real tokens (scratch rows up to the token bucket,
    empty sequences up to the batch bucket); bit for bit the eager padding-free path."""
    model = _model("distilbert", "cuda", seed=12)
    kwargs = dict(smooth=0.5) if precision == "int8" else {}
    m = _optimize(model, precision, cuda_graphs=True, **kwargs)
    eager = _optimize(model, precision, cuda_graphs=False, **kwargs)
    inputs = _inputs("cuda", batch=6, length=50, seed=13)  # batch bucket 8, length bucket 64
    out = _hidden(m, inputs)
    (key,) = _graph_keys(m)
    real = inputs["attention_mask"].bool()
    assert (key.path, key.batch, key.length, key.tokens) == ("packed", 8, 64, cg.graph_tokens(int(real.sum())))
    assert not m.bertsilicon_report.notes and len(captures) == 1
    assert torch.equal(out, _hidden(eager, inputs))
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))
    again = _inputs("cuda", batch=5, length=60, seed=14)  # another batch: replayed or captured, never stale
    assert torch.equal(_hidden(m, again), _hidden(eager, again))
    if dtype is not None:
        ref64 = _hidden(copy.deepcopy(model).double(), inputs)
        hf = _hidden(copy.deepcopy(model).to(dtype), inputs)
        assert_numerics(out[real].cpu(), ref64[real].cpu(), hf[real].cpu(), f"packed graph, {precision}")


@pytest.mark.gpu
def test_the_headline_batch_replays_a_graph():
    """Issue 5's GPU target shape, batch 32 x 128 of real text on the real MiniLM: a packed graph, no fallback."""
    model, _, _ = _int8_case("cuda")
    tok = bertsilicon.load_tokenizer()
    texts = bertsilicon.data.corpus("pydoc").subset(32, seed=3).texts
    enc = tok(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    inputs = {k: enc[k].cuda() for k in ("input_ids", "attention_mask")}
    m = _optimize(model, "fp16", calibration=None, cuda_graphs=True)
    out = _hidden(m, inputs)
    (key,) = _graph_keys(m)
    assert key.path == "packed" and key.batch == 32 and key.length == 128 and not m.bertsilicon_report.notes
    assert m.bertsilicon_report.layers[0].call.startswith("CUDA graph (calls on <= 8192 token rows), else per op")
    eager = _optimize(model, "fp16", calibration=None, cuda_graphs=False)
    assert torch.equal(out, _hidden(eager, inputs))


@pytest.mark.gpu
def test_graph_calls_on_two_streams_see_their_own_inputs(graph_models):
    """The static buffers are shared: a call on a second stream must wait for the first call's copy-out."""
    _, eager, graphs = graph_models
    a, b = _inputs("cuda", batch=4, length=128, seed=40), _inputs("cuda", batch=4, length=128, seed=41)
    _hidden(graphs, a)  # captured (or replayed) on the default stream
    streams = torch.cuda.Stream(), torch.cuda.Stream()
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())  # the inputs were made on the default stream
    with torch.cuda.stream(streams[0]):
        out_a = _hidden(graphs, a)
    with torch.cuda.stream(streams[1]):
        out_b = _hidden(graphs, b)
    torch.cuda.synchronize()
    assert torch.equal(out_a, _hidden(eager, a)) and torch.equal(out_b, _hidden(eager, b))


@pytest.mark.gpu
def test_gradients_on_cuda_keep_the_graph_forward_and_get_hfs_gradients(captures):
    """Grad mode with weights that require a gradient: the forward is the graph replay's (bit for bit the
    no-grad call), the gradients are HF's (tests/ops/test_gradients.py on CPU); with frozen weights a grad-mode
    call needs no autograd at all and replays the same graph."""
    model = _model("bert", "cuda", seed=21)
    inputs = _inputs("cuda", batch=4, length=64, seed=22)
    m = _optimize(model, "fp16", cuda_graphs=True)
    plain = _hidden(m, inputs)
    assert len(captures) == 1
    real = inputs["attention_mask"].bool()
    weight = torch.randn(plain.shape, device="cuda") * real[..., None]

    def grads(net):
        net.zero_grad()
        out = net(**inputs).last_hidden_state
        (out * weight).sum().backward()
        return out.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    out, got = grads(m)
    _, expected = grads(copy.deepcopy(model))
    assert torch.equal(out, plain) and len(captures) == 1, "the grad-mode forward must replay the same graph"
    assert got.keys() == expected.keys() and any(".layer." in n for n in got)
    for name, g in got.items():  # the same HF kernels on the same input: equal up to cuBLAS's reduction order
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    for p in m.parameters():
        p.requires_grad_(False)
    frozen = m(**inputs).last_hidden_state
    assert frozen.grad_fn is None and torch.equal(frozen, plain) and len(captures) == 1
    assert m.bertsilicon_report.recomputed_backward == 1
