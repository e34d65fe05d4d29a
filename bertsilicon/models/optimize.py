"""``bertsilicon.optimize(model)``: run a Hugging Face BERT-family model on the fused ops; ``restore`` undoes it.

The model object, its class and its ``forward`` signature stay the same; only the encoder (the module
holding ``layer``: ``BertModel.encoder``, likewise RoBERTa, XLM-R, CamemBERT, ELECTRA and MobileBERT's, and
``DistilBertModel.transformer``) is swapped for a :class:`FusedEncoder` whose layers are
:class:`~bertsilicon.models.fused_layer.FusedEncoderLayer` (MobileBERT:
:class:`~bertsilicon.models.fused_mobilebert.FusedMobileBertLayer`).
The fused layers keep the original sub-modules under their original names, so ``state_dict()`` keys,
``parameters()``, ``.to()`` and ``save_pretrained`` see the original model.

Per call, the encoder:

1. turns HF's attention mask (2-D, or the 4-D bool/additive mask HF builds) into a key-padding mask;
2. ``unpad=True``: gathers the real tokens once (``[T, H]``), runs every layer on them with
   ``ops.attention_varlen``, and scatters back into ``[B, L, H]``; padded positions of the output are
   **0** (HF computes values there from the padding tokens; no head reads them; reproducing them would
   cost the GEMMs unpadding saves — use ``unpad=False`` to get them). Without padding, or with
   ``unpad=False``, the padded path runs (``ops.attention`` with the mask; padded positions as HF);
3. runs the original layers instead (exactly HF) when a call needs what the fused layer does not do:
   training mode, ``output_attentions``, cross-attention / cache inputs, or a 4-D mask that is not a
   key-padding mask. ``model.bertsilicon_report.runtime_fallbacks`` counts such calls by reason.

4. on a CUDA model (``cuda_graphs``), replays a captured CUDA graph of the layers instead of launching
   their kernels one by one from Python, when they run on at most ``GRAPH_MAX_TOKENS`` token rows: on the
   padding-free path the graph of the (batch, length, token) bucket runs on the packed tokens (the gather,
   the scatter back and one device sync stay outside it), otherwise the padded layers' graph of
   (batch, length bucket). Same kernels and tile configs on the same rows as the eager path.

``output_hidden_states`` works on both paths (the encoder hands HF's output collector its states; such
calls run eagerly).

Gradients: a call in grad mode whose input or encoder weights require a gradient (an eval-mode model
outside ``torch.no_grad()``) runs the fused forward, and its backward is the original layers' backward,
recomputed on the encoder's input as activation checkpointing does (:class:`_FusedForwardOriginalBackward`;
the report counts such calls). A call that needs no gradient runs under ``no_grad``, graphs included.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .. import ops, quant
from . import bert, distilbert, electra, mobilebert, roberta
from .fused_layer import PRECISIONS, FusedLayerBase
from .report import LayerReport, OptimizeReport

__all__ = ["optimize", "restore", "FusedEncoder", "supported_classes", "DEFAULT_INT8_BUDGET"]

ADAPTERS = (bert.ADAPTER, distilbert.ADAPTER, *roberta.ADAPTERS, electra.ADAPTER, mobilebert.ADAPTER)
COMPUTE_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
# int8 per-layer budget: a layer whose relative output error (alone, on the calibration batch) exceeds
# it moves its most sensitive int8 GEMMs to a higher precision until it fits: first to bf16 where the
# backend has a native bf16 GEMM (AVX512_BF16 CPUs, GPUs with bf16), then, if that is not enough, to fp32.
DEFAULT_INT8_BUDGET = 2e-2
CALIBRATION_SENTENCES = 8
CALIBRATION_MAX_LENGTH = 128
GRAPH_BUCKETS = (16, 32, 64, 128, 256, 512)  # sequence-length buckets of the CUDA graphs (longer: eager)
GRAPH_MAX_TOKENS = 8192  # graphs for calls whose layers run on <= this many token rows (see FusedEncoder)
GRAPH_CACHE_SIZE = 32    # captured graphs kept per encoder, least recently used dropped
_STATE = "_bertsilicon_state"


def supported_classes() -> list[str]:
    """Names of the model classes :func:`optimize` accepts."""
    import transformers

    names = []
    for adapter in ADAPTERS:  # every class of the family's modeling module deriving from its PreTrainedModel
        base = adapter.pretrained_class
        for name, obj in vars(sys.modules[base.__module__]).items():
            if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and hasattr(transformers, name):
                names.append(name)
    return sorted(set(names))


# ---------------------------------------------------------------------------------------------- #
# HF output collector (output_hidden_states / output_attentions in transformers 5.x)              #
# ---------------------------------------------------------------------------------------------- #
_COLLECTOR_VAR: list = []


def _collector() -> Optional[dict]:
    """The dict HF's ``capture_outputs`` collects requested outputs into for this call, or None."""
    if not _COLLECTOR_VAR:
        for mod in ("transformers.utils.output_capturing", "transformers.utils.generic"):
            try:
                _COLLECTOR_VAR.append(getattr(__import__(mod, fromlist=["_active_collector"]), "_active_collector"))
                break
            except (ImportError, AttributeError):
                continue
        else:
            _COLLECTOR_VAR.append(None)
    var = _COLLECTOR_VAR[0]
    return None if var is None else var.get()


def _append_hidden(collected: dict, h: torch.Tensor) -> None:
    states = collected["hidden_states"]
    selection = collected.get("_hidden_states_layers")
    states.append(h if selection is None or len(states) in selection else None)


def _hf_hooked(module: nn.Module) -> bool:
    return any(getattr(h, "__name__", "") == "output_capturing_hook" for h in module._forward_hooks.values())


class _NotKeyPadding(Exception):
    pass


