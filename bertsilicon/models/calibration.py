"""What :func:`~bertsilicon.models.optimize.optimize` measures before it swaps the encoder: the calibration batch,
every original layer's inputs and outputs on it, and per layer the fused layer within the int8 error budget
(SmoothQuant factors, the per-GEMM fallback ladder)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

import torch

from .. import quant
from ..backends import routing
from .encoder import pack
from .layers import FusedLayerBase
from .report import LayerReport

CALIBRATION_SENTENCES = 8
CALIBRATION_MAX_LENGTH = 128


def calibration_batch(config, calibration, tokenizer, device, max_positions: Optional[int]):
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


def capture_layers(base, layers, ids, mask):
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


def _error_meter(x, y, real, unpad, compute_dtype):
    """``measure(layer) -> (relative error, max abs error)`` of a fused layer against the original layer's output
    ``y`` on input ``x``, real tokens only, in float64 (:func:`bertsilicon.quant.relative_error`'s definition). The
    input in the compute dtype, its packing and the float64 reference are made once for every candidate layer."""
    xc = x.to(compute_dtype)
    packed = (xc[real], *pack(real)) if unpad else None
    ref = y[real].double()
    ref_norm = ref.norm()

    def measure(layer: FusedLayerBase) -> tuple[float, float]:
        with torch.no_grad():
            out = layer.forward_packed(*packed, offsets_checked=True) if unpad else layer.forward_padded(xc, real)[real]
        if ref.numel() == 0:
            return 0.0, 0.0
        d = out.double() - ref
        norm = d.norm()
        return float(norm / ref_norm) if float(ref_norm) > 0 else float(norm), float(d.abs().max())

    return measure


def build_layer(i, layer, adapter, config, precision, compute_dtype, backend, unpad, x, y, real, smooth, budget):
    parts = adapter.layer_parts(layer, config)
    layer_class = adapter.layer_class
    names = layer_class.gemm_names(parts)
    entry = LayerReport(i, "fused")
    factors = None
    if precision == "int8" and smooth is not None:
        probe = layer_class(layer, parts, dict.fromkeys(names, "fp32"), torch.float32, backend=backend)
        stats: dict = {}
        with torch.no_grad():
            probe.forward_packed(x.float()[real], *pack(real), stats=stats, offsets_checked=True)
        # each GEMM's fp32 weight as it multiplies (the concatenated one where several linears share an input)
        factors = {g: quant.smoothing_factors(stats[g].value, probe._modules[g].operands()[0], smooth) for g in names}

    weight_max: dict = {}  # GEMM -> int8 weight range where it differs from the path's
    prepared: dict = {}  # (GEMM, precision, int8 weight range) -> its prepared copies: each made once per layer

    def key(g, p):
        return g, p, weight_max.get(g) if p == "int8" else None

    def build(gemms):
        given = {g: prepared[key(g, p)] for g, p in gemms.items() if key(g, p) in prepared}
        candidate = layer_class(layer, parts, gemms, compute_dtype, smooth=factors, backend=backend,
                                int8_weight_max=weight_max, prepared=given)
        for g, p in gemms.items():
            prepared.setdefault(key(g, p), dict(candidate._modules[g].named_buffers()))
        return candidate

    layer_error = _error_meter(x, y, real, unpad, compute_dtype)
    gemms = dict.fromkeys(names, precision)
    fused = build(gemms)
    err, max_err = layer_error(fused)
    if budget is not None and err > budget:
        # sensitivity of each GEMM alone in int8 (others fp32); move the worst up a step at a time until the
        # layer is within budget: on a path whose fast int8 kernel takes 7-bit weights (AVX2), first to 8-bit
        # weights (still int8: the int16-pair kernel, no slower than fp32), then int8 -> bf16 for every GEMM
        # in turn where bf16 is native, then -> fp32
        sens = {g: layer_error(build({k: ("int8" if k == g else "fp32") for k in names}))[0] for g in names}
        order = sorted(names, key=sens.get, reverse=True)
        steps = [(g, "int8") for g in order] if routing.int8_weight_max(x.device, backend) < 127 else []
        steps += [(g, "bf16") for g in order] if routing.native_bf16_gemm(x.device, backend) else []
        steps += [(g, "fp32") for g in order]
        for g, to in steps:
            if to == "int8":
                weight_max[g] = 127
            else:
                gemms[g] = to
            fused = build(gemms)
            err, max_err = layer_error(fused)
            if err <= budget:
                break
        entry.wider_int8 = [f"{g}: int8 8-bit weights (7-bit alone: {sens[g]:.1e})" for g in order
                            if gemms[g] == "int8" and g in weight_max]
        entry.fallbacks = [f"{g}: int8 -> {gemms[g]} (int8 alone: {sens[g]:.1e})" for g in order if gemms[g] != "int8"]
    entry.gemms = dict(gemms)
    entry.rel_error, entry.max_abs_error = err, max_err
    return fused, entry
