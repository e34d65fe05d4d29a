"""The engines an end-to-end run compares: what a user would otherwise pick, and bertsilicon.

A *provider* is one engine at one precision (``"torch-sdpa" bf16``, ``"onnxruntime" int8``, ...). Its
``build(ctx)`` returns a *runner*: ``runner(batch) -> last_hidden_state`` (a torch tensor ``[B, L, H]``),
called under ``torch.inference_mode()``. Every build starts from a deep copy of the same Hugging Face fp32
model, so no provider sees another's changes. A provider that cannot run here raises
:class:`ProviderUnavailable` with the reason, which the report prints instead of crashing.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
BASELINE = ("torch-sdpa", "fp32")  # speed-ups are quoted against this provider, measured in the same run


class ProviderUnavailable(Exception):
    """The provider cannot run on this machine / install. ``status`` is ``"skipped"`` (missing optional
    dependency, unsupported here) or ``"not built yet"`` (a bertsilicon part that has not landed)."""

    def __init__(self, reason: str, status: str = "skipped"):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class Batch:
    """One tokenized batch of real text, padded (``attention_mask`` 0 on padding), int64 CPU tensors."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class BuildContext:
    """What a provider's ``build`` gets: the fp32 model (never to be modified: copy it), a ragged example
    batch (for ONNX export and compile warm-up), the thread count, and a scratch folder. ``cache`` lets
    providers share work (the fp32 ONNX export is reused by the int8 one)."""

    model: torch.nn.Module
    model_name: str
    example: Batch
    threads: int
    workdir: str
    cache: dict = field(default_factory=dict)

    def fresh_model(self) -> torch.nn.Module:
        return copy.deepcopy(self.model).eval()


Runner = Callable[[Batch], torch.Tensor]


def tokenize(tok, texts, seq: int, padding: str) -> Batch:
    """``texts`` tokenized by ``tok``, truncated to ``seq``, padded (``"longest"`` or ``"max_length"``)."""
    enc = tok(list(texts), padding=padding, truncation=True, max_length=seq, return_tensors="pt")
    return Batch(enc["input_ids"].to(torch.int64).contiguous(), enc["attention_mask"].to(torch.int64).contiguous())


@dataclass(frozen=True)
class Provider:
    name: str
    precision: str
    description: str
    build: Callable[[BuildContext], Runner]

    @property
    def key(self) -> str:
        return f"{self.name} {self.precision}"


# ------------------------------------------------------------------------------------------------ #
# PyTorch                                                                                            #
# ------------------------------------------------------------------------------------------------ #
def _hf_runner(model) -> Runner:
    def run(b: Batch) -> torch.Tensor:
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
    run.model = model  # for reports (e.g. the optimize report of a bertsilicon provider)
    return run


def _eager_attention(m: torch.nn.Module) -> torch.nn.Module:
    """``m`` with matmul + softmax attention instead of SDPA (in place)."""
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation("eager")
    else:  # transformers releases before set_attn_implementation read the config at forward time
        m.config._attn_implementation = "eager"
    return m


def _torch_eager(ctx: BuildContext) -> Runner:
    return _hf_runner(_eager_attention(ctx.fresh_model()))


def _torch_sdpa(dtype: torch.dtype):
    def build(ctx: BuildContext) -> Runner:
        return _hf_runner(ctx.fresh_model().to(dtype))
    return build


def _torch_int8(ctx: BuildContext) -> Runner:
    with warnings.catch_warnings():  # quantized-tensor constructors are deprecated in torch >= 2.12
        warnings.simplefilter("ignore")
        m = torch.ao.quantization.quantize_dynamic(ctx.fresh_model(), {torch.nn.Linear}, dtype=torch.qint8)
    return _hf_runner(m)