def key_padding_mask(mask: Optional[torch.Tensor], batch: int, length: int) -> Optional[torch.Tensor]:
    """``[B, L]`` bool (True = real token) from HF's encoder mask, or None when every token is real.

    Accepts a 2-D 0/1 mask, HF's 4-D bool mask (True = attend) or 4-D additive float mask (0 = attend,
    dtype-min = masked). Raises :class:`_NotKeyPadding` for a 4-D mask that is not a key-padding mask.
    Every check is computed on the mask's device and read back at once: one device sync for a CUDA mask."""
    if mask is None:
        return None
    checks = []  # booleans that must all hold for a key-padding mask
    if mask.dim() == 2:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected [batch, length] = [{batch}, {length}]")
        real = mask != 0
    elif mask.dim() == 4 and mask.shape[0] == batch and mask.shape[-1] == length:
        if mask.dtype == torch.bool:
            attend = mask
        else:  # additive: every value 0 (attend) or about dtype-min (masked)
            attend = mask == 0
            checks.append((attend | (mask <= torch.finfo(mask.dtype).min / 2)).all())
        real = attend[:, 0].all(dim=1)
        checks.append((attend == real[:, None, None, :]).all())  # the same keys masked for every query
    else:
        raise _NotKeyPadding
    all_real, *ok = torch.stack([real.all(), *checks]).tolist()
    if not all(ok):
        raise _NotKeyPadding
    return None if all_real else real


# ---------------------------------------------------------------------------------------------- #
# CUDA graphs: shape buckets and capture                                                          #
# ---------------------------------------------------------------------------------------------- #
_GRAPH_DEVICES = ("cuda",)  # where FusedEncoder captures graphs (tests add "cpu" with an eager stand-in)
_GRAPH_LOCK = threading.Lock()  # graph replays write shared static buffers: one at a time per process
_GRAPH_DONE: dict = {}  # device -> CUDA event recorded after the last graph call's output was copied out


@contextlib.contextmanager
def _graph_turn(device: torch.device):
    """One graph call at a time, on the host (the lock) and on the GPU: a call on another CUDA stream waits for
    the previous call's copy-out before it writes the static inputs (the lock alone orders only the launches)."""
    with _GRAPH_LOCK:
        done = _GRAPH_DONE.get(device) if device.type == "cuda" else None
        if done is not None:
            torch.cuda.current_stream(device).wait_event(done)
        try:
            yield
        finally:
            if device.type == "cuda":
                event = _GRAPH_DONE[device] = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))


