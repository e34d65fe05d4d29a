"""``bertsilicon.optimize(model)``: run a Hugging Face BERT-family model on the fused ops; ``restore`` undoes it.

The model object, its class and its ``forward`` signature stay the same; only the encoder (the module
holding ``layer``: ``BertModel.encoder``, likewise RoBERTa, XLM-R, CamemBERT, ELECTRA and MobileBERT's, and
``DistilBertModel.transformer``) is swapped for a :class:`~bertsilicon.models.encoder.FusedEncoder` whose layers
are fused layers (:mod:`bertsilicon.models.layers`). The fused layers keep the original sub-modules under their
original names, so ``state_dict()`` keys, ``parameters()``, ``.to()`` and ``save_pretrained`` see the original
model. One call of ``optimize``:

1. finds the family's adapter (:mod:`.adapters`) and checks the backend against the model's device
   (:func:`bertsilicon.backends.routing.model_reason`);
2. runs the original model on a calibration batch, keeping every layer's input and output (:mod:`.calibration`);
3. builds each fused layer in the precision asked, int8 within its error budget (:func:`.calibration.build_layer`);
4. swaps the encoder and checks the whole model once against the original output (``report.end_to_end``).
"""
from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Mapping
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import ops, quant
from ..backends import routing
from . import cuda_graphs as cg
from .adapters import ADAPTERS
from .calibration import build_layer, calibration_batch, capture_layers
from .encoder import FusedEncoder
from .layers import PRECISIONS
from .report import LayerReport, OptimizeReport

__all__ = ["optimize", "restore", "supported_classes", "DEFAULT_INT8_BUDGET", "DEFAULT_INT8_SMOOTH"]

COMPUTE_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
# int8 per-layer budget: a layer whose relative output error (alone, on the calibration batch) exceeds
# it moves its most sensitive int8 GEMMs to a higher precision until it fits: first to bf16 where the
# backend has a native bf16 GEMM (AVX512_BF16 CPUs, GPUs with bf16), then, if that is not enough, to fp32.
DEFAULT_INT8_BUDGET = 2e-2
# int8's SmoothQuant alpha unless told otherwise (smooth="auto"): migrating half of each GEMM input's outlier
# range into its weight keeps every GEMM of the built-in MiniLM int8 within the budget above, where no migration
# moves a third of them to a wider precision (larger weights, slower GEMMs, a longer calibration).
DEFAULT_INT8_SMOOTH = 0.5
STATE = "_bertsilicon_state"


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


def adapter_for(model: nn.Module):
    for adapter in ADAPTERS:
        if isinstance(model, adapter.pretrained_class):
            return adapter
    return None


def _inner_model(model: nn.Module) -> Optional[nn.Module]:
    """A supported HF model inside a wrapper (e.g. a ``SentenceTransformer``), if there is exactly one."""
    found = [m for m in model.modules() if m is not model and adapter_for(m) is not None]
    top = [m for m in found if not any(m is not o and any(m is s for s in o.modules()) for o in found)]
    return top[0] if len(top) == 1 else None


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
    reason = routing.model_reason(backend, device)
    if reason is not None:
        raise ValueError(reason)
    return device


def install(model: nn.Module, base: nn.Module, adapter, encoder: FusedEncoder, state: dict) -> FusedEncoder:
    """Put the fused ``encoder`` in the place of ``base``'s own, add the input-check hook, and keep on ``model`` what
    :func:`restore` needs (``state``, with the hook): what :func:`optimize` and ``bertsilicon.load`` share."""
    setattr(base, adapter.encoder_attr, encoder)
    check = _validate_inputs_hook(adapter.max_positions(base.config), adapter.position_limit_text(base.config))
    model.__dict__[STATE] = {**state, "hook": base.register_forward_pre_hook(check, with_kwargs=True)}
    return encoder


