"""The fused encoder (:class:`FusedEncoder`) that :func:`~bertsilicon.models.optimize.optimize` puts in place of a
Hugging Face encoder, and what it does on every call.

The model object, its class and its ``forward`` signature stay the same; only the encoder (the module
holding ``layer``: ``BertModel.encoder``, likewise RoBERTa, XLM-R, CamemBERT, ELECTRA and MobileBERT's, and
``DistilBertModel.transformer``) is swapped for a :class:`FusedEncoder` whose layers are
:class:`~bertsilicon.models.layers.FusedEncoderLayer` (MobileBERT:
:class:`~bertsilicon.models.layers.FusedMobileBertLayer`).
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
   (batch, length bucket). Same kernels and tile configs on the same rows as the eager path (:mod:`.cuda_graphs`).

``output_hidden_states`` works on both paths (the encoder hands HF's output collector its states; such
calls run eagerly).

Gradients: a call in grad mode whose input or encoder weights require a gradient (an eval-mode model
outside ``torch.no_grad()``) runs the fused forward, and its backward is the original layers' backward,
recomputed on the encoder's input as activation checkpointing does (:class:`_FusedForwardOriginalBackward`;
the report counts such calls). A call that needs no gradient runs under ``no_grad``, graphs included.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Optional, Sequence

import torch
from torch import nn

from ..backends import routing
from . import cuda_graphs as cg
from .cuda_graphs import GraphCache
from .layers import FusedLayerBase
from .report import OptimizeReport


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


class NotKeyPadding(Exception):
    """A 4-D attention mask that is not a key-padding mask (the original layers run such calls)."""


def key_padding_mask(mask: Optional[torch.Tensor], batch: int, length: int) -> Optional[torch.Tensor]:
    """``[B, L]`` bool (True = real token) from HF's encoder mask, or None when every token is real.

    Accepts a 2-D 0/1 mask, HF's 4-D bool mask (True = attend) or 4-D additive float mask (0 = attend,
    dtype-min = masked). Raises :class:`NotKeyPadding` for a 4-D mask that is not a key-padding mask.
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
        raise NotKeyPadding
    all_real, *ok = torch.stack([real.all(), *checks]).tolist()
    if not all(ok):
        raise NotKeyPadding
    return None if all_real else real


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
        self.adapter = adapter
        self.report = report
        for attr in ("config", "n_layers", "gradient_checkpointing"):
            if attr in original.__dict__:
                self.__dict__[attr] = original.__dict__[attr]
        self.compute_dtype = compute_dtype
        self.unpad = unpad
        self.originals_gone: Optional[str] = None  # why the original layers' GEMM weights are not held, if not
        self.graphs = GraphCache(self.layer, report, cuda_graphs)
        self.train(original.training)

    @property
    def cuda_graphs(self) -> bool:
        """Whether calls replay captured CUDA graphs (:mod:`.cuda_graphs`); off after a failed capture."""
        return self.graphs.enabled

    @cuda_graphs.setter
    def cuda_graphs(self, on: bool) -> None:
        self.graphs.enabled = bool(on)

    def _apply(self, fn, *args, **kwargs):
        """``.to()``, ``.cuda()``, ``.half()``, ... on the model. New storage (another device) is followed: the
        prepared copies are buffers and move with it, and the one-call snapshots and packs re-derive from the
        new tensors. A dtype change is not (the layers were prepared for one precision; ``.float()`` would
        also widen a bf16 GEMM's prepared weight): it is recorded, and the next forward raises saying so."""
        self.graphs.drop()  # captured graphs point at the old tensors
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
                f"its fused layers were prepared for precision={self.report.precision!r}, and converting "
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
        if torch.compiler.is_exporting():
            return self.adapter.encoder_output(self.run_exportable(hidden_states, attention_mask))
        self._refuse_if_converted()
        collected = _collector()
        reason = self._runtime_fallback(args, kwargs, collected)
        B, L = hidden_states.shape[:2]
        key_mask = None
        if reason is None:
            try:
                key_mask = key_padding_mask(attention_mask, B, L)
            except NotKeyPadding:
                reason = "attention mask is not a key-padding mask (custom 4-D mask)"
        want_states = collected is not None and "hidden_states" in collected
        params = self._grad_params(hidden_states) if reason is None else None
        if params is not None and want_states:  # the states handed to the collector would carry no gradient
            reason = "gradients needed with output_hidden_states"
        if self.originals_gone and (reason is not None or params is not None):
            raise ValueError(f"this call needs the original layers ({reason or 'gradients'}), whose GEMM weights the "
                             f"model does not hold ({self.originals_gone}); it serves inference only: call it in eval "
                             "mode under torch.no_grad(), without output_attentions")
        if reason is not None:
            self.report.runtime_fallbacks[reason] += 1
            return self._run_original(hidden_states, attention_mask, args, kwargs, collected)
        if params is not None:
            self.report.recomputed_backward += 1
            zero_padded = key_mask is not None and self.unpad  # the fused output is 0 there, HF's is not

            def original(h):
                return self._run_original(h, attention_mask, args, kwargs, None)[0]
            out = _FusedForwardOriginalBackward.apply(lambda h: self.run(h, key_mask), original,
                                                      key_mask if zero_padded else None, hidden_states, *params)
            return self.adapter.encoder_output(out)
        if want_states:
            _append_hidden(collected, hidden_states)
        with torch.no_grad():  # nothing needs a gradient: so CUDA graphs serve even in grad mode
            out = self.run(hidden_states, key_mask,
                           (lambda h: _append_hidden(collected, h)) if want_states else None)
        return self.adapter.encoder_output(out)

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
        cache = self.graphs
        graphs = cache.serve(x, on_layer)
        if key_mask is not None and self.unpad:
            index = key_mask.reshape(-1).nonzero().squeeze(1)  # a device sync (the token count)
            packed = x.reshape(B * L, H).index_select(0, index)
            graphs = graphs and 0 < packed.shape[0] and cg.graph_tokens(packed.shape[0]) <= cg.GRAPH_MAX_TOKENS
            cu_seqlens, max_seqlen = pack(key_mask, longest=not graphs)  # a graph needs no longest (a sync)

            def repad(t):
                return t.new_zeros(B * L, H).index_copy_(0, index, t).view(B, L, H)

            if graphs:
                with cg.graph_turn(x.device):  # the static buffers are shared: one call at a time, until its output is out
                    out = cache.packed(packed, cu_seqlens, B, L, self._layers_packed)
                    if out is not None:
                        return repad(out).to(in_dtype)
                cu_seqlens, max_seqlen = pack(key_mask)  # the capture failed: eager from here
            packed = self._layers_packed(packed, cu_seqlens, max_seqlen,
                                         None if on_layer is None else (lambda t: on_layer(repad(t).to(in_dtype))))
            return repad(packed).to(in_dtype)
        if graphs and B * cg.length_bucket(L) <= cg.GRAPH_MAX_TOKENS:
            with cg.graph_turn(x.device):
                out = cache.padded(x, key_mask, self._layers_padded)
            if out is not None:
                return out.to(in_dtype)
        x = self._layers_padded(x, key_mask, None if on_layer is None else (lambda t: on_layer(t.to(in_dtype))))
        return x.to(in_dtype)

    def run_exportable(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The call as ``torch.export`` traces it: no value read on the host, no shape that depends on the data.
        The padded layers run with the key-padding mask taken as it is (a 2-D 0/1 mask, or HF's 4-D bool or
        additive mask, read at the first query row; a 4-D mask that is not a key-padding mask is not detected
        here), every op as its custom op (:mod:`bertsilicon.ops.library`), which picks its kernel when the
        exported program runs. With ``unpad`` the padded positions come out 0, as the padding-free path gives
        them. Inference only (no runtime fallback to the original layers)."""
        x = hidden_states.to(self.compute_dtype)
        key_mask = None
        if attention_mask is not None:
            if attention_mask.dim() == 4:
                first = attention_mask[:, 0, 0]
                key_mask = first if first.dtype == torch.bool else first == 0
            else:
                key_mask = attention_mask != 0
        out = self._layers_padded(x, key_mask)
        if key_mask is not None and self.unpad:
            out = out * key_mask.unsqueeze(-1).to(out.dtype)
        return out.to(hidden_states.dtype)

    def layers_scope(self, device: torch.device):
        """The context every layer loop of this encoder runs in (one shared C++ scratch block on a CPU); for a
        caller driving ``self.layer[i].forward_packed`` / ``forward_padded`` itself."""
        return _layer_scratch_held(device)

    # -- the layer loop: eager, and the body a CUDA graph records ---------------------------------- #
    def _layers_packed(self, x, cu_seqlens, max_seqlen, on_layer=None):
        """Every layer on packed tokens ``x [T, H]`` (``cu_seqlens`` built from the key mask: checked)."""
        with _layer_scratch_held(x.device):
            for layer in self.layer:
                x = layer.forward_packed(x, cu_seqlens, max_seqlen, offsets_checked=True)
                if on_layer is not None:
                    on_layer(x)
        return x

    def _layers_padded(self, x, key_mask, on_layer=None):
        """Every layer on ``x [B, L, H]`` with ``key_mask [B, L]`` (or None)."""
        with _layer_scratch_held(x.device):
            for layer in self.layer:
                x = layer.forward_padded(x, key_mask)
                if on_layer is not None:
                    on_layer(x)
        return x


def _layer_scratch_held(device: torch.device):
    """On a CPU, the one-call layers of this forward share one C++ scratch block (the cpu backend's
    ``layer.scratch_held``)."""
    cpu = routing.cpu_backend() if device.type == "cpu" and not torch.compiler.is_compiling() else None
    return contextlib.nullcontext() if cpu is None else cpu.layer.scratch_held()


def pack(real: torch.Tensor, longest: bool = True) -> tuple[torch.Tensor, Optional[int]]:
    """``(cu_seqlens int32 [B + 1], max_seqlen)`` of a key-padding mask ``[B, L]``; ``longest=False``: max_seqlen
    None (reading it is a device sync on CUDA)."""
    lengths = real.sum(1, dtype=torch.int32)
    cu = torch.zeros(real.shape[0] + 1, dtype=torch.int32, device=real.device)
    cu[1:] = torch.cumsum(lengths, 0)
    if not longest:
        return cu, None
    return cu, int(lengths.max()) if real.shape[0] else 0