def _pow2(n: int) -> int:
    """The next power of two >= n (>= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _length_bucket(length: int) -> int:
    """The graph length bucket of a sequence length (<= GRAPH_BUCKETS[-1]): the kernels' power-of-two
    bucket (attention's grid and autotuning key)."""
    return next(b for b in GRAPH_BUCKETS if b >= length)


def graph_batch(path: str, batch: int) -> int:
    """The batch a graph is captured for: packed, the batch's power of two (the extra sequences are empty and
    cost nothing); padded, the batch itself (extra rows would be computed)."""
    return _pow2(batch) if path == "packed" else int(batch)


def graph_tokens(tokens: int) -> int:
    """Token rows of the packed graph for ``tokens`` real tokens: rounded up to a multiple of 1/8 of their
    power-of-two bucket (>= 16), so at most 8 graphs per octave, at most 1/8 of a bucket of wasted rows
    (e.g. 1919 -> 2048, 426 -> 448, 2049 -> 2560), and the same power-of-two bucket as ``tokens``: the
    kernels' autotuning key (``kernels._common.token_bucket``), so the graph runs the eager path's configs."""
    bucket = max(16, _pow2(tokens))
    step = max(16, bucket // 8)
    return min(bucket, -(-max(int(tokens), 1) // step) * step)


@dataclass(frozen=True)
class GraphKey:
    path: str        # "packed" (unpad=True, padding in the batch) | "padded"
    batch: int       # packed: the batch's power of two; padded: the batch size
    length: int      # length bucket (GRAPH_BUCKETS)
    tokens: int      # token rows the layers run on (packed: graph_tokens(T); padded: batch * length)
    dtype: torch.dtype
    device: torch.device


@dataclass
class CapturedGraph:
    """A recorded forward: ``replay()`` recomputes ``output`` from the current contents of ``inputs``."""

    replay: object   # () -> None
    inputs: tuple    # static input tensors, written before each replay
    output: torch.Tensor
    graph: object = None  # the torch.cuda.CUDAGraph


def _new_graph_pool(device: torch.device):
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


def capture_graph(body, inputs: tuple, pool) -> CapturedGraph:
    """Capture ``body()`` (it reads ``inputs``, returns the output tensor) as a CUDA graph: two warm-up runs on
    a side stream first (Triton compiles and autotunes, the allocator settles), then the capture into
    ``pool``, shared by the encoder's graphs (they never run concurrently; each output is copied out, or
    read, before another graph replays)."""
    device = inputs[0].device
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = body()
    return CapturedGraph(graph.replay, inputs, output, graph)


class GraphCaptureError(RuntimeError):
    """Raised by :func:`replay_eagerly` where a CUDA graph capture would fail: the body read a tensor on the host."""


class _NoHostReads(TorchDispatchMode):
    """Raises :class:`GraphCaptureError` on the ops a CUDA stream capture refuses, seen on any device: a value
    read on the host (``.item()``, ``bool()``, ``int()``, ``.tolist()``: ``_local_scalar_dense``, a device
    sync), ops whose output shape depends on the data (``nonzero``, boolean indexing, ``masked_select``,
    ``unique``: a sync for the size), and tensors made from host data (``torch.tensor([...])``: a copy from
    pageable host memory). So on CPU a body that would break the capture fails as it would on the GPU."""

    _REFUSED = {"_local_scalar_dense", "nonzero", "argwhere", "masked_select", "unique", "_unique", "_unique2",
                "unique_dim", "unique_consecutive", "repeat_interleave", "lift_fresh", "lift_fresh_copy"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                   for i in (args[1] if len(args) > 1 else ())):
            name = "boolean indexing"  # a nonzero inside
        if name in self._REFUSED or name == "boolean indexing":
            raise GraphCaptureError(f"{name} inside a CUDA graph's body: it reads the device on the host (a sync "
                                    "or a data-dependent size), which a stream capture does not allow")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads():
    """:class:`_NoHostReads` on, and ``Tensor.tolist`` refused (on a CPU tensor it dispatches no op)."""
    def tolist(self):
        raise GraphCaptureError("Tensor.tolist inside a CUDA graph's body: a device sync, which a stream capture "
                                "does not allow")
    saved = torch.Tensor.tolist
    torch.Tensor.tolist = tolist
    try:
        with _NoHostReads():
            yield
    finally:
        torch.Tensor.tolist = saved


def replay_eagerly(body, inputs: tuple, pool=None) -> CapturedGraph:
    """A stand-in for :func:`capture_graph` where no graph can be captured (CPU): ``replay()`` runs ``body``
    again and copies its result into the same output tensor. For checking everything around the capture
    (buckets, static buffers, reuse, limits) without a GPU: ``tests/test_optimize_graphs.py`` and
    ``python -m bench.gpu_e2e --dry-run`` put it in place of :func:`capture_graph` and add ``"cpu"`` to
    ``_GRAPH_DEVICES``. (Unlike a graph it runs the layers' Python again on each replay.) The body runs under
    :func:`no_host_reads`, so what would make the real capture fail (a sync, ...) fails here too, at capture."""
    with no_host_reads():
        output = body()

    def replay():
        with torch.inference_mode(), no_host_reads():  # a graph writes its output whatever the autograd mode
            output.copy_(body())
    return CapturedGraph(replay, inputs, output)


# ---------------------------------------------------------------------------------------------- #
# gradients: the fused forward, the original layers' backward                                     #
# ---------------------------------------------------------------------------------------------- #
class _FusedForwardOriginalBackward(torch.autograd.Function):
    """The output of the fused layers; in backward, the gradient of the original (HF) layers, recomputed
    on the saved input as activation checkpointing does.

    A call in grad mode whose input or weights require a gradient (an eval-mode model is not in
    ``torch.no_grad()`` by itself; saliency, adversarial inputs, fine-tuning with dropout off) keeps the
    fused forward's speed and gets the original model's gradients: d(loss)/d(hidden_states) and
    d(loss)/d(every encoder parameter) of the layers in the model's own dtype and weights, at the
    input the fused layers saw. (So under int8 / bf16 the gradients are the full-precision model's, a
    straight-through estimate of the quantized forward.) Where the padding-free path returns 0 at
    padded positions (``zero_padded``: the key mask ``[B, L]``), the incoming gradient there is dropped,
    as the derivative of a constant 0 is. Not twice differentiable.

    ``forward(ctx, run_fused, run_original, zero_padded, hidden_states, *params)``: ``run_fused(h)`` and
    ``run_original(h)`` map ``[B, L, H]`` to ``[B, L, H]``; ``params`` are the parameters that receive
    gradients (inputs here so that ``torch.autograd.grad(loss, params)`` works, not only ``.backward()``)."""

    @staticmethod
    def forward(ctx, run_fused, run_original, zero_padded, hidden_states, *params):
        ctx.run_original = run_original
        ctx.save_for_backward(hidden_states, zero_padded, *params)
        return run_fused(hidden_states)  # autograd is off inside forward: the fused path as in no_grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden_states, zero_padded, *params = ctx.saved_tensors
        wants_input, wanted = ctx.needs_input_grad[3], ctx.needs_input_grad[4:]
        h = hidden_states.detach().requires_grad_(wants_input)
        with torch.enable_grad():
            ref = ctx.run_original(h)
        if zero_padded is not None:
            grad_out = grad_out * zero_padded.unsqueeze(-1).to(grad_out.dtype)
        wrt = ([h] if wants_input else []) + [p for p, w in zip(params, wanted) if w]
        grads = list(torch.autograd.grad(ref, wrt, grad_out, allow_unused=True))
        grad_h = grads.pop(0) if wants_input else None
        return (None, None, None, grad_h, *[grads.pop(0) if w else None for w in wanted])


# ---------------------------------------------------------------------------------------------- #
# the fused encoder                                                                              #
# ---------------------------------------------------------------------------------------------- #
class FusedEncoder(nn.Module):
    """Replaces an HF encoder (``BertEncoder`` / DistilBERT ``Transformer``); see the module docstring."""

    def __init__(self, original: nn.Module, layers: Sequence[FusedLayerBase], adapter, report: OptimizeReport,
                 compute_dtype: torch.dtype, unpad: bool, cuda_graphs: bool):
        super().__init__()
        self.layer = nn.ModuleList(layers)  # same name as the original: state_dict keys unchanged
        self.__dict__["original"] = original
        self.__dict__["adapter"] = adapter
        self.__dict__["report"] = report
        for attr in ("config", "n_layers", "gradient_checkpointing"):
            if attr in original.__dict__:
                self.__dict__[attr] = original.__dict__[attr]
        self.compute_dtype = compute_dtype
        self.unpad = unpad
        self.cuda_graphs = cuda_graphs
        self.__dict__["_graphs"] = OrderedDict()  # GraphKey -> CapturedGraph, least recently used first
        self.train(original.training)

    def _apply(self, fn, *args, **kwargs):
        """``.to()``, ``.cuda()``, ``.half()``, ... on the model. New storage (another device) is followed: the
        prepared copies are buffers and move with it, and the one-call snapshots and packs re-derive from the
        new tensors. A dtype change is not (the layers were prepared for one precision; ``.float()`` would
        also widen a bf16 GEMM's prepared weight): it is recorded, and the next forward raises saying so."""
        self._drop_graphs()  # captured graphs point at the old tensors
        before = self._tensor_dtypes()
        out = super()._apply(fn, *args, **kwargs)
        changed = sorted({f"{a} -> {b}".replace("torch.", "") for a, b in zip(before, self._tensor_dtypes()) if a != b})
        if changed:
            self.__dict__.setdefault("converted", changed)
        return out

    def _tensor_dtypes(self) -> list:
        """The dtype of every parameter and buffer of the fused layers, in module order."""
        return [t.dtype for t in itertools.chain(self.parameters(), self.buffers())]

    def _refuse_if_converted(self) -> None:
        converted = self.__dict__.get("converted")
        if converted:
            raise ValueError(
                f"the optimized model's tensors changed dtype after bertsilicon.optimize ({', '.join(converted)}): "
                f"its fused layers were prepared for precision={self.__dict__['report'].precision!r}, and converting "
                "an optimized model's dtype (.half(), .double(), .to(dtype)) is not supported; call "
                "bertsilicon.restore(model), convert it, then bertsilicon.optimize(model, ...) again (moving it to "
                "another device with .to(device) is fine)")

    def train(self, mode: bool = True):
        super().train(mode)
        self.__dict__["original"].train(mode)
        return self

    # -- why a call must run on the original layers -------------------------------------------- #
    def _runtime_fallback(self, args, kwargs, collected) -> Optional[str]:
        if self.training:
            return "training mode (fused layers are inference-only)"
        if kwargs.get("output_attentions") or (collected is not None and
                                               ("attentions" in collected or "cross_attentions" in collected)):
            return "output_attentions requested"
        if kwargs.get("head_mask") is not None:
            return "head_mask given"
        if kwargs.get("encoder_hidden_states") is not None or (args and args[0] is not None):
            return "cross-attention inputs (encoder_hidden_states)"
        if kwargs.get("past_key_values") is not None or kwargs.get("use_cache"):
            return "past_key_values / use_cache"
        return None

    def _run_original(self, hidden_states, attention_mask, args, kwargs, collected):
        original = self.__dict__["original"]
        hooks = []
        if collected is not None and "hidden_states" in collected and not any(map(_hf_hooked, original.layer)):
            _append_hidden(collected, hidden_states)
            for layer in original.layer:
                hooks.append(layer.register_forward_hook(
                    lambda m, a, out: _append_hidden(collected, out[0] if isinstance(out, tuple) else out)))
        try:
            return original(hidden_states, attention_mask, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *args, **kwargs):
        self._refuse_if_converted()
        collected = _collector()
        reason = self._runtime_fallback(args, kwargs, collected)
        B, L = hidden_states.shape[:2]
        key_mask = None
        if reason is None:
            try:
                key_mask = key_padding_mask(attention_mask, B, L)
            except _NotKeyPadding:
                reason = "attention mask is not a key-padding mask (custom 4-D mask)"
        want_states = collected is not None and "hidden_states" in collected
        params = self._grad_params(hidden_states) if reason is None else None
        if params is not None and want_states:  # the states handed to the collector would carry no gradient
            reason = "gradients needed with output_hidden_states"
        if reason is not None:
            self.__dict__["report"].runtime_fallbacks[reason] += 1
            return self._run_original(hidden_states, attention_mask, args, kwargs, collected)
        if params is not None:
            self.__dict__["report"].recomputed_backward += 1
            zero_padded = key_mask is not None and self.unpad  # the fused output is 0 there, HF's is not

            def original(h):
                return self._run_original(h, attention_mask, args, kwargs, None)[0]
            out = _FusedForwardOriginalBackward.apply(lambda h: self.run(h, key_mask), original,
                                                      key_mask if zero_padded else None, hidden_states, *params)
            return self.__dict__["adapter"].encoder_output(out)
        if want_states:
            _append_hidden(collected, hidden_states)
        with torch.no_grad():  # nothing needs a gradient: so CUDA graphs serve even in grad mode
            out = self.run(hidden_states, key_mask,
                           (lambda h: _append_hidden(collected, h)) if want_states else None)
        return self.__dict__["adapter"].encoder_output(out)

    def _grad_params(self, hidden_states: torch.Tensor) -> Optional[list]:
        """None when this call needs no gradient (grad mode off, or neither the input nor any parameter of
        the layers requires one), else the parameters that require one."""
        if not torch.is_grad_enabled():
            return None
        params = [p for p in self.parameters() if p.requires_grad]
        return params if params or hidden_states.requires_grad else None

    def run(self, hidden_states: torch.Tensor, key_mask: Optional[torch.Tensor], on_layer=None) -> torch.Tensor:
        """The fused layers on ``hidden_states [B, L, H]`` with ``key_mask [B, L]`` bool (or None: no
        padding); ``on_layer(h [B, L, H])`` is called after each layer. Returns ``[B, L, H]`` in the
        input's dtype."""
        in_dtype = hidden_states.dtype
        x = hidden_states.to(self.compute_dtype)
        B, L, H = x.shape
        graphs = self._graphs_serve(x, on_layer)
        if key_mask is not None and self.unpad:
            index = key_mask.reshape(-1).nonzero().squeeze(1)  # a device sync (the token count)
            packed = x.reshape(B * L, H).index_select(0, index)
            graphs = graphs and 0 < packed.shape[0] and graph_tokens(packed.shape[0]) <= GRAPH_MAX_TOKENS
            cu_seqlens, max_seqlen = _pack(key_mask, longest=not graphs)  # a graph needs no longest (a sync)

            def repad(t):
                return t.new_zeros(B * L, H).index_copy_(0, index, t).view(B, L, H)

            if graphs:
                with _graph_turn(x.device):  # the static buffers are shared: one call at a time, until its output is out
                    out = self._graph_packed(packed, cu_seqlens, B, L)
                    if out is not None:
                        return repad(out).to(in_dtype)
                cu_seqlens, max_seqlen = _pack(key_mask)  # the capture failed: eager from here
            with _layer_scratch_held(x.device):
                for layer in self.layer:
                    packed = layer.forward_packed(packed, cu_seqlens, max_seqlen, offsets_checked=True)  # from the mask
                    if on_layer is not None:
                        on_layer(repad(packed).to(in_dtype))
            return repad(packed).to(in_dtype)
        if graphs and B * _length_bucket(L) <= GRAPH_MAX_TOKENS:
            with _graph_turn(x.device):
                out = self._graph_padded(x, key_mask)
            if out is not None:
                return out.to(in_dtype)
        with _layer_scratch_held(x.device):
            for layer in self.layer:
                x = layer.forward_padded(x, key_mask)
                if on_layer is not None:
                    on_layer(x.to(in_dtype))
        return x.to(in_dtype)

    def _drop_graphs(self) -> None:
        self.__dict__["_graphs"].clear()
        self.__dict__.pop("_graph_pool", None)
        self.__dict__.pop("_graph_operands", None)

    # -- CUDA graphs: a captured graph per (batch, length, token) bucket, replayed ----------------- #
    # Host time (Python, op validation, Triton's launcher: tens of microseconds a launch, 7-11 launches a
    # layer) is larger than an H100's time for the kernels of a student layer on a few thousand tokens, so
    # every call whose layers run on at most GRAPH_MAX_TOKENS token rows replays a graph: the host then
    # does ~10 small launches per forward instead of ~50-70. Graphs are keyed on bucketed shapes (the
    # batch's power of two, GRAPH_BUCKETS for the length, graph_tokens() for the packed rows), so a new
    # length or batch in a known bucket replays instead of capturing; at most GRAPH_CACHE_SIZE graphs are
    # kept (least recently used dropped). The buckets match the kernels' autotuning buckets, so the graph
    # runs the same tile configs as the eager path on the same rows.
    def _graphs_serve(self, x: torch.Tensor, on_layer) -> bool:
        return (self.cuda_graphs and on_layer is None and x.device.type in _GRAPH_DEVICES
                and x.shape[1] <= GRAPH_BUCKETS[-1] and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling())

    def _graphs_read_current_weights(self) -> None:
        """Before a replay (which never runs the layers' forwards): every layer's prepared copies brought up
        to date in place (:meth:`FusedEncoderLayer.sync_prepared`: same tensors, so the graphs see the new
        values), and every graph dropped when a tensor the layers read was *replaced* since they were
        captured (a new ``nn.Parameter``: the graphs hold the old one's address). The tensors are held, so
        an old one is never freed while a graph may read it."""
        tensors = []
        for layer in self.layer:
            layer.sync_prepared()
            tensors += layer.operand_tensors()
        held = self.__dict__.get("_graph_operands")
        if held is not None and (len(held) != len(tensors) or any(a is not b for a, b in zip(held, tensors))):
            self._drop_graphs()
        self.__dict__["_graph_operands"] = tuple(tensors)

    def _graph_replay(self, key: GraphKey, make_inputs, fill, body) -> Optional[torch.Tensor]:
        """Replay the graph for ``key`` on this call's data and return its static output: ``make_inputs()``
        allocates the static inputs (first use only), ``fill(*inputs)`` writes this call's data into them, and
        ``body(*inputs)`` is the work the graph records (it returns the output). A new graph is captured after
        ``fill``, so the warm-up runs (where Triton autotunes new shapes) see real data, not empty buffers.
        None when the capture fails (an op that syncs, ...): graphs are then off for this encoder, the report
        and a warning say why, and the caller runs the layers eagerly."""
        self._graphs_read_current_weights()
        cache = self.__dict__["_graphs"]
        graph = cache.get(key)
        if graph is not None:
            cache.move_to_end(key)
            fill(*graph.inputs)
        else:
            with torch.inference_mode(False):  # normal tensors: a later call outside inference_mode writes them
                inputs = make_inputs()
            fill(*inputs)
            if "_graph_pool" not in self.__dict__:  # one memory pool for all of this encoder's graphs
                self.__dict__["_graph_pool"] = _new_graph_pool(key.device)
            try:
                graph = capture_graph(lambda: body(*inputs), inputs, self.__dict__["_graph_pool"])
            except Exception as exc:
                self.cuda_graphs = False
                self._drop_graphs()
                note = f"CUDA graph capture failed, running eagerly: {type(exc).__name__}: {exc}"
                self.__dict__["report"].notes.append(note)
                warnings.warn(f"bertsilicon: {note}", stacklevel=4)
                return None
            cache[key] = graph
            while len(cache) > GRAPH_CACHE_SIZE:
                cache.popitem(last=False)
        graph.replay()
        return graph.output

    def _layers_packed(self, x, cu_seqlens, max_seqlen):
        for layer in self.layer:
            x = layer.forward_packed(x, cu_seqlens, max_seqlen, offsets_checked=True)
        return x

    def _layers_padded(self, x, key_mask):
        for layer in self.layer:
            x = layer.forward_padded(x, key_mask)
        return x

    def _graph_packed(self, packed: torch.Tensor, cu_seqlens: torch.Tensor, B: int, L: int) -> torch.Tensor:
        """The layers on packed tokens ``[T, H]`` of B sequences (``cu_seqlens [B + 1]``, longest <= L) by
        replaying the graph of ``(batch bucket, length bucket, graph_tokens(T))``. Its static inputs: token
        rows ``[T_g, H]`` (rows T.. are scratch: no sequence covers them, every op on them is row-local, and
        they are never read back) and offsets ``[B_g + 1]`` (entries past B repeat T: empty sequences,
        whose attention programs return at once). Attention's grid covers the length bucket. Returns ``[T, H]``
        (a view of the static output: read it before the next replay), or None when the capture failed."""
        T, H = packed.shape
        key = GraphKey("packed", graph_batch("packed", B), _length_bucket(L), graph_tokens(T), packed.dtype, packed.device)

        def make_inputs():
            return (packed.new_zeros(key.tokens, H),
                    torch.zeros(key.batch + 1, dtype=torch.int32, device=packed.device))

        def fill(static_x, static_cu):
            static_x[:T].copy_(packed)
            static_cu[:B + 1].copy_(cu_seqlens)
            static_cu[B + 1:].fill_(T)  # empty sequences; T is known here: no host read

        out = self._graph_replay(key, make_inputs, fill, lambda x, cu: self._layers_packed(x, cu, key.length))
        return None if out is None else out[:T]

    def _graph_padded(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The padded layers on ``x [B, L, H]`` by replaying the graph of ``(B, length bucket)``: x is
        padded to the bucket with masked keys, so real positions are unchanged. Returns ``[B, L, H]``, or None
        when the capture failed."""
        B, L, H = x.shape
        key = GraphKey("padded", graph_batch("padded", B), _length_bucket(L), B * _length_bucket(L), x.dtype, x.device)

        def make_inputs():
            return (x.new_zeros(B, key.length, H), torch.zeros(B, key.length, dtype=torch.bool, device=x.device))

        def fill(static_x, static_mask):
            static_x[:, L:].zero_()
            static_x[:, :L].copy_(x)
            static_mask[:, L:].zero_()
            if key_mask is None:
                static_mask[:, :L].fill_(True)
            else:
                static_mask[:, :L].copy_(key_mask)

        out = self._graph_replay(key, make_inputs, fill, self._layers_padded)
        return None if out is None else out[:, :L].clone()


# ---------------------------------------------------------------------------------------------- #
# optimize / restore                                                                             #
# ---------------------------------------------------------------------------------------------- #
def _adapter_for(model: nn.Module):
    for adapter in ADAPTERS:
        if isinstance(model, adapter.pretrained_class):
            return adapter
    return None


def _inner_model(model: nn.Module) -> Optional[nn.Module]:
    """A supported HF model inside a wrapper (e.g. a ``SentenceTransformer``), if there is exactly one."""
    found = [m for m in model.modules() if m is not model and _adapter_for(m) is not None]
    top = [m for m in found if not any(m is not o and any(m is s for s in o.modules()) for o in found)]
    return top[0] if len(top) == 1 else None


def _calibration_batch(config, calibration, tokenizer, device, max_positions: Optional[int]):
    """``(input_ids, attention_mask, description)`` for the optimize-time measurements; texts are truncated to
    ``max_positions`` tokens (the adapter's limit: RoBERTa-style tables hold 2 rows fewer) and 128."""
    max_len = min(CALIBRATION_MAX_LENGTH, max_positions or CALIBRATION_MAX_LENGTH)
    if isinstance(calibration, Mapping):
        ids = calibration["input_ids"]
        mask = calibration.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        return ids.to(device), mask.to(device), f"given batch {tuple(ids.shape)}"
    if calibration is None:
        from .. import data

        texts, what = data.corpus("pydoc").subset(CALIBRATION_SENTENCES, seed=0).texts, "Python-documentation paragraphs"
    elif isinstance(calibration, str):
        texts, what = [calibration], "given text(s)"
    elif isinstance(calibration, Sequence) and calibration and all(isinstance(t, str) for t in calibration):
        texts, what = list(calibration), "given text(s)"
    else:
        raise TypeError("calibration must be None, a list of strings, or a mapping with 'input_ids' "
                        f"(and 'attention_mask'); got {type(calibration).__name__}")
    if tokenizer is None:
        from .students import load_tokenizer

        if config.vocab_size != 30522:
            if calibration is not None:
                raise ValueError(f"calibration texts need tokenizer=...: the model's vocabulary ({config.vocab_size}) "
                                 "is not the built-in uncased WordPiece (30522)")
            g, L = torch.Generator().manual_seed(0), min(64, max_len)
            ids = torch.randint(min(1000, config.vocab_size // 2), config.vocab_size, (8, L), generator=g)
            lengths = torch.tensor([64, 50, 33, 17, 64, 9, 40, 2]).clamp(max=L)
            mask = (torch.arange(L)[None] < lengths[:, None]).long()
            return ids.to(device), mask.to(device), "random token ids (vocabulary is not the built-in one)"
        tokenizer = load_tokenizer()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), f"{len(texts)} {what}"


def _capture_layers(base, layers, ids, mask):
    """Run the original model; return the inputs and outputs of every encoder layer and the final states."""
    inputs, outputs, hooks = [], [], []

    def hook(module, args, kwargs, out):
        inputs.append((args[0] if args else kwargs["hidden_states"]).detach())
        outputs.append((out[0] if isinstance(out, tuple) else out).detach())

    for layer in layers:
        hooks.append(layer.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            final = base(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    finally:
        for h in hooks:
            h.remove()
    return inputs, outputs, final


def _layer_scratch_held(device: torch.device):
    """On a CPU, the one-call layers of this forward share one C++ scratch block (``_cpu_layer.scratch_held``)."""
    if device.type != "cpu" or torch.compiler.is_compiling():  # compiled: the layers run as custom ops
        return contextlib.nullcontext()
    try:
        from ._cpu_layer import scratch_held
    except ImportError:  # no C++ extension: no one-call layers
        return contextlib.nullcontext()
    return scratch_held()


def _pack(real: torch.Tensor, longest: bool = True) -> tuple[torch.Tensor, Optional[int]]:
    """``(cu_seqlens int32 [B + 1], max_seqlen)`` of a key-padding mask ``[B, L]``; ``longest=False``: max_seqlen
    None (reading it is a device sync on CUDA)."""
    lengths = real.sum(1, dtype=torch.int32)
    cu = torch.zeros(real.shape[0] + 1, dtype=torch.int32, device=real.device)
    cu[1:] = torch.cumsum(lengths, 0)
    if not longest:
        return cu, None
    return cu, int(lengths.max()) if real.shape[0] else 0


def _layer_error(layer: FusedLayerBase, x, y, real, unpad) -> tuple[float, float]:
    """Relative and max-abs error of the fused layer on real tokens, input ``x`` and reference ``y``."""
    with torch.no_grad():
        xc = x.to(layer.compute_dtype)
        if unpad:
            out = layer.forward_packed(xc[real], *_pack(real), offsets_checked=True)
        else:
            out = layer.forward_padded(xc, real)[real]
    ref = y[real]
    return quant.relative_error(out, ref), float((out.double() - ref.double()).abs().max())


def _validate_inputs_hook(max_positions: Optional[int], limit: Optional[str] = None):
    """Forward pre-hook checking the inputs; ``limit``: how ``max_positions`` follows from the config (the error
    says it)."""
    def hook(module, args, kwargs):
        if args:  # positional inputs: bind them to forward's parameter names (~50 us; keyword calls skip it)
            try:
                bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
            except TypeError:
                return None  # let the model raise its own error
        else:
            bound = kwargs
        ids, embeds, mask = bound.get("input_ids"), bound.get("inputs_embeds"), bound.get("attention_mask")
        length = None
        if ids is not None:
            if not isinstance(ids, torch.Tensor):
                raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(ids).__name__}")
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise TypeError(f"input_ids must hold integer token ids (torch.long), got dtype {ids.dtype}")
            length = ids.shape[-1]
        elif embeds is not None:
            if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
                raise TypeError("inputs_embeds must be a floating-point torch.Tensor [batch, length, hidden]")
            length = embeds.shape[-2]
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
            if mask.is_complex():
                raise TypeError(f"attention_mask must be bool, integer or float (1 = real token), got {mask.dtype}")
            if mask.dim() == 2 and length is not None and mask.shape[-1] != length:
                raise ValueError(f"attention_mask has length {mask.shape[-1]}; the input has length {length}")
        if length is not None and max_positions is not None and length > max_positions:
            raise ValueError(f"input length {length} exceeds the model's position table "
                             f"({limit or f'max_position_embeddings={max_positions}'}); truncate it, e.g. "
                             f"tokenizer(..., truncation=True, max_length={max_positions})")
        return None

    return hook


def _check_device(base: nn.Module, backend: Optional[str]) -> torch.device:
    device = next(base.parameters()).device
    if device.type == "meta":
        raise ValueError("the model's weights are on the 'meta' device (not loaded): no backend can run it")
    if backend is not None:
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; expected one of {ops.BACKENDS} or None")
        reason = ops.backend_status()[backend]
        if reason is not None:
            raise ValueError(f"backend={backend!r} is not available on this machine: {reason}")
        from ..ops._dispatch import triton_interpreter

        if backend == "cpu" and device.type != "cpu":
            raise ValueError(f"backend='cpu' serves CPU models; the model is on {device}")
        if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
            raise ValueError(f"backend='triton' serves CUDA models (or CPU under TRITON_INTERPRET=1); the model is on {device}")
    return device


def optimize(model: nn.Module, precision: str = "fp32", backend: Optional[str] = None, unpad: bool = True,
             calibration: Union[None, Sequence[str], Mapping] = None, smooth: Optional[float] = None, *,
             tokenizer=None, error_budget: Optional[float] = None, cuda_graphs: Optional[bool] = None) -> nn.Module:
    """Run a Hugging Face BERT-family model's encoder on bertsilicon's fused ops; returns the same object.

    Args:
        model: ``BertModel`` or any ``BertFor*`` head, ``DistilBertModel`` or a head, ``RobertaModel``,
            ``XLMRobertaModel``, ``CamembertModel``, ``ElectraModel`` or one of their heads (BertLayer clones;
            see :func:`supported_classes`), ``MobileBertModel`` or a head (its bottleneck layers fused as
            :class:`~bertsilicon.models.fused_mobilebert.FusedMobileBertLayer`), or a wrapper holding one (e.g. a
            ``SentenceTransformer``).
        precision: ``"fp32" | "bf16" | "fp16" | "int8"`` for the encoder's GEMMs (LayerNorm statistics,
            softmax and accumulation stay fp32; int8 keeps the residual stream in fp32). Outputs come back
            in the model's own dtype.
        backend: ``None`` (best available per op) or ``"reference" | "cpu" | "triton"``, passed to every op.
        unpad: strip padding once after the embeddings (padded output positions are 0, see module doc).
        calibration: texts (or a tokenized batch) for the optimize-time error measurement and the int8
            statistics; default: 16 paragraphs of the built-in Python documentation corpus.
        smooth: SmoothQuant alpha in [0, 1] for int8 (None: no migration).
        tokenizer: to tokenize ``calibration`` texts (default: the built-in uncased WordPiece).
        error_budget: int8 per-layer relative-error budget (default ``DEFAULT_INT8_BUDGET``); a layer over
            it moves its most sensitive GEMMs to fp32, and the report says which.
        cuda_graphs: replay a captured CUDA graph per (batch, length, token) bucket for every call whose
            layers run on at most ``GRAPH_MAX_TOKENS`` token rows (8192: batch 32 x 128 unpadded or padded;
            lengths <= 512); larger calls run eagerly (None: on for CUDA models; must be off for CPU models).

    ``model.bertsilicon_report`` describes what happened; ``bertsilicon.restore(model)`` undoes it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a Hugging Face model), got {type(model).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; expected one of {tuple(PRECISIONS)}")
    if backend is not None and backend not in ops.BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; expected one of {ops.BACKENDS} or None")
    if not isinstance(unpad, bool):
        raise TypeError(f"unpad must be a bool, got {type(unpad).__name__}")
    if smooth is not None and (isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth <= 1):
        raise ValueError(f"smooth must be None or a SmoothQuant alpha in [0, 1], got {smooth!r}")
    if smooth is not None and precision != "int8":
        raise ValueError(f"smooth={smooth} only applies to precision='int8' (got precision={precision!r})")
    if error_budget is not None and not (isinstance(error_budget, (int, float)) and error_budget > 0):
        raise ValueError(f"error_budget must be a positive float, got {error_budget!r}")
    if getattr(model, _STATE, None) is not None:
        warnings.warn("optimize: this model is already optimized; returning it unchanged "
                      "(call bertsilicon.restore(model) first to re-optimize)", stacklevel=2)
        return model

    adapter = _adapter_for(model)
    if adapter is None:
        inner = _inner_model(model)
        if inner is None:
            raise TypeError(f"optimize does not support {type(model).__name__}; supported: "
                            f"{', '.join(supported_classes())} (or a wrapper such as SentenceTransformer holding one)")
        optimize(inner, precision, backend, unpad, calibration, smooth, tokenizer=tokenizer,
                 error_budget=error_budget, cuda_graphs=cuda_graphs)
        model.__dict__[_STATE] = {"inner": inner}
        model.__dict__["bertsilicon_report"] = inner.bertsilicon_report
        return model

    report = OptimizeReport(model_class=type(model).__name__, family=adapter.family, precision=precision,
                            backend=backend, unpad=unpad, smooth=smooth)
    base = adapter.base_model(model)
    config = base.config
    encoder = getattr(base, adapter.encoder_attr)
    why_not = adapter.unsupported_reason(config)
    if why_not is not None:
        report.refused = why_not
        report.layers = [LayerReport(i, "kept", why_not) for i in range(len(encoder.layer))]
        warnings.warn(f"optimize: {type(model).__name__} encoder layers kept: {why_not}", stacklevel=2)
        model.__dict__[_STATE] = {"refused": True}
        model.bertsilicon_report = report
        return model

    device = _check_device(base, backend)
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type not in _GRAPH_DEVICES:
        raise ValueError(f"cuda_graphs=True needs a CUDA model; the model is on {device}")
    report.cuda_graphs = bool(cuda_graphs)
    compute_dtype = COMPUTE_DTYPE[precision]
    if precision == "fp16" and _fp16_on_fp32_kernels(device, backend):
        compute_dtype = torch.float32
        report.notes.append("fp16 on this CPU (no fp16 arithmetic): weights and GEMM inputs rounded to fp16, products, "
                            "sums and GEMM outputs in fp32 on the fp32 kernel; residual stream, attention and "
                            "LayerNorm in fp32")
    budget = (error_budget or DEFAULT_INT8_BUDGET) if precision == "int8" else None
    report.error_budget = budget

    was_training = base.training
    base.eval()
    try:
        ids, mask, report.calibration = _calibration_batch(config, calibration, tokenizer, device,
                                                                 adapter.max_positions(config))
        inputs, outputs, final_ref = _capture_layers(base, encoder.layer, ids, mask)
        real = mask.bool()
        fused = []
        for i, layer in enumerate(encoder.layer):
            fused_layer, entry = _build_layer(i, layer, adapter, config, precision, compute_dtype, backend, unpad,
                                              inputs[i], outputs[i], real, smooth, budget)
            fused.append(fused_layer)
            report.layers.append(entry)
        for entry, fused_layer in zip(report.layers, fused):  # asked of the layer as it will run
            entry.call = fused_layer.call_path(device)
            if cuda_graphs:
                entry.call = f"CUDA graph (calls on <= {GRAPH_MAX_TOKENS} token rows), else {entry.call}"
        report.backends_used = fused[0].backends_used(inputs[0][real][:4].to(compute_dtype).contiguous())
        if "cpu" in report.backends_used.values():
            report.cpu_kernels = _cpu_kernels(fused, compute_dtype)
        new_encoder = FusedEncoder(encoder, fused, adapter, report, compute_dtype, unpad, bool(cuda_graphs))
        setattr(base, adapter.encoder_attr, new_encoder)
        check = _validate_inputs_hook(adapter.max_positions(config), adapter.position_limit_text(config))
        handle = base.register_forward_pre_hook(check, with_kwargs=True)
        model.__dict__[_STATE] = {"base": base, "attr": adapter.encoder_attr, "original": encoder, "hook": handle}
        new_encoder.cuda_graphs = False  # measured eagerly (the graph path is the same kernels on the same rows):
        try:                             # no graph captured, and held, for the calibration batch's shape
            with torch.no_grad():
                got = base(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            new_encoder.cuda_graphs = bool(cuda_graphs)
        from .eval import mean_pool, pooled_cosines

        rows = real.any(1)  # a fully padded row pools to zeros on both sides: no cosine to report
        cos = pooled_cosines(mean_pool(got, mask), mean_pool(final_ref, mask))[rows]
        report.end_to_end = {"rel_error": quant.relative_error(got[real], final_ref[real]),
                             "min_pooled_cosine": float(cos.min()) if cos.numel() else float("nan"),
                             "sentences": int(rows.sum())}
    except Exception:
        if getattr(base, adapter.encoder_attr) is not encoder:
            setattr(base, adapter.encoder_attr, encoder)
        state = model.__dict__.pop(_STATE, None)
        if state and "hook" in state:
            state["hook"].remove()
        raise
    finally:
        base.train(was_training)
    model.bertsilicon_report = report
    return model


def _build_layer(i, layer, adapter, config, precision, compute_dtype, backend, unpad, x, y, real, smooth, budget):
    parts = adapter.layer_parts(layer, config)
    layer_class = adapter.layer_class
    names = layer_class.gemm_names(parts)
    entry = LayerReport(i, "fused")
    factors = None
    if precision == "int8" and smooth is not None:
        probe = layer_class(layer, parts, dict.fromkeys(names, "fp32"), torch.float32, backend=backend)
        stats: dict = {}
        with torch.no_grad():
            probe.forward_packed(x.float()[real], *_pack(real), stats=stats, offsets_checked=True)
        # each GEMM's fp32 weight as it multiplies (the concatenated one where several linears share an input)
        factors = {g: quant.smoothing_factors(stats[g].value, probe._modules[g].operands()[0], smooth) for g in names}

    def build(gemms):
        return layer_class(layer, parts, gemms, compute_dtype, smooth=factors, backend=backend)

    gemms = dict.fromkeys(names, precision)
    fused = build(gemms)
    err, max_err = _layer_error(fused, x, y, real, unpad)
    if budget is not None and err > budget:
        # sensitivity of each GEMM alone in int8 (others fp32); move the worst up a precision step at a
        # time (int8 -> bf16 for every GEMM in turn, then bf16 -> fp32) until the layer is within budget
        sens = {g: _layer_error(build({k: ("int8" if k == g else "fp32") for k in names}), x, y, real, unpad)[0]
                for g in names}
        order = sorted(names, key=sens.get, reverse=True)
        steps = [(g, "bf16") for g in order] if _native_bf16(x.device, backend) else []
        steps += [(g, "fp32") for g in order]
        for g, to in steps:
            gemms[g] = to
            fused = build(gemms)
            err, max_err = _layer_error(fused, x, y, real, unpad)
            if err <= budget:
                break
        entry.fallbacks = [f"{g}: int8 -> {gemms[g]} (int8 alone: {sens[g]:.1e})" for g in order if gemms[g] != "int8"]
    entry.gemms = dict(gemms)
    entry.rel_error, entry.max_abs_error = err, max_err
    return fused, entry


def _cpu_kernels(fused: list, compute_dtype: torch.dtype) -> str:
    """The report's ``cpu kernels`` line: which C++ path and GEMM / attention instructions the layers run."""
    from ..ops import _cpu_gemm

    weight_dtype = {"int8": torch.int8, "bf16": torch.bfloat16}  # fp32 and CPU fp16: the fp32 kernel
    dtypes = [weight_dtype.get(p, torch.float32) for layer in fused for p in layer.gemm_precision.values()]
    attention = [layer.attention_dtype(torch.device("cpu")) for layer in fused]
    summary = _cpu_gemm.kernel_summary(dtypes, torch.bfloat16 if torch.bfloat16 in attention else compute_dtype)
    if compute_dtype != torch.bfloat16 and torch.bfloat16 in attention:
        summary += (f"; attention of {attention.count(torch.bfloat16)} of {len(fused)} int8 layers on bf16 q, k, v "
                    "(layer.bf16_attention = False keeps fp32)")
    return summary


def _fp16_on_fp32_kernels(device: torch.device, backend: Optional[str]) -> bool:
    """Whether an fp16 model runs its GEMMs as fp16 operands on the cpu backend's fp32 kernel (a CPU model,
    backend None or "cpu", the C++ extension built): then its activations between GEMMs are fp32."""
    if device.type != "cpu" or backend not in (None, "cpu"):
        return False
    t = torch.empty(1, 2)
    return ops.which_backend("linear", t, torch.empty(2, 2), None, None, backend=backend) == "cpu"


def _native_bf16(device: torch.device, backend: Optional[str]) -> bool:
    """Whether a bf16 GEMM is faster than fp32 where this model runs: a CUDA GPU with bf16, or the C++
    backend on a CPU with AVX512_BF16 (its ``vdpbf16ps`` kernel; without it bf16 is widened to fp32,
    no faster than fp32 itself). The reference backend has no fast bf16: fp32 fallbacks only."""
    if backend == "reference":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if ops.which_backend("linear", torch.empty(1, 2, dtype=torch.bfloat16), torch.empty(2, 2, dtype=torch.bfloat16),
                         None, None, backend=backend) != "cpu":
        return False
    from ..ops import _cpu_gemm

    return _cpu_gemm.native_bf16()


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`optimize`: put the original encoder back (same weights, same objects), remove the input
    checks and the report. ValueError if the model was not optimized."""
    state = getattr(model, _STATE, None) if isinstance(model, nn.Module) else None
    if state is None:
        raise ValueError("restore: this model was not optimized by bertsilicon.optimize (nothing to restore)")
    if "inner" in state:
        restore(state["inner"])
    elif "base" in state:
        fused = getattr(state["base"], state["attr"])
        state["original"].train(fused.training)
        setattr(state["base"], state["attr"], state["original"])
        state["hook"].remove()
    model.__dict__.pop(_STATE, None)
    model.__dict__.pop("bertsilicon_report", None)
    return model