def optimize(model: nn.Module, precision: str = "fp32", backend: Optional[str] = None, unpad: bool = True,
             calibration: Union[None, Sequence[str], Mapping] = None, smooth: Union[float, None, str] = "auto", *,
             tokenizer=None, error_budget: Optional[float] = None, cuda_graphs: Optional[bool] = None,
             keep_original: bool = True) -> nn.Module:
    """Run a Hugging Face BERT-family model's encoder on bertsilicon's fused ops; returns the same object.

    Args:
        model: ``BertModel`` or any ``BertFor*`` head, ``DistilBertModel`` or a head, ``RobertaModel``,
            ``XLMRobertaModel``, ``CamembertModel``, ``ElectraModel`` or one of their heads (BertLayer clones;
            see :func:`supported_classes`), ``MobileBertModel`` or a head (its bottleneck layers fused as
            :class:`~bertsilicon.models.layers.FusedMobileBertLayer`), or a wrapper holding one (e.g. a
            ``SentenceTransformer``).
        precision: ``"fp32" | "bf16" | "fp16" | "int8"`` for the encoder's GEMMs (LayerNorm statistics,
            softmax and accumulation stay fp32; int8 keeps the residual stream in fp32). Outputs come back
            in the model's own dtype.
        backend: ``None`` (best available per op) or ``"reference" | "cpu" | "triton"``, passed to every op.
        unpad: strip padding once after the embeddings (padded output positions are 0, see module doc).
        calibration: texts (or a tokenized batch) for the optimize-time error measurement and the int8
            statistics; default: 16 paragraphs of the built-in Python documentation corpus.
        smooth: SmoothQuant alpha in [0, 1] for int8; ``"auto"``: ``DEFAULT_INT8_SMOOTH`` for int8, nothing for
            the other precisions; None: no migration.
        tokenizer: to tokenize ``calibration`` texts (default: the built-in uncased WordPiece).
        error_budget: int8 per-layer relative-error budget (default ``DEFAULT_INT8_BUDGET``); a layer over
            it moves its most sensitive GEMMs to fp32, and the report says which.
        cuda_graphs: replay a captured CUDA graph per (batch, length, token) bucket for every call whose
            layers run on at most ``GRAPH_MAX_TOKENS`` token rows (8192: batch 32 x 128 unpadded or padded;
            lengths <= 512); larger calls run eagerly (None: on for CUDA models; must be off for CPU models).
        keep_original: keep the original weights of the GEMMs that now run on prepared copies (int8, bf16, ...),
            for :func:`restore` and for the calls only the original layers serve (training mode,
            ``output_attentions``, gradients). False drops them (an int8 MiniLM: 40 MiB fewer): the model serves
            inference only, like one loaded by ``bertsilicon.load``.

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
    if isinstance(smooth, str) and smooth == "auto":
        smooth = DEFAULT_INT8_SMOOTH if precision == "int8" else None
    if smooth is not None and (isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth <= 1):
        raise ValueError(f"smooth must be 'auto', None or a SmoothQuant alpha in [0, 1], got {smooth!r}")
    if smooth is not None and precision != "int8":
        raise ValueError(f"smooth={smooth} only applies to precision='int8' (got precision={precision!r})")
    if not isinstance(keep_original, bool):
        raise TypeError(f"keep_original must be a bool, got {type(keep_original).__name__}")
    if error_budget is not None and not (isinstance(error_budget, (int, float)) and error_budget > 0):
        raise ValueError(f"error_budget must be a positive float, got {error_budget!r}")
    if getattr(model, STATE, None) is not None:
        warnings.warn("optimize: this model is already optimized; returning it unchanged "
                      "(call bertsilicon.restore(model) first to re-optimize)", stacklevel=2)
        return model

    adapter = adapter_for(model)
    if adapter is None:
        inner = _inner_model(model)
        if inner is None:
            raise TypeError(f"optimize does not support {type(model).__name__}; supported: "
                            f"{', '.join(supported_classes())} (or a wrapper such as SentenceTransformer holding one)")
        optimize(inner, precision, backend, unpad, calibration, smooth, tokenizer=tokenizer,
                 error_budget=error_budget, cuda_graphs=cuda_graphs, keep_original=keep_original)
        model.__dict__[STATE] = {"inner": inner}
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
        model.__dict__[STATE] = {"refused": True}
        model.bertsilicon_report = report
        return model

    device = _check_device(base, backend)
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type not in cg.CAPTURE_DEVICES:
        raise ValueError(f"cuda_graphs=True needs a CUDA model; the model is on {device}")
    report.cuda_graphs = bool(cuda_graphs)
    compute_dtype = COMPUTE_DTYPE[precision]
    if precision == "fp16" and routing.fp16_on_fp32_kernels(device, backend):
        compute_dtype = torch.float32
        report.notes.append("fp16 on this CPU (no fp16 arithmetic): weights and GEMM inputs rounded to fp16, products, "
                            "sums and GEMM outputs in fp32 on the fp32 kernel; residual stream, attention and "
                            "LayerNorm in fp32")
    budget = (error_budget or DEFAULT_INT8_BUDGET) if precision == "int8" else None
    report.error_budget = budget

    was_training = base.training
    base.eval()
    try:
        ids, mask, report.calibration = calibration_batch(config, calibration, tokenizer, device,
                                                                 adapter.max_positions(config))
        inputs, outputs, final_ref = capture_layers(base, encoder.layer, ids, mask)
        real = mask.bool()
        fused = []
        for i, layer in enumerate(encoder.layer):
            fused_layer, entry = build_layer(i, layer, adapter, config, precision, compute_dtype, backend, unpad,
                                              inputs[i], outputs[i], real, smooth, budget)
            fused.append(fused_layer)
            report.layers.append(entry)
        for entry, fused_layer in zip(report.layers, fused):  # asked of the layer as it will run
            entry.call = fused_layer.call_path(device)
            if cuda_graphs:
                entry.call = f"CUDA graph (calls on <= {cg.GRAPH_MAX_TOKENS} token rows), else {entry.call}"
        report.backends_used = fused[0].backends_used(inputs[0][real][:4].to(compute_dtype).contiguous())
        if "cpu" in report.backends_used.values():
            report.cpu_kernels = cpu_kernels_line(fused, compute_dtype)
        new_encoder = FusedEncoder(encoder, fused, adapter, report, compute_dtype, unpad, bool(cuda_graphs))
        install(model, base, adapter, new_encoder, {"base": base, "attr": adapter.encoder_attr, "original": encoder})
        new_encoder.cuda_graphs = False  # measured eagerly (the graph path is the same kernels on the same rows):
        try:                             # no graph captured, and held, for the calibration batch's shape
            with torch.no_grad():
                got = base(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            new_encoder.cuda_graphs = bool(cuda_graphs)
        from .eval import mean_pool, pooled_cosines  # noqa: I001  (the evaluation helpers, on first use)

        rows = real.any(1)  # a fully padded row pools to zeros on both sides: no cosine to report
        cos = pooled_cosines(mean_pool(got, mask), mean_pool(final_ref, mask))[rows]
        report.end_to_end = {"rel_error": quant.relative_error(got[real], final_ref[real]),
                             "min_pooled_cosine": float(cos.min()) if cos.numel() else float("nan"),
                             "sentences": int(rows.sum())}
    except Exception:
        if getattr(base, adapter.encoder_attr) is not encoder:
            setattr(base, adapter.encoder_attr, encoder)
        state = model.__dict__.pop(STATE, None)
        if state and "hook" in state:
            state["hook"].remove()
        raise
    finally:
        base.train(was_training)
    if not keep_original:
        drop_original_weights(model, new_encoder, "optimize(..., keep_original=False) dropped them")
    report.weights = weight_bytes(base, fused)
    model.bertsilicon_report = report
    return model


def drop_original_weights(model: nn.Module, encoder: FusedEncoder, why: str) -> None:
    """Replace every original parameter a fused GEMM holds a prepared copy of by a ``meta`` tensor of its shape (no
    memory) and freeze the model (inference only); :func:`restore` and calls that need the original layers say
    ``why`` they are gone."""
    for layer in encoder.layer:
        for g in layer.gemm_precision:
            gemm = layer._modules[g]
            for source in gemm.prepared_sources():
                for name, p in source._parameters.items():
                    if p is not None and p.device.type != "meta":
                        source._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=False)
            gemm.resync()
    model.requires_grad_(False)
    encoder.originals_gone = why
    model.__dict__[STATE]["originals_gone"] = why


def weight_bytes(base: nn.Module, fused: list) -> dict:
    """Bytes of the weights the optimized model holds, by role: ``"<precision> prepared"`` (the GEMMs' prepared
    copies), ``"cpu packs"`` (the cpu kernels' packed layouts of the GEMM weights, made at first use),
    ``"originals of prepared GEMMs"`` (kept for :func:`restore`), ``"other"`` (embeddings, LayerNorms, fp32 GEMMs
    read in place, heads). A tensor counts once; ``meta`` tensors count nothing."""
    cpu = routing.cpu_backend()
    out: dict = {}
    seen: set = set()

    def add(role: str, t) -> None:
        if t is None or t.device.type == "meta" or t.untyped_storage().data_ptr() in seen:
            return
        seen.add(t.untyped_storage().data_ptr())
        out[role] = out.get(role, 0) + t.untyped_storage().nbytes()

    for layer in fused:
        for g, precision in layer.gemm_precision.items():
            gemm = layer._modules[g]
            for t in gemm.prepared_tensors().values():
                add(f"{precision} prepared", t)
            for source in gemm.prepared_sources():
                for t in source._parameters.values():
                    add("originals of prepared GEMMs", t)
            if cpu is not None:
                packs = sum(cpu.gemm.packed_bytes(w) for w in gemm.cpu_operands()[:1])
                out["cpu packs"] = out.get("cpu packs", 0) + packs
    for t in [*base.parameters(), *base.buffers()]:
        add("other", t)
    return {role: n for role, n in out.items() if n}


def cpu_kernels_line(fused: list, compute_dtype: torch.dtype) -> str:
    """The report's ``cpu kernels`` line: which C++ path and GEMM / attention instructions the layers run."""
    weight_dtype = {"int8": torch.int8, "bf16": torch.bfloat16}  # fp32 and CPU fp16: the fp32 kernel
    dtypes = [weight_dtype.get(p, torch.float32) for layer in fused for p in layer.gemm_precision.values()]
    attention = [layer.attention_dtype(torch.device("cpu")) for layer in fused]
    summary = routing.cpu_backend().gemm.kernel_summary(dtypes, torch.bfloat16 if torch.bfloat16 in attention else compute_dtype)
    if compute_dtype != torch.bfloat16 and torch.bfloat16 in attention:
        summary += (f"; attention of {attention.count(torch.bfloat16)} of {len(fused)} int8 layers on bf16 q, k, v "
                    "(layer.bf16_attention = False keeps fp32)")
    return summary


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`optimize`: put the original encoder back (same weights, same objects), remove the input
    checks and the report. ValueError if the model was not optimized."""
    state = getattr(model, STATE, None) if isinstance(model, nn.Module) else None
    if state is None:
        raise ValueError("restore: this model was not optimized by bertsilicon.optimize (nothing to restore)")
    if "originals_gone" in state:
        raise ValueError(f"restore: this model holds no original copy of the GEMM weights it prepared "
                         f"({state['originals_gone']}), so there is nothing to restore; load the original checkpoint "
                         "for the fp32 model (transformers' from_pretrained on the directory it came from)")
    if "inner" in state:
        restore(state["inner"])
    elif "base" in state:
        fused = getattr(state["base"], state["attr"])
        state["original"].train(fused.training)
        setattr(state["base"], state["attr"], state["original"])
        state["hook"].remove()
    model.__dict__.pop(STATE, None)
    model.__dict__.pop("bertsilicon_report", None)
    return model
