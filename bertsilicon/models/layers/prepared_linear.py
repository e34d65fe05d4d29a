"""One GEMM of a fused layer with its weight prepared once in its precision (:class:`PreparedLinear`), and the
bookkeeping that keeps prepared copies in step with the model's parameters."""
from __future__ import annotations

import operator
from typing import Optional

import torch
from torch import nn

from ... import ops, quant
from ...backends import routing

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


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
      dynamic activations, :func:`bertsilicon.quant.int8_matmul`. ``weight_max``: the weight range
      ``[-q, q]`` (default :func:`~bertsilicon.backends.routing.int8_weight_max` where it runs: 63 on the AVX2
      path, whose fast kernel takes 7-bit weights; 127 elsewhere, and wherever calibration asks for it).

    ``derived_from``: the ``nn.Linear`` modules ``weight`` / ``bias`` were made from, their weights
    concatenated along the output dimension (q, k, v for the fused qkv GEMM; default ``(source,)``).
    :meth:`sync_prepared` re-derives the prepared copies when their parameters change.

    ``prepared``: the copies as an earlier build made them (by buffer name, as ``named_buffers`` lists them:
    :func:`bertsilicon.load`); they are adopted as they are, nothing is quantized or cast again, and
    ``weight`` / ``bias`` only give the shape (they may be ``meta`` tensors).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], precision: str, *,
                 source: Optional[nn.Linear] = None, smooth: Optional[torch.Tensor] = None,
                 backend: Optional[str] = None, derived_from: Optional[tuple] = None,
                 weight_max: Optional[int] = None, prepared: Optional[dict] = None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is unknown; expected one of {tuple(PRECISIONS)}")
        self.precision = precision
        self.backend = backend
        self.out_features, self.in_features = weight.shape
        # plain attributes: the shared nn.Linear modules stay registered where they were
        self.__dict__["source"] = None
        self.derived_from = tuple(derived_from) if derived_from is not None else (
            (source,) if source is not None else ())
        if precision == "int8":  # the SmoothQuant factors are kept: sync_prepared re-quantizes with them
            if prepared is not None:  # an earlier build's copies: its factors, and the range its weights use
                smooth = prepared.get("smooth")
                w_q = prepared.get("w_q")
                weight_max = weight_max or (63 if w_q is not None and int(w_q.abs().max()) <= 63 else 127)
            self.weight_max = weight_max or routing.int8_weight_max(weight.device, backend)
            self.register_buffer("smooth", None if smooth is None else smooth.detach(), persistent=False)
            self.register_buffer("inv_smooth", None if smooth is None else (1.0 / smooth.float()).contiguous(),
                                 persistent=False)
        elif source is not None and source.weight.dtype == PRECISIONS[precision]:
            self.__dict__["source"] = source
        prepared = self._prepare(weight, bias) if prepared is None else self._adopt(prepared)
        for name, t in prepared.items():
            self.register_buffer(name, t, persistent=False)
        self.prepared_names = tuple(prepared)
        self.synced = _SourceState(_linear_tensors(self.derived_from))

    def _prepare(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> dict:
        """Every copy this GEMM prepares from its weight ``[N, K]`` and bias ``[N]`` (or None), by buffer
        name: int8 ``w_q`` (int8 ``[N, K]``), ``w_scale`` (fp32 ``[N]``), ``bias`` (fp32); a float GEMM not
        reading its source directly ``weight`` / ``bias`` in its dtype; fp16 on the cpu backend
        ``weight_fp16_in_fp32``. Used at construction and by :meth:`sync_prepared`, so both derive alike."""
        weight = weight.detach()
        bias = None if bias is None else bias.detach()
        out = {}
        if self.precision == "int8":
            out["w_q"], out["w_scale"] = quant.quantize_weight(weight, self._buffers["smooth"], backend=self.backend,
                                                                qmax=self.weight_max)
            out["bias"] = None if bias is None else bias.float().clone()
        elif self.__dict__["source"] is None:
            dtype = PRECISIONS[self.precision]
            out["weight"] = weight.to(dtype).contiguous()
            out["bias"] = None if bias is None else bias.to(dtype).contiguous()
        if self.precision == "fp16" and routing.fp16_on_fp32_kernels(weight.device, self.backend):
            # CPUs without AVX512-FP16 have no fp16 arithmetic: the cpu backend runs an fp16 GEMM on its fp32
            # kernel, on the fp16 weight's values held in fp32 (exact) and fp16-rounded activations (forward).
            out["weight_fp16_in_fp32"] = weight.to(torch.float16).float().contiguous()
        return out

    def _adopt(self, prepared: dict) -> dict:
        """The copies :meth:`_prepare` makes, taken from ``prepared`` (a missing name is None: no bias);
        the fp16 GEMM's fp32-held copy is derived here, as it depends on the CPU (exact: fp16 -> fp32)."""
        if self.precision == "int8":
            names = ("w_q", "w_scale", "bias")
        else:
            names = ("weight", "bias") if self.__dict__["source"] is None else ()
        out = {name: prepared.get(name) for name in names}
        weight = out.get("weight")
        if weight is not None and self.precision == "fp16" and routing.fp16_on_fp32_kernels(weight.device, self.backend):
            out["weight_fp16_in_fp32"] = weight.float().contiguous()
        return out

    def prepared_sources(self) -> tuple:
        """The ``nn.Linear`` modules whose parameters this GEMM holds prepared copies of (empty when it
        holds none: it reads its source directly, or was built from bare tensors)."""
        return self.derived_from if self.prepared_names else ()

    def prepared_tensors(self) -> dict:
        """The prepared copies by buffer name (None where there is no bias)."""
        return {name: self._buffers[name] for name in self.prepared_names}

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
        if self.synced.matches(tensors):
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
        self.synced = _SourceState(tensors)
        return True

    def resync(self) -> None:
        """Take the source parameters as they are now as the ones the prepared copies stand for (after they were
        replaced by ``meta`` placeholders: nothing is re-derived from them)."""
        self.synced = _SourceState(_linear_tensors(self.derived_from))

    def operands(self) -> tuple:
        """Every tensor this GEMM reads now: ``(w_q, bias, w_scale, inv_smooth)`` for int8; ``(weight, bias)``
        for float precisions, the source ``nn.Linear``'s own parameters when it is read directly, else the
        prepared copies. Read from the modules' dicts: the one-call path's staleness check
        (:mod:`bertsilicon.backends.cpu.layer`) runs this for every GEMM of every layer of every forward."""
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
        """The cpu backend's GEMM module when it serves this call directly (:func:`routing.cpu_gemm`; an fp16
        GEMM takes fp32 activations and runs as fp16 operands on the fp32 kernel), else None: the public ops
        decide (and raise)."""
        fp16_on_fp32 = self.precision == "fp16" and x.dtype == torch.float32 and "weight_fp16_in_fp32" in self._buffers
        return routing.cpu_gemm(x, self.backend, PRECISIONS[self.precision], fp16_on_fp32)

    def extra_repr(self) -> str:
        smooth = self.precision == "int8" and self.inv_smooth is not None
        bits = f", {self.weight_max.bit_length() + 1}-bit weights" if self.precision == "int8" else ""
        return f"{self.in_features} -> {self.out_features}, {self.precision}{bits}{', smoothed' if smooth else ''}"
