"""The fused post-LayerNorm transformer encoder layer (BERT, DistilBERT, TinyBERT, MiniLM, ...).

One layer, hidden size H, heads n (head dim d = H / n), FFN width F, on tokens x ``[T, H]`` (packed,
padding-free) or ``[B, L, H]`` (padded, with a key-padding mask)::

    qkv = x W_qkv^T + b_qkv                    W_qkv [3H, H]: Q, K, V weights concatenated once
    ctx = attention(q, k, v)                    softmax(q k^T / sqrt(d)) v per head, fp32 softmax
                                                (bf16 q, k, v in int8 layers on AVX512_BF16 CPUs: attention_dtype)
    h   = LayerNorm(ctx W_o^T + b_o + x)        GEMM, then residual + LayerNorm (fp32 statistics)
    u   = gelu(h W_1^T + b_1)                   bias + GELU (or gelu_tanh / relu) fused in the GEMM epilogue
    y   = LayerNorm(u W_2^T + b_2 + h)

GEMMs per token: 2 * (3H^2 + H^2 + 2HF) FLOPs (+ 4 L H FLOPs of attention): all weights are prepared
once (concatenated, cast to bf16/fp16 or quantized to int8 per output channel) and never touched again
per forward. Each GEMM has its own precision (an int8 layer over its error budget moves some GEMMs to
bf16 or fp32), and the activations between GEMMs are the layer's ``compute_dtype``.

How a call runs:

* **cpu backend, one call** (CPU tensors, backend None/"cpu", the C++ extension built, fp32/bf16
  activations and fp32/bf16/int8 GEMMs, or fp16 GEMMs on fp32 activations, outside ``torch.compile``
  tracing, no calibration ``stats``): the whole layer is one C++ call, ``_C.encoder_layer_packed`` /
  ``_C.encoder_layer_padded`` (csrc/encoder_layer.cpp, :mod:`._cpu_layer`): the four packed GEMMs
  (``linear`` for fp32/bf16 weights; for fp16, the input rounded to fp16 by the ``round_to`` kernel, then
  ``linear`` on the fp16 weight's values held in fp32; ``int8_linear_dynamic`` with the SmoothQuant
  factors for int8), attention reading q, k, v in place from
  the qkv output through strides, and both residual + LayerNorms, over one C++ scratch block. Same kernels,
  same order, bit-identical to the per-op path below, without ~10 Python-level calls per layer.
  ``layer.one_call = False`` (or ``BERTSILICON_LAYER_ONE_CALL=0`` before import) forces the per-op path.
* **per op** otherwise: every op goes through :mod:`bertsilicon.ops` with the layer's ``backend``, except
  the GEMMs on the cpu backend, which call its packed-weight entry points directly
  (:class:`PreparedLinear`), and every op on the triton backend, whose launchers the layer calls directly
  once the public dispatch has said it would pick them (:meth:`FusedEncoderLayer.direct_triton`,
  :mod:`._triton_layer`): same kernels, same results, without the public op's validation and dispatch.
  ``layer.direct_launch = False`` sends the triton ops through the public ops.

The layer keeps the original layer's sub-modules registered under their original names (so
``state_dict()`` keys, ``parameters()`` and ``.to()`` are those of the original model); the prepared
weights are non-persistent buffers. Weights read straight from the model (fp32 GEMMs of an fp32 model,
LayerNorm parameters) are always current. The prepared copies (the concatenated qkv weight and bias,
bf16 / fp16 casts, int8 weights, scales and biases) follow the model too: each forward first calls
:meth:`FusedEncoderLayer.sync_prepared`, which re-derives, in place, every copy whose source parameters
changed in place (``model.load_state_dict(checkpoint)`` after ``optimize``, ``weight.mul_(2)``) or were
replaced by tensors of the same shape (int8: re-quantized with the SmoothQuant factors of the calibration;
the int8 fallback choice is not revisited). A shape change is a ValueError (re-optimize). Writes through
``.data`` bypass version counters and are not seen.
"""
from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import ops, quant
from ..ops._dispatch import triton_interpreter

GEMMS = ("qkv", "o", "up", "down")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}
_CPU_DTYPES = (torch.float32, torch.bfloat16, None)  # what the cpu GEMMs take (None: int8 weights)
# Default of FusedEncoderLayer.one_call: "0" forces the per-op path (for comparisons; bench/layer_overhead.py).
ONE_CALL = os.environ.get("BERTSILICON_LAYER_ONE_CALL", "1") != "0"


