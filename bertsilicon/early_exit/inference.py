"""Batched early-exit inference with compaction (FastBERT's adaptive inference, served a batch at a time).

After layer ``l`` every sample still in the batch is classified by the classifier after that layer; a sample
whose normalized entropy is below ``speed`` leaves with that prediction, and the rows of the samples that left
are dropped from the stream, so layer ``l + 1`` runs only on the samples still in:

* optimized model, padding present: the padding-free packed stream ``[T, H]`` (``cu_seqlens``) of the fused
  encoder; compaction drops the exited samples' tokens and rebuilds ``cu_seqlens`` from the kept key mask;
* optimized model without padding (or ``unpad=False``): the padded stream ``[n, L, H]`` of the fused layers;
* plain Hugging Face model: its own layers on ``[n, L, H]`` with the attention mask HF built for the batch.

Each path is the one the plain model's forward takes for the same batch, through the same layer calls, so
``speed=0`` (no sample leaves before the last layer) gives the plain model's logits bit for bit. Outputs come
back in input order with the layer (1-based) each sample left at. ``compact=False`` keeps the exited rows in
the stream (masking only: the same decisions, the cost of the full batch until every sample has left).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..models.encoder import NotKeyPadding, key_padding_mask, pack
from .branches import EarlyExitModel, encoder_of, is_fused, normalized_entropy


@dataclass
class ExitOutput:
    """``logits [N, C]`` (the classifier the sample left at), ``exit_layer [N]`` int64 in ``1 .. layers``,
    ``uncertainty [N]`` float32 (normalized entropy of those logits; NaN where the sample ran the whole model at
    ``speed=0``, where none is computed), ``rows_per_layer``: samples each layer ran on (compaction) or the
    batch size (masking only), summed over batches."""

    logits: torch.Tensor
    exit_layer: torch.Tensor
    uncertainty: torch.Tensor
    rows_per_layer: list


class _Captured(Exception):
    """Raised by the encoder's pre-hook once the model has built the encoder's inputs."""


def _encoder_inputs(model, encoder, inputs: dict):
    """``(hidden_states [B, L, H], attention mask as the model hands it to its encoder)``: the model's own
    forward runs up to its encoder (input checks, embeddings, HF's mask), then stops."""
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        captured["mask"] = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
        raise _Captured

    handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured["h"], captured["mask"]


class _PackedStream:
    """The fused layers on the packed real tokens ``x [T, H]`` of the samples still in."""

    def __init__(self, x: torch.Tensor, key_mask: torch.Tensor):
        self.x = x.reshape(-1, x.shape[-1]).index_select(0, key_mask.reshape(-1).nonzero().squeeze(1))
        self.key_mask = key_mask
        self.cu_seqlens, self.max_seqlen = pack(key_mask)

    def run(self, layer) -> None:
        self.x = layer.forward_packed(self.x, self.cu_seqlens, self.max_seqlen, offsets_checked=True)

    def first_tokens(self) -> torch.Tensor:
        return self.x.index_select(0, self.cu_seqlens[:-1].long())

    def keep(self, keep: torch.Tensor) -> None:
        self.x = self.x[keep.repeat_interleave(self.cu_seqlens.diff())]
        self.key_mask = self.key_mask[keep]
        self.cu_seqlens, self.max_seqlen = pack(self.key_mask)


class _PaddedStream:
    """``x [n, L, H]`` through the fused layers (``key_mask [n, L]`` or None) or HF's layers (``mask`` as HF
    built it: None, or 4-D with the batch first)."""

    def __init__(self, x: torch.Tensor, mask: Optional[torch.Tensor], fused: bool):
        self.x, self.mask, self.fused = x, mask, fused

    def run(self, layer) -> None:
        if self.fused:
            self.x = layer.forward_padded(self.x, self.mask)
        else:
            out = layer(self.x, self.mask)
            self.x = out[0] if isinstance(out, tuple) else out

    def first_tokens(self) -> torch.Tensor:
        return self.x[:, 0]

    def keep(self, keep: torch.Tensor) -> None:
        if self.mask is not None and self.mask.shape[0] == self.x.shape[0]:
            self.mask = self.mask[keep]
        self.x = self.x[keep]


def _check_speed(speed) -> float:
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.0 <= float(speed) <= 1.0:
        raise ValueError(f"speed must be a number in [0, 1] (the normalized-entropy threshold; 0 = never exit), "
                         f"got {speed!r}")
    return float(speed)


def _stream(ee: EarlyExitModel, input_ids, attention_mask, token_type_ids):
    """``(encoder, stream, scope, batch, dtype)``: the embedded batch on the path the plain model's forward takes."""
    if not isinstance(ee, EarlyExitModel):
        raise TypeError(f"ee must be an EarlyExitModel (bertsilicon.early_exit.attach_branches), got {type(ee).__name__}")
    if ee.model.training:
        raise ValueError("ee: the model is in training mode; call ee.eval() before early-exit inference")
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    encoder = encoder_of(ee.model)
    h, mask = _encoder_inputs(ee.model, encoder, inputs)
    B, L = h.shape[:2]
    if not is_fused(ee.model):
        return encoder, _PaddedStream(h, mask, fused=False), contextlib.nullcontext(), B, h.dtype
    try:
        key_mask = key_padding_mask(mask, B, L)
    except NotKeyPadding:
        raise ValueError("attention_mask: early exit needs a key-padding mask ([batch, length] of 0/1)") from None
    x = h.to(encoder.compute_dtype)
    stream = (_PackedStream(x, key_mask) if key_mask is not None and encoder.unpad
              else _PaddedStream(x, key_mask, fused=True))
    return encoder, stream, encoder.layers_scope(x.device), B, h.dtype


@torch.no_grad()
def classify(ee: EarlyExitModel, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
             token_type_ids: Optional[torch.Tensor] = None, speed: float = 0.0, compact: bool = True) -> ExitOutput:
    """Early-exit classification of one batch (see the module docstring). ``speed`` in ``[0, 1]``: a sample leaves
    after the first layer whose classifier's normalized entropy is below it (0: the plain model)."""
    speed = _check_speed(speed)
    return _exit_loop(ee, *_stream(ee, input_ids, attention_mask, token_type_ids), speed, compact)


@torch.no_grad()
def layer_logits(ee: EarlyExitModel, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every classifier's logits for every sample, ``[B, layers, C]``: the whole batch through every layer (no
    sample leaves). Row ``b`` of layer ``l`` is what :func:`classify` computes for ``b`` there, so the exit
    layer of any ``speed`` follows from one call (:func:`exit_layers`)."""
    encoder, stream, scope, B, dtype = _stream(ee, input_ids, attention_mask, token_type_ids)
    out = []
    with scope:
        for layer, classifier in zip(encoder.layer, ee.classifiers()):
            stream.run(layer)
            out.append(classifier(stream.first_tokens().to(dtype)))
    return torch.stack(out, 1)


def exit_layers(uncertainty: torch.Tensor, speed: float) -> torch.Tensor:
    """The 1-based layer each sample leaves at, ``[N]`` int64, from every classifier's normalized entropy
    ``[N, layers]``: the first layer below ``speed``, else the last."""
    speed = _check_speed(speed)
    below = uncertainty[:, :-1] < speed
    below = torch.cat([below, torch.ones_like(below[:, :1])], 1)
    return below.int().argmax(1) + 1


def _exit_loop(ee, encoder, stream, scope, B: int, out_dtype, speed: float, compact: bool) -> ExitOutput:
    """The layer loop: run a layer, classify the samples not yet out, let the confident ones leave."""
    classifiers = ee.classifiers()
    last = ee.num_layers - 1
    alive = torch.arange(B)                      # input index of each row in the stream
    done = torch.zeros(B, dtype=torch.bool)
    exit_layer = torch.full((B,), ee.num_layers, dtype=torch.int64)
    uncertainty = torch.full((B,), float("nan"))
    logits, rows = None, []
    with scope:
        for l, layer in enumerate(encoder.layer):
            rows.append(len(alive))
            stream.run(layer)
            if l < last and speed == 0.0:
                continue
            pending = ~done[alive]
            out = classifiers[l](stream.first_tokens()[pending].to(out_dtype))
            u = normalized_entropy(out) if speed > 0.0 else None  # speed 0: only the last layer gets here
            leave = torch.ones(len(out), dtype=torch.bool) if l == last else u < speed
            ids = alive[pending][leave]
            if logits is None:
                logits = out.new_full((B, out.shape[-1]), float("nan"))
            logits[ids] = out[leave]
            if u is not None:
                uncertainty[ids] = u[leave].float()
            exit_layer[ids] = l + 1
            done[ids] = True
            if bool(done.all()):
                break
            if compact:
                stream.keep(~leave)
                alive = alive[~leave]
    return ExitOutput(logits, exit_layer, uncertainty, rows + [0] * (ee.num_layers - len(rows)))


def classify_texts(ee: EarlyExitModel, tokenizer, texts: Sequence[str], speed: float = 0.0, batch_size: int = 32,
                   max_length: int = 128, compact: bool = True) -> ExitOutput:
    """:func:`classify` over ``texts`` in batches of ``batch_size`` taken in the given order (as requests arrive);
    outputs in input order."""
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    parts = []
    for c in range(0, len(texts), batch_size):
        b = tokenizer(texts[c:c + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
        parts.append(classify(ee, b["input_ids"], b["attention_mask"], speed=speed, compact=compact))
    return ExitOutput(torch.cat([p.logits for p in parts]), torch.cat([p.exit_layer for p in parts]),
                      torch.cat([p.uncertainty for p in parts]),
                      [sum(r) for r in zip(*(p.rows_per_layer for p in parts))])


__all__ = ["ExitOutput", "classify", "classify_texts", "layer_logits", "exit_layers"]