def _torch_compile(ctx: BuildContext) -> Runner:
    m = ctx.fresh_model()
    compiled = torch.compile(m)
    run = _hf_runner(compiled)
    try:  # compile now, so a machine without a working C++ toolchain skips cleanly here
        with torch.inference_mode():
            run(ctx.example)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means "does not work here"
        raise ProviderUnavailable(f"torch.compile failed on this machine: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    return run


# ------------------------------------------------------------------------------------------------ #
# ONNX Runtime                                                                                       #
# ------------------------------------------------------------------------------------------------ #
class _LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: the graph ONNX export traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _import_onnxruntime():
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime
    except ImportError as exc:
        raise ProviderUnavailable(f"{exc.name} is not installed (pip install -e '.[bench]')") from exc
    return onnxruntime


def export_onnx(ctx: BuildContext, attention: str = "sdpa") -> str:
    """fp32 ONNX file of the model with ``attention`` ``"sdpa"`` (the model as given) or ``"eager"`` (cached in
    ``ctx``). TorchScript exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``, which the bench
    extra does not install. Traced on a *ragged* batch so the attention-mask path is kept (a batch without
    padding lets transformers drop the mask)."""
    key = f"onnx_fp32_{attention}"
    if key in ctx.cache:
        return ctx.cache[key]
    _import_onnxruntime()
    path = os.path.join(ctx.workdir, f"{ctx.model_name}-fp32-{attention}.onnx")
    model = ctx.fresh_model()
    if attention == "eager":
        _eager_attention(model)
    # .eval() on the wrapper too: the exporter restores the wrapper's mode recursively afterwards.
    wrapper = _LastHidden(model).eval()
    axes = {0: "batch", 1: "length"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about data-dependent branches in transformers
        torch.onnx.export(wrapper, (ctx.example.input_ids, ctx.example.attention_mask), path,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                          opset_version=17, dynamo=False)
    ctx.cache[key] = path
    return path


def export_onnx_fused(ctx: BuildContext) -> str:
    """The fp32 export rewritten by ORT's BERT graph optimizer (``onnxruntime.transformers.optimizer``,
    ``model_type="bert"``, what Optimum's ORTOptimizer runs): fused ``Attention``, ``SkipLayerNormalization``,
    ``BiasGelu`` and ``EmbedLayerNormalization`` kernels. From the export with eager attention: the pattern its
    Attention fusion matches (on the SDPA export it fuses no attention). Cached in ``ctx``."""
    if "onnx_fused" in ctx.cache:
        return ctx.cache["onnx_fused"]
    _import_onnxruntime()
    from onnxruntime.transformers import optimizer

    cfg = ctx.model.config
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_heads
    hidden = getattr(cfg, "hidden_size", None) or cfg.dim
    fused = optimizer.optimize_model(export_onnx(ctx, "eager"), model_type="bert", num_heads=heads,
                                     hidden_size=hidden, opt_level=1)
    path = os.path.join(ctx.workdir, f"{ctx.model_name}-fp32-fused.onnx")
    fused.save_model_to_file(path)
    ctx.cache["onnx_fused"] = path
    ctx.cache["onnx_fused_ops"] = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    return path


def ort_runner(path: str, threads: int) -> Runner:
    ort = _import_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # ORT's worker threads spin-wait after every run by default, taking the cores away from whatever
    # runs next: in an interleaved benchmark that is the next provider. Off, so each provider is timed
    # on idle cores (ORT's own latency is measured the same way either way: one call at a time).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(b: Batch) -> torch.Tensor:
        feeds = {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()}
        return torch.from_numpy(session.run(None, feeds)[0])
    return run


def _ort_fp32(ctx: BuildContext) -> Runner:
    return ort_runner(export_onnx(ctx), ctx.threads)


def _ort_quantized(fp32: str, path: str) -> str:
    """``quantize_dynamic`` of ``fp32`` (QInt8 weights) written to ``path``. Tensors its shape inference cannot
    type (outputs of the fused contrib ops) are taken as float."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice on every call
    try:
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.getLogger().setLevel(level)
    return path


def _ort_int8(ctx: BuildContext) -> Runner:
    path = _ort_quantized(export_onnx(ctx), os.path.join(ctx.workdir, f"{ctx.model_name}-int8.onnx"))
    return ort_runner(path, ctx.threads)


def _with_fused_ops(run: Runner, ctx: BuildContext) -> Runner:
    """``run`` noting which fused ops the optimizer made (shown in the row's status)."""
    run.detail = "fused " + (", ".join(f"{k} {v}" for k, v in ctx.cache["onnx_fused_ops"].items()) or "nothing")
    return run


def _ort_fused_fp32(ctx: BuildContext) -> Runner:
    return _with_fused_ops(ort_runner(export_onnx_fused(ctx), ctx.threads), ctx)


def _ort_fused_int8(ctx: BuildContext) -> Runner:
    path = _ort_quantized(export_onnx_fused(ctx), os.path.join(ctx.workdir, f"{ctx.model_name}-fused-int8.onnx"))
    return _with_fused_ops(ort_runner(path, ctx.threads), ctx)


# ------------------------------------------------------------------------------------------------ #
# OpenVINO                                                                                           #
# ------------------------------------------------------------------------------------------------ #
def _openvino(precision_hint: Optional[str]):
    """Builder of OpenVINO's CPU plugin on the fp32 ONNX export (dynamic batch and length), latency hint,
    ``ctx.threads`` threads; ``precision_hint`` pins ``INFERENCE_PRECISION_HINT`` (``"f32"``), None keeps the
    plugin's default (bf16 on CPUs with AVX512_BF16 / AMX, f32 elsewhere). The runner's ``detail`` names the
    precision the compiled model runs in."""
    def build(ctx: BuildContext) -> Runner:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ProviderUnavailable(f"{exc.name} is not installed (pip install -e '.[peers]')") from exc
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": ctx.threads}
        if precision_hint is not None:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        compiled = ov.Core().compile_model(export_onnx(ctx), "CPU", config)
        request = compiled.create_infer_request()

        def run(b: Batch) -> torch.Tensor:
            out = request.infer({"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()})
            return torch.from_numpy(next(iter(out.values())).copy())
        run.detail = f"inference precision {compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()}"
        return run
    return build


# ------------------------------------------------------------------------------------------------ #
# bertsilicon                                                                                        #
# ------------------------------------------------------------------------------------------------ #
def _bertsilicon(precision: str, **options):
    """Builder of ``bertsilicon.optimize(model, precision, **options)`` (``options``: e.g. ``backend``,
    ``cuda_graphs``; the int8 set-up below is added)."""
    def build(ctx: BuildContext) -> Runner:
        try:
            from bertsilicon.models.optimize import optimize
        except ModuleNotFoundError as exc:
            if exc.name == "bertsilicon.models.optimize":
                raise ProviderUnavailable("bertsilicon.optimize is not built yet", "not built yet") from exc
            raise
        except ImportError as exc:
            if "optimize" in str(exc) and "cannot import name" in str(exc):
                raise ProviderUnavailable("bertsilicon.optimize is not built yet", "not built yet") from exc
            raise
        kwargs = dict(options)
        if precision == "int8":
            if "calibration" not in kwargs and getattr(ctx.model.config, "vocab_size", None) == 30522:  # built-in vocab
                from bertsilicon import data

                kwargs["calibration"] = data.corpus("docstrings-train").subset(8, seed=0).texts
        try:
            model = optimize(ctx.fresh_model(), precision=precision, **kwargs)
        except NotImplementedError as exc:
            raise ProviderUnavailable(f"bertsilicon.optimize(precision={precision!r}): {exc}", "not built yet") from exc
        return _hf_runner(model)
    return build


# The engines of this module; catalog.PROVIDERS is every provider a run can pick (these and peers.PEERS).
BUILTIN_PROVIDERS: tuple[Provider, ...] = (
    Provider("torch-eager", "fp32", "HF model, attn_implementation='eager' (matmul + softmax attention)", _torch_eager),
    Provider("torch-sdpa", "fp32", "HF model, attn_implementation='sdpa' (the transformers default)", _torch_sdpa(torch.float32)),
    Provider("torch-sdpa", "bf16", "HF model cast to bfloat16, SDPA attention", _torch_sdpa(torch.bfloat16)),
    Provider("torch-int8", "int8", "torch.ao.quantization.quantize_dynamic on nn.Linear (qint8 weights per tensor, "
             "dynamic per-tensor activations)", _torch_int8),
    Provider("torch-compile", "fp32", "torch.compile(HF SDPA model), default inductor mode", _torch_compile),
    Provider("onnxruntime", "fp32", "torch.onnx.export (TorchScript, opset 17) + ORT CPU, ORT_ENABLE_ALL", _ort_fp32),
    Provider("onnxruntime", "int8", "onnxruntime.quantization.quantize_dynamic (QInt8 weights per tensor, "
             "dynamic uint8 activations) of the fp32 export", _ort_int8),
    Provider("onnxruntime-bert", "fp32", "onnxruntime.transformers.optimizer (model_type='bert': fused Attention, "
             "SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) on the export with eager attention, "
             "ORT_ENABLE_ALL", _ort_fused_fp32),
    Provider("onnxruntime-bert", "int8", "quantize_dynamic (QInt8 weights) of the onnxruntime-bert fp32 graph",
             _ort_fused_int8),
    Provider("openvino", "fp32", "OpenVINO CPU plugin on the fp32 ONNX export, INFERENCE_PRECISION_HINT f32 pinned, "
             "latency hint", _openvino("f32")),
    Provider("openvino-default-hint", "fp32", "OpenVINO CPU plugin on the fp32 ONNX export, the plugin's default "
             "inference precision (bf16 where the CPU has AVX512_BF16 / AMX: the row's status says which)",
             _openvino(None)),
    *(Provider("bertsilicon", p, f"bertsilicon.optimize(model, precision={p!r})", _bertsilicon(p))
      for p in PRECISIONS if p != "int8"),
    Provider("bertsilicon", "int8", "bertsilicon.optimize(model, precision='int8', smooth=0.5, calibration=8 "
             "first paragraphs of standard-library docstrings (corpus 'docstrings-train': no text of the timed or "
             "accuracy sets; random ids where the vocabulary is not the built-in one))", _bertsilicon("int8")),
)
def build_runner(provider: Provider, ctx: BuildContext) -> tuple[Optional[Runner], float, str, str]:
    """Build one provider: ``(runner or None, seconds, status, reason)``; status is ``"ok"``,
    ``"skipped"``, ``"not built yet"`` or ``"failed"`` (an unexpected error, reported, not raised)."""
    t0 = time.perf_counter()
    try:
        runner = provider.build(ctx)
        return runner, time.perf_counter() - t0, "ok", ""
    except ProviderUnavailable as exc:
        return None, time.perf_counter() - t0, exc.status, exc.reason
    except Exception as exc:  # noqa: BLE001 - a broken provider is a row in the table, not a crashed run
        return None, time.perf_counter() - t0, "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
