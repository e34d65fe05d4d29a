"""What every fused encoder layer shares (:class:`FusedLayerBase`): the original layer's children, named
prepared GEMMs, prepared copies kept in step with the parameters, and the choice between one C++ call and the
per-op path (asked of :mod:`bertsilicon.backends.routing`)."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from ... import ops, quant
from ...backends import routing
from .prepared_linear import PreparedLinear, _linear_tensors, _SourceState

# Default of FusedLayerBase.one_call: "0" forces the per-op path (for comparisons; bench/studies/layer_overhead.py).
ONE_CALL = os.environ.get("BERTSILICON_LAYER_ONE_CALL", "1") != "0"


class FusedLayerBase(nn.Module):
    """What every fused encoder layer shares (:class:`~.bert.FusedEncoderLayer`, and MobileBERT's
    :class:`~.mobilebert.FusedMobileBertLayer`).

    * The original layer's children registered under their own names (``state_dict()`` keys,
      ``parameters()`` and ``.to()`` are the original model's); the GEMMs are :class:`PreparedLinear`
      children named by ``gemm_precision``'s keys, in the order a call runs them.
    * :meth:`sync_prepared`: every prepared copy follows the model's parameters.
    * :meth:`backends_used`: which backend the public dispatch picks for each op of the layer.

    * :meth:`_one_call` / :meth:`call_path`: whether a call runs as one C++ call (the cpu backend builds the
      plan named by the class's ``CPU_PLAN``, :mod:`bertsilicon.backends.cpu.layer`) or per op, and why.

    A subclass sets ``CPU_PLAN``, ``hidden``, ``num_heads``, ``head_dim``, ``scale`` and builds its GEMMs, then calls
    :meth:`_track_prepared`; it implements ``forward_packed``, ``forward_padded``, ``operand_tensors`` and
    ``norm_eps``, lists in ``NORM_OPS`` the public ops its normalisations call, and may say in
    ``_unserved_reason`` why the one-call plan refuses it.
    """

    NORM_OPS: tuple = ("add_layernorm",)

    def __init__(self, original: nn.Module, gemm_precision: dict, compute_dtype: torch.dtype,
                 backend: Optional[str] = None, int8_weight_max: Optional[dict] = None):
        super().__init__()
        for name, child in original.named_children():  # same state_dict keys as the original layer
            self.add_module(name, child)
        self.__dict__["original"] = original
        self.compute_dtype = compute_dtype
        self.backend = backend
        self.gemm_precision = dict(gemm_precision)
        self.int8_weight_max = dict(int8_weight_max or {})  # GEMM name -> int8 weight range (default: the path's)
        self.one_call = ONE_CALL  # see _one_call

    def _add_gemm(self, name: str, linears: tuple, smooth: Optional[dict] = None,
                  prepared: Optional[dict] = None) -> None:
        """Register GEMM ``name`` in its precision (``gemm_precision[name]``): one ``nn.Linear``, or several
        reading the same input with their weights concatenated along the output dimension (a missing bias
        counts as zeros); ``smooth``: SmoothQuant factors by GEMM name (int8 GEMMs only); ``prepared``: by GEMM
        name, its prepared copies as made before (:class:`PreparedLinear`'s ``prepared``: adopted, not derived again;
        a GEMM not in it is prepared here)."""
        p = self.gemm_precision[name]
        factors = (smooth or {}).get(name) if p == "int8" else None
        wmax = self.int8_weight_max.get(name)
        given = None if prepared is None else prepared.get(name)  # None: prepared here
        if len(linears) == 1:
            lin = linears[0]
            gemm = PreparedLinear(lin.weight, lin.bias, p, source=lin, smooth=factors, backend=self.backend,
                                  weight_max=wmax, prepared=given)
        else:
            weight = torch.cat([lin.weight.detach() for lin in linears], 0)
            bias = None
            if any(lin.bias is not None for lin in linears):
                bias = torch.cat([(lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)).detach()
                                  for lin in linears])
            gemm = PreparedLinear(weight, bias, p, smooth=factors, backend=self.backend, derived_from=tuple(linears),
                                  weight_max=wmax, prepared=given)
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
        snap = routing.cpu_backend().layer.snapshot(self)
        return snap if snap.plan is not None else None

    def _synced_one_call_packed(self, x, cu_seqlens, max_seqlen, stats, offsets_checked) -> Optional[torch.Tensor]:
        """What both forwards do first: bring the prepared copies up to date (:meth:`sync_prepared`; not while
        torch.compile traces), then run the call as one C++ call where that serves it. The output, or None (the
        per-op path runs)."""
        if not torch.compiler.is_compiling():
            self.sync_prepared()
        snap = self._one_call(x, stats)
        return None if snap is None else routing.cpu_backend().layer.forward_packed(self, snap, x, cu_seqlens, max_seqlen,
                                                                            offsets_checked)

    def _synced_one_call_padded(self, x, key_mask, stats) -> Optional[torch.Tensor]:
        """:meth:`_synced_one_call_packed` for ``forward_padded``."""
        if not torch.compiler.is_compiling():
            self.sync_prepared()
        snap = self._one_call(x, stats)
        return None if snap is None else routing.cpu_backend().layer.forward_padded(self, snap, x, key_mask)

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
        """Why :meth:`call_path` found the per-op path: what the layer is (:func:`routing.one_call_reason`),
        then the ``one_call`` switch, then what its plan builder refuses."""
        reason = routing.one_call_reason(device, self.backend, self.compute_dtype, self.gemm_precision.values())
        if reason is not None:
            return reason
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
        self.prepared_sources = tuple(m for g in self.gemm_precision
                                                  for m in self._modules[g].prepared_sources())
        self.synced = _SourceState(_linear_tensors(self.prepared_sources))

    def sync_prepared(self) -> bool:
        """Bring every prepared copy (concatenated weights and biases, bf16 / fp16 casts, int8 weights,
        scales and biases) up to date with the model's parameters: True when something was re-derived
        (:meth:`PreparedLinear.sync_prepared`: in place, same tensors, int8 with the calibrated SmoothQuant
        factors; ValueError when a parameter's shape changed). When nothing changed, the cost is one
        identity and version read per source parameter (~12 for a BERT layer with all four GEMMs prepared).
        Both forwards call it first (not under ``torch.compile`` tracing: call it before a compiled call);
        call it before replaying a captured CUDA graph, which never runs the forwards."""
        tensors = _linear_tensors(self.prepared_sources)
        if self.synced.matches(tensors):
            return False
        changed = [self._modules[g].sync_prepared() for g in self.gemm_precision]
        self.synced = _SourceState(tensors)
        return any(changed)

    def attention_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype attention runs in for a call on ``device``: the compute dtype."""
        return self.compute_dtype

    def _probe_layernorm(self) -> nn.LayerNorm:
        """A LayerNorm the layer runs through ``ops.add_layernorm`` (for :meth:`backends_used`)."""
        return self.parts.ln1

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