@dataclass
class LayerParts:
    """The pieces of one HF encoder layer the fused layer needs (found by a model adapter)."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    ln1: nn.LayerNorm
    up: nn.Linear
    down: nn.Linear
    ln2: nn.LayerNorm
    activation: str  # "gelu" | "gelu_tanh" | "relu" (an ops epilogue)
    num_heads: int


@torch.compiler.assume_constant_result  # read when torch.compile traces (a pybind call would break the graph)
def _cpu_native_bf16_attention() -> bool:
    """Whether the cpu backend is built and its bf16 attention runs ``vdpbf16ps`` on the active path."""
    if _cpu_gemm_module() is None:
        return False
    from ..ops import _cpu

    return _cpu.native_bf16_attention()


@functools.cache
def _cpu_gemm_module():
    """The cpu backend's GEMM module (:mod:`bertsilicon.ops._cpu_gemm`), or None when the C++ extension
    is not built; looked up once (whether a backend imports never changes within a process)."""
    from ..ops import _dispatch

    if _dispatch._load("cpu") is not None:
        return None
    from ..ops import _cpu_gemm

    return _cpu_gemm


@functools.cache
def _triton_layer_module():
    """:mod:`._triton_layer` (imported on first use: it imports triton)."""
    from . import _triton_layer

    return _triton_layer


@functools.cache
def _one_call_module():
    """:mod:`._cpu_layer` (imported on first use: it needs the C++ extension, and imports this module)."""
    from . import _cpu_layer

    return _cpu_layer


def module_weight_and_bias(module: nn.Module) -> tuple:
    """``(module.weight, module.bias)`` of an ``nn.Linear`` / ``nn.LayerNorm``, straight from its parameter
    dict when they are plain parameters there (a dict lookup instead of ``nn.Module.__getattr__``)."""
    params = module._parameters
    if "weight" in params and "bias" in params:
        return params["weight"], params["bias"]
    return module.weight, module.bias


def _linear_tensors(linears) -> list:
    """``[weight, bias, weight, bias, ...]`` of ``nn.Linear`` modules, as they are now (bias may be None)."""
    out = []
    for lin in linears:
        out += module_weight_and_bias(lin)
    return out


class _SourceState:
    """Which tensors (identity, held so an id is never reused) at which versions prepared copies were
    derived from; ``matches`` is the hot-path check (identity and a version read per tensor)."""

    __slots__ = ("tensors", "versions")

    def __init__(self, tensors):
        self.tensors = list(tensors)
        self.versions = [None if t is None else t._version for t in self.tensors]

    def matches(self, tensors: list) -> bool:
        return (len(tensors) == len(self.tensors) and all(map(operator.is_, tensors, self.tensors))
                and [None if t is None else t._version for t in tensors] == self.versions)


class PreparedLinear(nn.Module):
    """One GEMM of the fused layer, its weight prepared once in its precision.

    * float (``fp32 | bf16 | fp16``): ``ops.linear(x, W, b, activation)``. When the wanted dtype is the
      source weight's own dtype and no concatenation is needed, the source ``nn.Linear`` is read directly
      (no copy, always in sync with the model's parameters). fp16 on the cpu backend (no fp16 arithmetic):
      also ``weight_fp16_in_fp32``, the fp16 weight's values held in fp32, for the fp32 kernel.
    * ``int8``: per-channel int8 weight (``W * s`` when SmoothQuant factors ``s`` are given), per-token
      dynamic activations, :func:`bertsilicon.quant.int8_matmul`.

    ``derived_from``: the ``nn.Linear`` modules ``weight`` / ``bias`` were made from, their weights
    concatenated along the output dimension (q, k, v for the fused qkv GEMM; default ``(source,)``).
    :meth:`sync_prepared` re-derives the prepared copies when their parameters change.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], precision: str, *,
                 source: Optional[nn.Linear] = None, smooth: Optional[torch.Tensor] = None,
                 backend: Optional[str] = None, derived_from: Optional[tuple] = None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is unknown; expected one of {tuple(PRECISIONS)}")
        self.precision = precision
        self.backend = backend
        self.out_features, self.in_features = weight.shape
        # plain attributes: the shared nn.Linear modules stay registered where they were
        self.__dict__["source"] = None
        self.__dict__["derived_from"] = tuple(derived_from) if derived_from is not None else (
            (source,) if source is not None else ())
        if precision == "int8":  # the SmoothQuant factors are kept: sync_prepared re-quantizes with them
            self.register_buffer("smooth", None if smooth is None else smooth.detach(), persistent=False)
            self.register_buffer("inv_smooth", None if smooth is None else (1.0 / smooth.float()).contiguous(),
                                 persistent=False)
        elif source is not None and source.weight.dtype == PRECISIONS[precision]:
            self.__dict__["source"] = source
        prepared = self._prepare(weight, bias)
        for name, t in prepared.items():
            self.register_buffer(name, t, persistent=False)
        self.__dict__["prepared_names"] = tuple(prepared)
        self.__dict__["synced"] = _SourceState(_linear_tensors(self.__dict__["derived_from"]))

    def _prepare(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> dict:
        """Every copy this GEMM prepares from its weight ``[N, K]`` and bias ``[N]`` (or None), by buffer
        name: int8 ``w_q`` (int8 ``[N, K]``), ``w_scale`` (fp32 ``[N]``), ``bias`` (fp32); a float GEMM not
        reading its source directly ``weight`` / ``bias`` in its dtype; fp16 on the cpu backend
        ``weight_fp16_in_fp32``. Used at construction and by :meth:`sync_prepared`, so both derive alike."""
        weight = weight.detach()
        bias = None if bias is None else bias.detach()
        out = {}
        if self.precision == "int8":
            out["w_q"], out["w_scale"] = quant.quantize_weight(weight, self._buffers["smooth"], backend=self.backend)
            out["bias"] = None if bias is None else bias.float().clone()
        elif self.__dict__["source"] is None:
            dtype = PRECISIONS[self.precision]
            out["weight"] = weight.to(dtype).contiguous()
            out["bias"] = None if bias is None else bias.to(dtype).contiguous()
        if self.precision == "fp16" and weight.device.type == "cpu" and self.backend in (None, "cpu"):
            # CPUs without AVX512-FP16 have no fp16 arithmetic: the cpu backend runs an fp16 GEMM on its fp32
            # kernel, on the fp16 weight's values held in fp32 (exact) and fp16-rounded activations (forward).
            out["weight_fp16_in_fp32"] = weight.to(torch.float16).float().contiguous()
        return out

    def prepared_sources(self) -> tuple:
        """The ``nn.Linear`` modules whose parameters this GEMM holds prepared copies of (empty when it
        holds none: it reads its source directly, or was built from bare tensors)."""
        return self.__dict__["derived_from"] if self.__dict__["prepared_names"] else ()

    def prepared_tensors(self) -> dict:
        """The prepared copies by buffer name (None where there is no bias)."""
        return {name: self._buffers[name] for name in self.__dict__["prepared_names"]}

    def sync_prepared(self) -> bool:
        """Re-derive the prepared copies if a source parameter changed in place or was replaced by
        another tensor since they were made (``load_state_dict``, ``weight.mul_(2)``, a new
        ``nn.Parameter``); the new values are written into the existing tensors (``copy_``: their storage
        and ``data_ptr`` never change, so captured CUDA graphs and the cpu packs, which re-pack through
        their version check, see them). int8 re-quantizes with the SmoothQuant factors the layer was
        calibrated with (they are not re-calibrated; neither is the int8 fallback choice). Returns True
        when something was re-derived. ValueError when a source's shape changed (re-optimize)."""
        sources = self.prepared_sources()
        if not sources:
            return False
        tensors = _linear_tensors(sources)
        if self.__dict__["synced"].matches(tensors):
            return False
        weights, biases = tensors[0::2], tensors[1::2]
        weight = weights[0] if len(weights) == 1 else torch.cat([w.detach() for w in weights], 0)
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([(b if b is not None else w.new_zeros(w.shape[0])).detach().reshape(-1)
                              for w, b in zip(weights, biases)])
        prepared = self.prepared_tensors()
        N, K = self.out_features, self.in_features
        had_bias = prepared.get("bias", bias) is not None
        if tuple(weight.shape) != (N, K) or (bias is not None) != had_bias or (bias is not None and bias.numel() != N):
            now = f"weight {tuple(weight.shape)}, bias {None if bias is None else tuple(bias.shape)}"
            raise ValueError(
                f"the {self.precision} GEMM [{N}, {K}]{' bias [' + str(N) + ']' if had_bias else ''} was prepared "
                f"from parameters that are now {now}: prepared copies follow new values, not new shapes; call "
                "bertsilicon.restore(model), then bertsilicon.optimize(model) again")
        with torch.no_grad():
            for name, new in self._prepare(weight, bias).items():
                if new is not None:
                    prepared[name].copy_(new)
        self.__dict__["synced"] = _SourceState(tensors)
        return True

    def operands(self) -> tuple:
        """Every tensor this GEMM reads now: ``(w_q, bias, w_scale, inv_smooth)`` for int8; ``(weight, bias)``
        for float precisions, the source ``nn.Linear``'s own parameters when it is read directly, else the
        prepared copies. Read from the modules' dicts: the one-call path's staleness check
        (:mod:`._cpu_layer`) runs this for every GEMM of every layer of every forward."""
        buffers = self._buffers
        if self.precision == "int8":
            return buffers["w_q"], buffers["bias"], buffers["w_scale"], buffers["inv_smooth"]
        src = self.__dict__["source"]
        return module_weight_and_bias(src) if src is not None else (buffers["weight"], buffers["bias"])

    def cpu_operands(self) -> tuple:
        """:meth:`operands` as the cpu backend's GEMMs read them: an fp16 GEMM with the fp32 copy
        (``weight_fp16_in_fp32``, its fp16 weight's values) reads ``(weight_fp16_in_fp32, bias)``."""
        w16 = self._buffers.get("weight_fp16_in_fp32")
        return self.operands() if w16 is None else (w16, self.operands()[1])

    def forward(self, x: torch.Tensor, activation: Optional[str] = None) -> torch.Tensor:
        cpu = self._cpu_gemm(x)
        w, b = self.operands()[:2]
        if self.precision == "int8":
            if cpu is not None:  # quantize fused into the GEMM (bit-identical to quant.int8_matmul)
                return cpu.int8_linear_dynamic(x.contiguous(), cpu.cached_pack(w), self.w_scale, b,
                                               activation, self.inv_smooth)
            return quant.int8_matmul(x, w, self.w_scale, b, activation, self.inv_smooth, backend=self.backend)
        if cpu is not None and self.precision == "fp16":  # fp16 operands, fp32 products, sum and output
            x16 = ops.round_to(x.contiguous(), "fp16", backend="cpu")  # nearest even: x.half().float()
            return cpu.linear_packed(x16, cpu.cached_pack(self._buffers["weight_fp16_in_fp32"]), b, activation)
        if cpu is not None:  # fp32 x on a bf16 weight: rounded as the GEMM reads it, fp32 out
            return cpu.linear_packed(x.contiguous(), cpu.cached_pack(w), b, activation)
        if x.dtype != w.dtype:  # a bf16 GEMM in a layer whose activations are fp32 (int8 fallback)
            return ops.linear(x.to(w.dtype), w, b, activation, backend=self.backend).to(x.dtype)
        return ops.linear(x, w, b, activation, backend=self.backend)

    def _cpu_gemm(self, x: torch.Tensor):
        """The cpu backend's GEMM module when it serves this call directly: CPU tensors, backend None or
        "cpu", the extension built, fp32/bf16 activations (and weights; an fp16 GEMM takes fp32 activations and
        runs as fp16 operands on the fp32 kernel), outside torch.compile tracing (which captures the public
        custom ops). None otherwise: the public ops decide (and raise)."""
        fp16_on_fp32 = self.precision == "fp16" and x.dtype == torch.float32 and "weight_fp16_in_fp32" in self._buffers
        if (x.device.type != "cpu" or self.backend not in (None, "cpu") or x.dtype not in _CPU_DTYPES
                or (PRECISIONS[self.precision] not in _CPU_DTYPES and not fp16_on_fp32)
                or torch.compiler.is_compiling()):
            return None
        return _cpu_gemm_module()

    def extra_repr(self) -> str:
        smooth = self.precision == "int8" and self.inv_smooth is not None
        return f"{self.in_features} -> {self.out_features}, {self.precision}{', smoothed' if smooth else ''}"


class FusedLayerBase(nn.Module):
    """What every fused encoder layer shares (:class:`FusedEncoderLayer`, and MobileBERT's
    :class:`~bertsilicon.models.fused_mobilebert.FusedMobileBertLayer`).

    * The original layer's children registered under their own names (``state_dict()`` keys,
      ``parameters()`` and ``.to()`` are the original model's); the GEMMs are :class:`PreparedLinear`
      children named by ``gemm_precision``'s keys, in the order a call runs them.
    * :meth:`sync_prepared`: every prepared copy follows the model's parameters.
    * :meth:`backends_used`: which backend the public dispatch picks for each op of the layer.

    * :meth:`_one_call` / :meth:`call_path`: whether a call runs as one C++ call (:mod:`._cpu_layer` builds the
      plan) or per op, and why.

    A subclass sets ``hidden``, ``num_heads``, ``head_dim``, ``scale`` and builds its GEMMs, then calls
    :meth:`_track_prepared`; it implements ``forward_packed``, ``forward_padded``, ``operand_tensors`` and
    ``norm_eps``, lists in ``NORM_OPS`` the public ops its normalisations call, and may say in
    ``_unserved_reason`` why the one-call plan refuses it.
    """

    NORM_OPS: tuple = ("add_layernorm",)

    def __init__(self, original: nn.Module, gemm_precision: dict, compute_dtype: torch.dtype,
                 backend: Optional[str] = None):
        super().__init__()
        for name, child in original.named_children():  # same state_dict keys as the original layer
            self.add_module(name, child)
        self.__dict__["original"] = original
        self.compute_dtype = compute_dtype
        self.backend = backend
        self.gemm_precision = dict(gemm_precision)
        self.one_call = ONE_CALL  # see _one_call

    def _add_gemm(self, name: str, linears: tuple, smooth: Optional[dict] = None) -> None:
        """Register GEMM ``name`` in its precision (``gemm_precision[name]``): one ``nn.Linear``, or several
        reading the same input with their weights concatenated along the output dimension (a missing bias
        counts as zeros); ``smooth``: SmoothQuant factors by GEMM name (int8 GEMMs only)."""
        p = self.gemm_precision[name]
        factors = (smooth or {}).get(name) if p == "int8" else None
        if len(linears) == 1:
            lin = linears[0]
            gemm = PreparedLinear(lin.weight, lin.bias, p, source=lin, smooth=factors, backend=self.backend)
        else:
            weight = torch.cat([lin.weight.detach() for lin in linears], 0)
            bias = None
            if any(lin.bias is not None for lin in linears):
                bias = torch.cat([(lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)).detach()
                                  for lin in linears])
            gemm = PreparedLinear(weight, bias, p, smooth=factors, backend=self.backend, derived_from=tuple(linears))
        self.add_module(name, gemm)

    def _one_call(self, x: torch.Tensor, stats: Optional[dict]):
        """The layer's one-call snapshot when the cpu backend would serve every op of this call, else None:
        the per-op path runs. Served: :meth:`PreparedLinear._cpu_gemm`'s conditions (CPU tensors, backend
        None/"cpu", extension built, fp32/bf16 activations, not tracing; every GEMM of the layer shares them,
        and the snapshot refuses GEMM precisions the cpu GEMMs do not take), x contiguous in the compute dtype
        (so attention and the norms take their inputs as they come), no calibration ``stats``."""
        if (not self.one_call or stats is not None or x.dtype != self.compute_dtype or not x.is_contiguous()
                or self._modules[next(iter(self.gemm_precision))]._cpu_gemm(x) is None):
            return None
        snap = _one_call_module().snapshot(self)
        return snap if snap.plan is not None else None

    def _synced_one_call_packed(self, x, cu_seqlens, max_seqlen, stats, offsets_checked) -> Optional[torch.Tensor]:
        """What both forwards do first: bring the prepared copies up to date (:meth:`sync_prepared`; not while
        torch.compile traces), then run the call as one C++ call where that serves it. The output, or None (the
        per-op path runs)."""
        if not torch.compiler.is_compiling():
            self.sync_prepared()
        snap = self._one_call(x, stats)
        return None if snap is None else _one_call_module().forward_packed(self, snap, x, cu_seqlens, max_seqlen,
                                                                            offsets_checked)

    def _synced_one_call_padded(self, x, key_mask, stats) -> Optional[torch.Tensor]:
        """:meth:`_synced_one_call_packed` for ``forward_padded``."""
        if not torch.compiler.is_compiling():
            self.sync_prepared()
        snap = self._one_call(x, stats)
        return None if snap is None else _one_call_module().forward_padded(self, snap, x, key_mask)

    def call_path(self, device=None) -> str:
        """How a call on ``device`` (default: where the layer's weights are) runs, without running it:
        ``"one C++ call"`` or ``"per op (<why>)"``. The verdict is :meth:`_one_call`'s on a one-token probe in
        the compute dtype (what every forward asks; it builds the one-call snapshot the first call would);
        the reason names a condition of the module docstring that is not met."""
        first = self._modules[next(iter(self.gemm_precision))]
        device = torch.device(device) if device is not None else first.operands()[0].device
        probe = torch.zeros(1, self.hidden, dtype=self.compute_dtype, device=device)
        if self._one_call(probe, None) is not None:
            return "one C++ call"
        return f"per op ({self._per_op_reason(device)})"

    def _per_op_reason(self, device: torch.device) -> str:
        """Why :meth:`call_path` found the per-op path: what the layer is (backend, device, dtypes) before
        the ``one_call`` switch, which alone would not make it one call."""
        if device.type == "cuda" and self.backend in (None, "triton"):
            return "CUDA: Triton per op"
        if self.backend not in (None, "cpu"):
            return f"backend={self.backend!r}"
        if device.type != "cpu":
            return f"{device.type} tensors"
        if _cpu_gemm_module() is None:
            return "C++ extension not built"
        dtype = self.compute_dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return f"{str(dtype).replace('torch.', '')} activations"
        p = self.gemm_precision
        if dtype != torch.float32 and "fp16" in p.values():
            return "fp16 GEMMs need fp32 activations"
        if not self.one_call:
            return "layer.one_call = False"
        return self._unserved_reason()

    def _unserved_reason(self) -> str:
        """Why the one-call plan refuses this layer when nothing else stands in the way."""
        p = self.gemm_precision
        return "GEMM mix " + ", ".join(f"{g}={v}" for g, v in p.items()) + " not served in one call"

    def _track_prepared(self) -> None:
        """Record the ``nn.Linear`` modules behind any prepared copy and their parameters as the copies were
        made (what :meth:`sync_prepared` compares against); call once the GEMMs exist."""
        self.__dict__["prepared_sources"] = tuple(m for g in self.gemm_precision
                                                  for m in self._modules[g].prepared_sources())
        self.__dict__["synced"] = _SourceState(_linear_tensors(self.__dict__["prepared_sources"]))

    def sync_prepared(self) -> bool:
        """Bring every prepared copy (concatenated weights and biases, bf16 / fp16 casts, int8 weights,
        scales and biases) up to date with the model's parameters: True when something was re-derived
        (:meth:`PreparedLinear.sync_prepared`: in place, same tensors, int8 with the calibrated SmoothQuant
        factors; ValueError when a parameter's shape changed). When nothing changed, the cost is one
        identity and version read per source parameter (~12 for a BERT layer with all four GEMMs prepared).
        Both forwards call it first (not under ``torch.compile`` tracing: call it before a compiled call);
        call it before replaying a captured CUDA graph, which never runs the forwards."""
        tensors = _linear_tensors(self.__dict__["prepared_sources"])
        if self.__dict__["synced"].matches(tensors):
            return False
        changed = [self._modules[g].sync_prepared() for g in self.gemm_precision]
        self.__dict__["synced"] = _SourceState(tensors)
        return any(changed)

    def attention_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype attention runs in for a call on ``device``: the compute dtype."""
        return self.compute_dtype

    def _probe_layernorm(self) -> nn.LayerNorm:
        """A LayerNorm the layer runs through ``ops.add_layernorm`` (for :meth:`backends_used`)."""
        return self.__dict__["parts"].ln1

    def backends_used(self, x: torch.Tensor) -> dict:
        """Which backend the public dispatch picks for each op of this layer on activations like
        ``x [T, H]`` (a few tokens are enough: no check depends on their number), with the layer's own
        weights: ``{"attention_varlen": ..., "attention": ..., "add_layernorm": ..., "linear[bf16]": ...,
        "quantize": ..., "int8_linear": ...}``. Raises as the op would when an explicit backend cannot
        serve it. For the report and :meth:`FusedEncoderLayer.direct_triton`."""
        backend = self.backend
        t, n, d = x.shape[0], self.num_heads, self.head_dim
        q = x.new_ones(t, n, d, dtype=self.attention_dtype(x.device))
        q4 = q.transpose(0, 1)[None].contiguous()
        cu = torch.tensor([0, t], dtype=torch.int32, device=x.device)
        used = {"attention_varlen": ops.which_backend("attention_varlen", q, q, q, cu, t, None, backend=backend),
                "attention": ops.which_backend("attention", q4, q4, q4, None, None, backend=backend)}
        if "add_layernorm" in self.NORM_OPS:  # asked with a LayerNorm of the layer: its own weight dtype and device
            ln = self._probe_layernorm()
            y = x.new_ones(x.shape[0], ln.weight.shape[0])
            used["add_layernorm"] = ops.which_backend("add_layernorm", y, y, ln.weight, ln.bias, ln.eps, backend=backend)
        for name in self.gemm_precision:
            g = self._modules[name]
            xi = x.new_ones(t, g.in_features)
            if g.precision == "int8":
                xq, xs = quant.quantize_activations(xi, backend=backend)
                used["quantize"] = ops.which_backend("quantize", xi, "int8", "per_token", backend=backend)
                used["int8_linear"] = ops.which_backend("int8_linear", xq, xs, g.w_q, g.w_scale, g.bias, None,
                                                        x.dtype, backend=backend)
            elif g._cpu_gemm(xi) is not None:  # the layer calls the cpu GEMM directly (PreparedLinear.forward)
                used[f"linear[{g.precision}]"] = "cpu"
            else:
                w = g.operands()[0]
                used[f"linear[{g.precision}]"] = ops.which_backend("linear", xi.to(w.dtype), w, None, None,
                                                                   backend=backend)
        return used


class FusedEncoderLayer(FusedLayerBase):
    """A drop-in for one HF encoder layer, run on the fused ops (see the module docstring).

    ``gemm_precision``: ``{"qkv" | "o" | "up" | "down": "fp32" | "bf16" | "fp16" | "int8"}``;
    ``compute_dtype``: the dtype of activations between GEMMs (residual stream, attention inputs);
    ``smooth``: optional SmoothQuant factors per GEMM (int8 GEMMs only);
    ``one_call`` (attribute): run the whole layer as one C++ call where the cpu backend serves it (default
    ``ONE_CALL``; see the module docstring).
    ``bf16_attention`` (attribute, default True): let an int8 layer run attention in bf16 where that is faster
    (:meth:`attention_dtype`); False keeps it in the compute dtype.
    """

    def __init__(self, original: nn.Module, parts: LayerParts, gemm_precision: dict, compute_dtype: torch.dtype,
                 smooth: Optional[dict] = None, backend: Optional[str] = None):
        super().__init__(original, gemm_precision, compute_dtype, backend)
        self.__dict__["parts"] = parts
        self.num_heads = parts.num_heads
        self.hidden = parts.q.in_features
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of {self.num_heads} heads")
        self.head_dim = self.hidden // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.activation = parts.activation
        self.direct_launch = True  # the triton per-op path calls the launchers directly (see direct_triton)
        self.bf16_attention = True  # int8 layers on a CPU with AVX512_BF16: see attention_dtype
        self.__dict__["_direct_verdicts"] = {}  # (device, dtype) -> whether every op resolves to triton
        linears = {"qkv": (parts.q, parts.k, parts.v), "o": (parts.o,), "up": (parts.up,), "down": (parts.down,)}
        for name in GEMMS:
            self._add_gemm(name, linears[name], smooth)
        self._track_prepared()

    @staticmethod
    def gemm_names(parts: LayerParts) -> tuple:
        """The GEMMs a layer of these parts runs, in order (the keys of ``gemm_precision``)."""
        return GEMMS

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["_direct_verdicts"].clear()  # .to() / .half(): the weights the verdicts were asked about change
        return super()._apply(fn, *args, **kwargs)

    def operand_tensors(self, cpu: bool = False) -> tuple:
        """Every tensor a call of the layer reads, in a fixed order: per GEMM (qkv, o, up, down) its
        :meth:`PreparedLinear.operands` (``cpu``: :meth:`PreparedLinear.cpu_operands`, what the cpu GEMMs
        read), then ln1 weight, bias, ln2 weight, bias. What the one-call snapshot and the CUDA graphs check
        before reusing what they recorded."""
        modules = self._modules
        parts = self.__dict__["parts"]
        read = PreparedLinear.cpu_operands if cpu else PreparedLinear.operands
        return (*read(modules["qkv"]), *read(modules["o"]), *read(modules["up"]), *read(modules["down"]),
                *module_weight_and_bias(parts.ln1), *module_weight_and_bias(parts.ln2))

    def direct_triton(self, x: torch.Tensor) -> bool:
        """Whether this call's per-op path launches the triton kernels directly (:mod:`._triton_layer`):
        ``direct_launch`` on, backend None or "triton", CUDA tensors (or CPU under the Triton interpreter with
        ``backend="triton"``), not tracing, x's last dim contiguous, and every op of the layer resolving to
        triton for x's device and dtype (:meth:`backends_used`, asked once per device and dtype)."""
        if x.device.type == "cuda":
            served = self.backend in (None, "triton")
        else:  # CPU tensors run triton only when asked for by name, under the interpreter
            served = self.backend == "triton" and x.device.type == "cpu" and triton_interpreter()
        if not served or not self.direct_launch or torch.compiler.is_compiling() or (x.dim() and x.stride(-1) != 1):
            return False
        key = (x.device, x.dtype)
        verdicts = self.__dict__["_direct_verdicts"]
        if key not in verdicts:
            probe = x.reshape(-1, x.shape[-1])[:2].contiguous()
            verdicts[key] = all(b == "triton" for b in self.backends_used(probe).values())
        return verdicts[key]

    def attention_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype attention runs in for a call on ``device``: the compute dtype, except for an int8 layer
        (fp32 activations, qkv and o GEMMs int8) on the cpu backend of a CPU with AVX512_BF16, with
        ``bf16_attention`` on: bf16. The qkv GEMM's output is then rounded to bf16 (q, k, v: a relative error
        of at most 2^-9 each, next to int8's ~2^-8 of the row's largest value), attention runs the
        ``vdpbf16ps`` kernel (scores, softmax and the output accumulate in fp32; P rounded to bf16 for P V),
        and its bf16 output is widened back (exactly) for the o GEMM to quantize. On long inputs attention
        is half an int8 layer's time and that kernel ~1.7x the fp32 one (MiniLM 8 x 512: 21.9 -> 12.6 ms a
        layer)."""
        p = self.gemm_precision
        if (self.bf16_attention and self.compute_dtype == torch.float32 and p["qkv"] == "int8" and p["o"] == "int8"
                and device.type == "cpu" and self.backend in (None, "cpu") and _cpu_native_bf16_attention()):
            return torch.bfloat16
        return self.compute_dtype

    # ------------------------------------------------------------------------------------------ #
    def _add_ln(self, x, residual, ln: nn.LayerNorm, direct: bool = False):
        if direct:
            return _triton_layer_module().add_layernorm(x, residual, ln)
        return ops.add_layernorm(x, residual, ln.weight, ln.bias, ln.eps, backend=self.backend)

    def norm_eps(self) -> tuple:
        """The LayerNorms' eps, (ln1, ln2): part of what the one-call plan was built from."""
        parts = self.__dict__["parts"]
        return float(parts.ln1.eps), float(parts.ln2.eps)


    def _block(self, x, attend, stats: Optional[dict] = None, direct: bool = False):
        """The layer on tokens ``x [..., H]`` with ``attend(qkv) -> ctx [..., H]``; ``stats`` (calibration)
        collects the per-channel max |input| of every GEMM; ``direct``: the GEMMs and LayerNorms launch the
        triton kernels directly (:meth:`direct_triton`)."""
        parts = self.__dict__["parts"]
        modules = self._modules
        gemm = _triton_layer_module().linear if direct else (lambda g, t, act=None: g(t, act))
        if stats is not None:
            stats.setdefault("qkv", quant.ChannelAbsMax()).update(x)
        ctx = attend(gemm(modules["qkv"], x))
        if stats is not None:
            stats.setdefault("o", quant.ChannelAbsMax()).update(ctx)
        h = self._add_ln(gemm(modules["o"], ctx), x, parts.ln1, direct)
        if stats is not None:
            stats.setdefault("up", quant.ChannelAbsMax()).update(h)
        u = gemm(modules["up"], h, self.activation)
        if stats is not None:
            stats.setdefault("down", quant.ChannelAbsMax()).update(u)
        return self._add_ln(gemm(modules["down"], u), h, parts.ln2, direct)

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       stats: Optional[dict] = None, *, offsets_checked: bool = False) -> torch.Tensor:
        """Padding-free: ``x [T, H]`` real tokens of B sequences back to back (``cu_seqlens`` int32
        ``[B + 1]``); attention via ``ops.attention_varlen``. Returns ``[T, H]``. ``offsets_checked=True``: the
        caller built ``cu_seqlens`` from a key mask (or ran ``ops.check_cu_seqlens``), so it is not read on the
        host again: on CUDA that read is a device sync per layer."""
        out = self._synced_one_call_packed(x, cu_seqlens, max_seqlen, stats, offsets_checked)
        if out is not None:
            return out
        n, d = self.num_heads, self.head_dim
        direct = self.direct_triton(x) and offsets_checked  # the direct path never reads the offsets
        att = self.attention_dtype(x.device)

        def attend(qkv):
            T = qkv.shape[0]
            q, k, v = qkv.to(att).view(T, 3, n, d).unbind(1)  # strided views (last dim contiguous): no copies
            if direct:
                ctx = _triton_layer_module().attention_varlen(q, k, v, cu_seqlens, max_seqlen, self.scale)
            else:
                ctx = ops.attention_varlen(q, k, v, cu_seqlens, max_seqlen, self.scale, backend=self.backend,
                                           offsets_checked=offsets_checked)
            return ctx.reshape(T, n * d).to(self.compute_dtype)

        return self._block(x, attend, stats, direct)

    def forward_padded(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                       stats: Optional[dict] = None) -> torch.Tensor:
        """Padded: ``x [B, L, H]``, ``key_mask [B, L]`` (1 = real token) or None; padded query positions
        are computed as Hugging Face computes them (they attend to the real keys). Returns ``[B, L, H]``."""
        out = self._synced_one_call_padded(x, key_mask, stats)
        if out is not None:
            return out
        n, d = self.num_heads, self.head_dim
        direct = self.direct_triton(x) and (key_mask is None or self._mask_ok(key_mask, x))
        att = self.attention_dtype(x.device)

        def attend(qkv):
            B, L = qkv.shape[:2]
            q, k, v = qkv.to(att).view(B, L, 3, n, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, n, L, d] views
            if direct:
                ctx = _triton_layer_module().attention(q, k, v, key_mask, self.scale)
            else:
                ctx = ops.attention(q, k, v, key_mask, self.scale, backend=self.backend)  # [B, n, L, d]
            return ctx.transpose(1, 2).reshape(B, L, n * d).to(self.compute_dtype)

        return self._block(x, attend, stats, direct)

    @staticmethod
    def _mask_ok(key_mask: torch.Tensor, x: torch.Tensor) -> bool:
        """What ``ops.attention`` checks of a mask: ``[B, L]`` on x's device (a bad one takes the public path,
        which raises)."""
        return key_mask.dim() == 2 and tuple(key_mask.shape) == tuple(x.shape[:2]) and key_mask.device == x.device

    def extra_repr(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.gemm_precision.items())
        return f"heads={self.num_heads}, head_dim={self.head_dim}, act={self.activation}, {p}"
