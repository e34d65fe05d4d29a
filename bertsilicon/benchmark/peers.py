"""The strongest CPU engines as peers: CTranslate2, OpenVINO with NNCF int8, ONNX Runtime static QDQ int8,
llama.cpp Q8_0. Each builder follows ``providers``' contract (``build(ctx) -> runner(batch) -> [B, L, H]``) and
raises :class:`ProviderUnavailable` with the reason when its package is missing or cannot run here.

Calibrated int8 (NNCF, ORT QDQ) sees :data:`CALIBRATION_TEXTS` real texts of the ``docstrings-train`` corpus
(other standard-library modules than the task and timing texts), tokenized at :data:`CALIBRATION_LENGTH`.
Every converted or quantized file goes to ``ctx.workdir`` and its path into ``ctx.cache``, so a second build
in the same folder (a cold-start process) loads it instead of converting again.
"""
from __future__ import annotations

import importlib
import os
import random

import numpy as np
import torch

from .providers import Batch, BuildContext, Provider, ProviderUnavailable, Runner, export_onnx, ort_runner, tokenize

CALIBRATION_TEXTS = 300
CALIBRATION_LENGTH = 128
CALIBRATION_BATCH = 8
STATIC_LENGTH_STEP = 16  # static-shape OpenVINO: lengths padded up to a multiple of this (one compile per shape)
BUILTIN_VOCAB = 30522


def _require(module: str, extra: str = "peers"):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProviderUnavailable(f"{module} is not installed (pip install -e '.[{extra}]')") from exc


def _cached(ctx: BuildContext, key: str, make) -> str:
    """``ctx.cache[key]``, else ``make(path)`` with ``path`` under ``ctx.workdir`` (reused when it exists)."""
    if key not in ctx.cache:
        path = os.path.join(ctx.workdir, f"{ctx.model_name}-{key}")
        if not os.path.exists(path):
            make(path)
        ctx.cache[key] = path
    return ctx.cache[key]


def calibration_batches(ctx: BuildContext, texts: int = None, batch: int = CALIBRATION_BATCH) -> list[Batch]:
    """``texts`` (default :data:`CALIBRATION_TEXTS`) real texts as padded batches of ``batch``: the built-in
    tokenizer's ids, or seeded random ids of the same lengths where the model's vocabulary is not the built-in
    one (tiny test models)."""
    from bertsilicon import data
    from bertsilicon.models.students import load_tokenizer

    n = CALIBRATION_TEXTS if texts is None else texts
    pool = data.corpus("docstrings-train").subset(n, seed=0).texts
    if len(pool) < n:
        raise ValueError(f"calibration: corpus 'docstrings-train' has {len(pool)} texts; {n} requested")
    tok = load_tokenizer()
    out = [tokenize(tok, pool[i:i + batch], CALIBRATION_LENGTH, "longest") for i in range(0, n, batch)]
    vocab = ctx.model.config.vocab_size
    if vocab != BUILTIN_VOCAB:
        gen = torch.Generator().manual_seed(0)
        out = [Batch(torch.randint(1, vocab, b.input_ids.shape, generator=gen) * b.attention_mask, b.attention_mask)
               for b in out]
    return out


def _feeds(b: Batch) -> dict:
    return {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()}


# ------------------------------------------------------------------------------------------------ #
# CTranslate2                                                                                        #
# ------------------------------------------------------------------------------------------------ #
def ctranslate2_model(ctx: BuildContext) -> str:
    """The model converted by ``ctranslate2.converters.TransformersConverter`` (weights kept in float32; the
    compute type is chosen when the encoder loads), from ``save_pretrained`` of the fp32 model and the built-in
    tokenizer (the converter reads the vocabulary from it). The converter asserts
    ``config.position_embedding_type == "absolute"``, an attribute transformers 5 no longer sets (its BERT has
    absolute positions only): set here on the copy that is saved."""
    ct2 = _require("ctranslate2")

    def convert(path):
        from bertsilicon.models.students import load_tokenizer

        hf = os.path.join(ctx.workdir, f"{ctx.model_name}-hf")
        model = ctx.fresh_model()
        model.config.position_embedding_type = getattr(model.config, "position_embedding_type", "absolute")
        model.save_pretrained(hf)
        load_tokenizer().save_pretrained(hf)
        ct2.converters.TransformersConverter(hf).convert(path, quantization=None, force=True)
    return _cached(ctx, "ct2", convert)


def _ctranslate2(compute_type: str):
    def build(ctx: BuildContext) -> Runner:
        ct2 = _require("ctranslate2")
        supported = ct2.get_supported_compute_types("cpu")
        if compute_type not in supported:
            raise ProviderUnavailable(f"CTranslate2 {ct2.__version__} offers compute types {', '.join(sorted(supported))} "
                                      f"on this CPU, not {compute_type}")
        encoder = ct2.Encoder(ctranslate2_model(ctx), device="cpu", compute_type=compute_type,
                              intra_threads=ctx.threads, inter_threads=1)

        def run(b: Batch) -> torch.Tensor:
            ids = ct2.StorageView.from_array(b.input_ids.to(torch.int32).numpy())
            lengths = ct2.StorageView.from_array(b.attention_mask.sum(1).to(torch.int32).numpy())
            out = encoder.forward_batch(ids, lengths)
            return torch.from_numpy(np.array(out.last_hidden_state))
        run.detail = f"compute type {encoder.compute_type}"
        return run
    return build


