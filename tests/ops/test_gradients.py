"""Gradients through the fused ops and through an optimized model.

The C++ and Triton kernels are forward kernels. An op whose inputs require a gradient (in grad mode)
runs its kernel forward and the backward of its reference definition, recomputed from the saved inputs
(``ops.reference_backward``), on every backend and under ``torch.compile`` too. So:

- the forward is the kernel's, bit for bit the same as without autograd;
- the gradients equal ``backend="reference"``'s bit for bit, whichever backend ran the forward;
- and they are the right ones: the reference's backward in float64 passes ``torch.autograd.gradcheck``,
  fully padded attention rows included (no NaN from a softmax over no keys).

An optimized model in eval mode but grad mode (no ``torch.no_grad()``) with weights or inputs that
require a gradient runs the fused forward and gets, in backward, the original layers' gradients
recomputed from the encoder's input: bit for bit HF's gradients of every parameter and of the input
embeddings for a loss on real tokens, in every precision. Before this, such a call returned an output
without ``grad_fn``: the gradients were silently cut at the encoder.
"""
import copy

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon import ops
from bertsilicon import reference as R
from bertsilicon.backends import registry
from numerics import ragged_mask

BACKENDS = [b for b in ("cpu", "triton") if registry.load(b) is None]


def _leaf(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
    return t.detach().clone().requires_grad_(grad)


def _cases(dtype: torch.dtype, seed: int):
    """(op name, args with float leaves that require grad, kwargs): every op at odd sizes."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0):
        return _leaf((torch.randn(*shape, generator=g) * scale).to(dtype))

    mask = ragged_mask(3, 13, g, fully_padded_row=True)
    lengths = mask.sum(1).to(torch.int32)
    cu = torch.zeros(4, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    T = int(cu[-1])
    xq = torch.randint(-127, 128, (5, 37), generator=g, dtype=torch.int8)
    wq = torch.randint(-127, 128, (19, 37), generator=g, dtype=torch.int8)
    fp32 = {"x_scale": _leaf(torch.rand(5, 1, generator=g) * 0.02 + 0.01),
            "w_scale": _leaf(torch.rand(19, generator=g) * 0.02 + 0.01), "bias": _leaf(torch.randn(19, generator=g))}
    return [
        ("attention", (rn(3, 2, 13, 26), rn(3, 2, 13, 26), rn(3, 2, 13, 26), mask), {}),
        ("attention_varlen", (rn(T, 2, 26), rn(T, 2, 26), rn(T, 2, 26), cu, int(lengths.max())), {}),
        ("bias_gelu", (rn(7, 77), rn(77)), {"approximate": "none"}),
        ("bias_gelu", (rn(7, 77), rn(77)), {"approximate": "tanh"}),
        ("add_layernorm", (rn(7, 77), rn(7, 77), rn(77), rn(77)), {"eps": 1e-5}),
        ("linear", (rn(7, 37), rn(19, 37, scale=0.2), rn(19)), {"activation": "gelu"}),
        ("linear", (rn(7, 37), rn(19, 37, scale=0.2), None), {"activation": "relu"}),
        ("quantize", (rn(7, 77),), {"granularity": "per_token"}),
        ("int8_linear", (xq, fp32["x_scale"], wq, fp32["w_scale"], fp32["bias"]), {"activation": "gelu"}),
    ]


def _loss(out, seed: int) -> torch.Tensor:
    """A loss that weighs every float output element differently (quantize: its scales)."""
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point()]
    g = torch.Generator().manual_seed(seed)
    return sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)


def _grads(op, args, kwargs, backend):
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    for a in leaves:
        a.grad = None
    out = getattr(ops, op)(*args, **kwargs, backend=backend)
    _loss(out, 1).backward()
    return out, [a.grad for a in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index", range(9))
def test_kernel_forward_reference_backward(backend, dtype, index):
    op, args, kwargs = _cases(dtype, seed=index)[index]
    with torch.no_grad():
        try:
            plain = getattr(ops, op)(*args, **kwargs, backend=backend)
        except ValueError as exc:
            if "cannot serve" not in str(exc):
                raise
            pytest.skip(f"{backend} has no {op} kernel for {dtype}: {exc}")
    out, grads = _grads(op, args, kwargs, backend)
    assert out.grad_fn is not None if not isinstance(out, tuple) else out[1].grad_fn is not None
    for a, b in zip(out if isinstance(out, tuple) else (out,), plain if isinstance(plain, tuple) else (plain,)):
        assert torch.equal(a, b), "the forward under autograd must be the kernel's"
    ref_out, ref_grads = _grads(op, args, kwargs, "reference")
    assert len(grads) == len(ref_grads) > 0
    for g, rg in zip(grads, ref_grads):
        assert g is not None and rg is not None
        assert torch.equal(g, rg), f"{op} on {backend}: gradient differs from the reference backend's"


@pytest.mark.parametrize("index", range(9))
def test_reference_backward_is_right_in_float64(index):
    """The backward every backend uses, checked by finite differences (fully padded attention row included)."""
    op, args, kwargs = _cases(torch.float64, seed=index)[index]
    tol = {"eps": 1e-6, "atol": 1e-7, "rtol": 1e-5}
    if op == "quantize":
        # the scale is amax / 127, returned in fp32 (the contract), so the finite difference is taken over a
        # step of 1e-3 (exact: amax is linear near a unique maximum, which the ramp makes) and carries fp32's
        # rounding of the scale: ~2e-9 / (1e-3 / 127) = 2.4e-4 relative
        args = (_leaf(args[0].detach() + torch.linspace(0, 3, 77, dtype=torch.float64)),)
        tol = {"eps": 1e-3, "atol": 1e-6, "rtol": 1e-3}
    if op == "int8_linear":
        args = tuple(_leaf(a.double()) if a.is_floating_point() else a for a in args)
        kwargs = {**kwargs, "out_dtype": torch.float64}
    leaves = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*xs):
        full = list(args)
        for i, x in zip(leaves, xs):
            full[i] = x
        out = getattr(R, op)(*full, **kwargs)  # the reference itself: ops.int8_linear has no float64 output
        return tuple(o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point())

    assert torch.autograd.gradcheck(f, tuple(args[i] for i in leaves), **tol)


def test_fully_padded_attention_row_has_zero_not_nan_gradients():
    for backend in ["reference", *BACKENDS]:
        op, args, kwargs = _cases(torch.float32, seed=3)[0]
        q, k, v, mask = args
        mask = mask.clone()
        mask[1] = False
        _, (gq, gk, gv) = _grads(op, (q, k, v, mask), kwargs, backend)
        for g in (gq, gk, gv):
            assert torch.isfinite(g).all(), backend
        assert torch.equal(gq[1], torch.zeros_like(gq[1])) and torch.equal(gk[1], torch.zeros_like(gk[1]))


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_torch_compile_uses_the_same_backward(backend):
    op, args, kwargs = _cases(torch.float32, seed=5)[5]  # linear + gelu
    compiled = torch.compile(lambda x, w, b: ops.linear(x, w, b, **kwargs, backend=backend), backend="eager",
                             fullgraph=True)
    for a in args:
        a.grad = None
    _loss(compiled(*args), 1).backward()
    got = [a.grad for a in args]
    _, expected = _grads(op, args, kwargs, "reference")
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_no_autograd_when_nothing_requires_grad():
    x, b = torch.randn(4, 40), torch.randn(40)
    assert ops.bias_gelu(x, b).grad_fn is None
    with torch.no_grad():
        assert ops.bias_gelu(_leaf(x), b).grad_fn is None


# -- an optimized model ------------------------------------------------------------------------------- #
def _bert(seed: int) -> transformers.BertModel:
    cfg = bertsilicon.student_config("bert-base", num_hidden_layers=2, hidden_size=52, num_attention_heads=2,
                                     intermediate_size=72)  # head dim 26
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def _distilbert(seed: int) -> transformers.DistilBertModel:
    cfg = transformers.DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=2, hidden_dim=96)
    torch.manual_seed(seed)
    return transformers.DistilBertModel(cfg).eval()


def _inputs(seed: int, batch: int = 4, length: int = 21) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = ragged_mask(batch, length, g, fully_padded_row=False)
    return {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g), "attention_mask": mask}


def _grads_of(model, inputs, seed: int, padded_too: bool):
    """(output, {name: grad}, grad of the input embeddings) for a random linear loss on every position
    (``padded_too``) or on the real tokens only."""
    model.zero_grad()
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).last_hidden_state
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out.shape, generator=g)
    if not padded_too:
        weight = weight * inputs["attention_mask"][..., None]
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, embeds.grad


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("make", [_bert, _distilbert], ids=["bert", "distilbert"])
@pytest.mark.parametrize("unpad", [True, False])
def test_optimized_model_gets_the_original_models_gradients(precision, make, unpad):
    """The loss weighs padded positions too: with ``unpad`` the fused output there is the constant 0, so
    the gradients are HF's for the loss on the real tokens; without, the padded outputs are HF's."""
    hf = make(1)
    inputs = _inputs(2)
    _, hf_grads, hf_input_grad = _grads_of(hf, inputs, seed=3, padded_too=not unpad)
    model = bertsilicon.optimize(copy.deepcopy(hf), precision, unpad=unpad, calibration=_inputs(9, 4, 19))
    with torch.no_grad():
        fused_out = model(**inputs).last_hidden_state
    out, grads, input_grad = _grads_of(model, inputs, seed=3, padded_too=True)
    assert torch.equal(out, fused_out), "the forward with gradients must be the fused forward"
    assert model.bertsilicon_report.recomputed_backward == 1 and not model.bertsilicon_report.runtime_fallbacks
    assert grads.keys() == hf_grads.keys() and any("layer" in n for n in grads)
    for name in grads:
        assert torch.equal(grads[name], hf_grads[name]), name
    assert torch.equal(input_grad, hf_input_grad)
    assert "calls with gradients" in str(model.bertsilicon_report)


def test_autograd_grad_on_the_encoder_parameters():
    """``torch.autograd.grad(loss, params)`` (not only ``.backward()``) reaches the fused encoder's weights."""
    hf, inputs = _bert(4), _inputs(5)
    model = bertsilicon.optimize(copy.deepcopy(hf), "fp32")
    params = [model.encoder.layer[1].intermediate.dense.weight, model.encoder.layer[0].attention.self.query.weight]
    ref_params = [hf.encoder.layer[1].intermediate.dense.weight, hf.encoder.layer[0].attention.self.query.weight]
    real = inputs["attention_mask"].bool()
    got = torch.autograd.grad(model(**inputs).last_hidden_state[real].sum(), params)
    expected = torch.autograd.grad(hf(**inputs).last_hidden_state[real].sum(), ref_params)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_frozen_model_in_grad_mode_runs_without_autograd():
    model = bertsilicon.optimize(_bert(6), "fp32")
    for p in model.parameters():
        p.requires_grad_(False)
    out = model(**_inputs(7)).last_hidden_state  # grad mode on, nothing requires a gradient
    assert out.grad_fn is None and model.bertsilicon_report.recomputed_backward == 0


def test_gradients_with_hidden_states_run_the_original_layers():
    hf, inputs = _bert(8), _inputs(9)
    model = bertsilicon.optimize(copy.deepcopy(hf), "fp32")
    out = model(**inputs, output_hidden_states=True)
    expected = hf(**inputs, output_hidden_states=True)
    assert all(h.grad_fn is not None for h in out.hidden_states[1:])
    assert torch.equal(out.last_hidden_state, expected.last_hidden_state)  # the original layers ran
    assert model.bertsilicon_report.runtime_fallbacks["gradients needed with output_hidden_states"] == 1
    with torch.no_grad():
        model(**inputs, output_hidden_states=True)
    assert model.bertsilicon_report.runtime_fallbacks["gradients needed with output_hidden_states"] == 1