# ------------------------------------------------------------------------------------------------ #
# OpenVINO + NNCF                                                                                    #
# ------------------------------------------------------------------------------------------------ #
def nncf_int8_model(ctx: BuildContext) -> str:
    """OpenVINO IR of the fp32 ONNX export quantized by ``nncf.quantize(model_type=TRANSFORMER)`` on the
    calibration texts (one text per sample, :data:`CALIBRATION_TEXTS` samples)."""
    ov = _require("openvino")
    nncf = _require("nncf")

    def quantize(path):
        samples = [Batch(b.input_ids[i:i + 1, :int(b.attention_mask[i].sum())],
                         b.attention_mask[i:i + 1, :int(b.attention_mask[i].sum())])
                   for b in calibration_batches(ctx) for i in range(b.shape[0])]
        model = ov.Core().read_model(export_onnx(ctx))
        quantized = nncf.quantize(model, nncf.Dataset(samples, _feeds), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(samples))
        ov.save_model(quantized, path)  # the .xml; its weights go beside it (.bin)
    return _cached(ctx, "nncf-int8.xml", quantize)


def _openvino_config(ctx: BuildContext) -> dict:
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": ctx.threads}


def _ov_output(request, b: Batch) -> torch.Tensor:
    out = request.infer(_feeds(b))
    return torch.from_numpy(next(iter(out.values())).copy())


def _ov_nncf_dynamic(ctx: BuildContext) -> Runner:
    ov = _require("openvino")
    compiled = ov.Core().compile_model(nncf_int8_model(ctx), "CPU", _openvino_config(ctx))
    request = compiled.create_infer_request()
    run = lambda b: _ov_output(request, b)  # noqa: E731
    run.detail = f"inference precision {compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()}"
    return run


def static_length(length: int, limit: int) -> int:
    """The static length a batch of ``length`` tokens runs at: up to a multiple of :data:`STATIC_LENGTH_STEP`,
    at most ``limit`` (the model's positions)."""
    return min(limit, -(-length // STATIC_LENGTH_STEP) * STATIC_LENGTH_STEP)


def _ov_nncf_static(ctx: BuildContext) -> Runner:
    """One compiled model per (batch, static length): the batch padded (id 0, mask 0) to :func:`static_length`,
    compiled on first sight and kept; the output cut back to the batch's length."""
    ov = _require("openvino")
    core = ov.Core()
    model = core.read_model(nncf_int8_model(ctx))
    limit = ctx.model.config.max_position_embeddings
    compiled = {}

    def run(b: Batch) -> torch.Tensor:
        batch, length = b.shape
        shape = (batch, static_length(length, limit))
        if shape not in compiled:
            m = model.clone()
            m.reshape({p.get_any_name(): ov.PartialShape(list(shape)) for p in m.inputs})
            compiled[shape] = core.compile_model(m, "CPU", _openvino_config(ctx)).create_infer_request()
        pad = shape[1] - length
        padded = Batch(torch.nn.functional.pad(b.input_ids, (0, pad)), torch.nn.functional.pad(b.attention_mask, (0, pad)))
        return _ov_output(compiled[shape], padded)[:, :length]
    return run


# ------------------------------------------------------------------------------------------------ #
# ONNX Runtime static QDQ int8                                                                       #
# ------------------------------------------------------------------------------------------------ #
def qdq_int8_model(ctx: BuildContext) -> str:
    """``quantize_static`` of the fp32 export: QDQ format, int8 weights per output channel, int8 activations per
    tensor (ORT's defaults), MinMax ranges from real batches of the calibration texts; MatMul / Gemm only."""
    _require("onnxruntime", "bench")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class RealBatches(CalibrationDataReader):
        def __init__(self, batches):
            self.items = iter([_feeds(b) for b in batches])

        def get_next(self):
            return next(self.items, None)

    def quantize(path):
        quantize_static(export_onnx(ctx), path, RealBatches(calibration_batches(ctx)), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"])
    return _cached(ctx, "qdq-int8.onnx", quantize)


def _ort_qdq(ctx: BuildContext) -> Runner:
    return ort_runner(qdq_int8_model(ctx), ctx.threads)


# ------------------------------------------------------------------------------------------------ #
# the list                                                                                           #
# ------------------------------------------------------------------------------------------------ #
_CALIBRATED = f"calibrated on {CALIBRATION_TEXTS} texts of corpus 'docstrings-train'"
PEERS: tuple[Provider, ...] = (
    Provider("ctranslate2", "fp32", "CTranslate2 Encoder (TransformersConverter), compute_type float32", _ctranslate2("float32")),
    Provider("ctranslate2", "bf16", "CTranslate2 Encoder, compute_type bfloat16 (where the CPU build offers it)",
             _ctranslate2("bfloat16")),
    Provider("ctranslate2", "int8", "CTranslate2 Encoder, compute_type int8 (int8 weights per row, activations "
             "quantized per row at run time; other ops in the weights' float type)", _ctranslate2("int8")),
    Provider("ctranslate2-int8f32", "int8", "CTranslate2 Encoder, compute_type int8_float32 (int8 GEMMs, "
             "everything else float32)", _ctranslate2("int8_float32")),
    Provider("openvino-nncf", "int8", f"nncf.quantize(model_type=TRANSFORMER) of the fp32 ONNX export, {_CALIBRATED}; "
             "OpenVINO CPU plugin, dynamic shapes, latency hint", _ov_nncf_dynamic),
    Provider("openvino-nncf-static", "int8", "the openvino-nncf int8 model reshaped to static shapes: one compiled "
             f"model per (batch, length rounded up to a multiple of {STATIC_LENGTH_STEP}), the batch padded to it",
             _ov_nncf_static),
    Provider("onnxruntime-qdq", "int8", "onnxruntime.quantization.quantize_static of the fp32 export: QDQ, int8 "
             f"weights per channel, int8 activations per tensor (MinMax), MatMul/Gemm, {_CALIBRATED}", _ort_qdq),
)
