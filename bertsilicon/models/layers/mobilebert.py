"""The fused MobileBERT layer: inverted bottlenecks, NoNorm, stacked FFNs, on the fused ops.

One MobileBERT layer (Sun et al. 2020; Hugging Face ``MobileBertLayer``), width H (512), bottleneck width
h (``true_hidden_size``, 128), n heads of d = h / n, FFN width F (512), ``k`` = ``num_feedforward_networks``
(4), on tokens x ``[T, H]`` (packed, padding-free) or ``[B, L, H]`` (padded, with a key-padding mask). With
the released configuration (``use_bottleneck``, ``key_query_shared_bottleneck``, no
``use_bottleneck_attention``, ``normalization_type="no_norm"``, relu)::

    [b_in | b_att | v] = x [W_in; W_att; W_v]^T + [...]   "x_proj": the three projections that read x, one GEMM
    r   = Norm_in(b_in)                                   the attention block's residual    [T, h]
    s   = Norm_att(b_att)                                 the shared query/key input        [T, h]
    [q | k] = s [W_q; W_k]^T + [...]                      "attn_proj"                        [T, 2h]
    a   = Norm_o(attention(q, k, v) W_o^T + b_o + r)      "o"; softmax(q k^T / sqrt(d)) v per head
    a   = Norm_j(act(a W_j1^T + b_j1) W_j2^T + b_j2 + a)  "ffn{j}_up", "ffn{j}_down", j = 1 .. k-1
    a'  = Norm_out(act(a W_up^T + b_up) W_down^T + b_down + a)      "up", "down"
    y   = Norm_ob(a' W_ob^T + b_ob + x)                   "out_bottleneck": back to width H    [T, H]

``Norm`` is the configuration's: ``NoNorm``, the elementwise ``z * gamma + beta`` (no statistics), or
LayerNorm (fp32 statistics; ``ops.add_layernorm`` where there is a residual). The other configurations
only move inputs around: ``use_bottleneck_attention`` gives q, k and v all from r ("x_proj" = W_in, "attn_proj"
= [W_q; W_k; W_v]); neither bottleneck flag: q, k, v from x ("x_proj" = [W_in; W_q; W_k; W_v]); no
``use_bottleneck``: no bottlenecks, q, k, v from x and the attention residual is x.

GEMMs per token (released shapes, H = F = 512, h = 128, k = 4): x_proj 3 x 128 x 512, attn_proj 2 x 128 x 128,
o 128^2, four FFNs 2 x 512 x 128 each, out_bottleneck 512 x 128: 0.84 M multiply-adds a token (plus
4 L h of attention), ~8.5x fewer than a BERT-base layer's 7.1 M, in 12 GEMMs instead of 4: the layer is
thin, so every GEMM reads x or its predecessor's output once and the projections that read the same input are
one GEMM. Each GEMM has its own precision, as in :class:`~.bert.FusedEncoderLayer`
(:class:`~.prepared_linear.PreparedLinear`: prepared once, following the model's parameters),
and activations between GEMMs are the layer's ``compute_dtype``; the NoNorms run in place on the GEMM
outputs in that dtype, as Hugging Face runs them in the model's dtype.

How a call runs, as for the BERT block: on the cpu backend (CPU tensors, fp32 / bf16 activations, NoNorm)
the whole layer is one C++ call, ``_C.encoder_layer_packed`` / ``_padded`` on a ``MobileBertLayerPlan``
(csrc/encoder_layer.cpp, the ``mobilebert_layer`` plan of :mod:`bertsilicon.backends.cpu.layer`): the same GEMM kernels on
the same packs, attention reading q, k, v in place from the GEMM outputs, NoNorm as torch's add_ / mul_ /
add_ compute it, bit-identical to the per op path, which every other case runs (``layer.one_call = False``
forces it): the cpu GEMMs called directly on their packed weights, every other op through :mod:`bertsilicon.ops`.
At batch 1 the per-op path costs ~0.5 ms of Python a layer (12 GEMMs, 8 NoNorms, attention), more than its
kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ... import ops, quant
from .base import FusedLayerBase
from .prepared_linear import module_weight_and_bias


@dataclass
class MobileBertParts:
    """The pieces of one HF ``MobileBertLayer`` (found by the MobileBERT adapter).

    ``x_proj``: ``(role, nn.Linear)`` of the projections reading the layer input x, concatenated in this
    order into one GEMM; roles ``"input"`` (the input bottleneck, normalised by ``norms["input"]`` into the
    attention residual), ``"shared"`` (the shared query/key bottleneck, normalised by ``norms["shared"]``),
    ``"q" | "k" | "v"``. ``attn_proj``: the same for the projections reading ``attn_source`` (``"shared"`` or
    ``"input"``), empty when there is none. ``ffn``: ``(up, down, norm)`` of each stacked FFN but the last,
    whose pieces are ``up``, ``down``, ``norm_out``; ``out_bottleneck`` and ``norm_ob``: back to width H (None
    without bottlenecks)."""

    x_proj: tuple
    attn_proj: tuple
    attn_source: Optional[str]
    norms: dict
    o: nn.Linear
    norm_o: nn.Module
    ffn: tuple
    up: nn.Linear
    down: nn.Linear
    norm_out: nn.Module
    out_bottleneck: Optional[nn.Linear]
    norm_ob: Optional[nn.Module]
    activation: str
    num_heads: int
    no_norm: bool        # Norm is NoNorm (elementwise affine); else LayerNorm


class FusedMobileBertLayer(FusedLayerBase):
    """A drop-in for one HF ``MobileBertLayer`` (see the module docstring). ``gemm_precision``: by GEMM name
    (:meth:`gemm_names`) ``"fp32" | "bf16" | "fp16" | "int8"``; ``compute_dtype``: activations between GEMMs;
    ``smooth``: optional SmoothQuant factors by GEMM name (int8 GEMMs only); ``int8_weight_max``: optional int8
    weight range by GEMM name (default: the path's, :class:`PreparedLinear`); ``prepared``: per GEMM, its prepared
    copies as saved (``bertsilicon.load``)."""

    CPU_PLAN = "mobilebert_layer"  # the cpu backend's one-call plan (bertsilicon.backends.cpu.layer)

    def __init__(self, original: nn.Module, parts: MobileBertParts, gemm_precision: dict, compute_dtype: torch.dtype,
                 smooth: Optional[dict] = None, backend: Optional[str] = None, int8_weight_max: Optional[dict] = None,
                 prepared: Optional[dict] = None):
        super().__init__(original, gemm_precision, compute_dtype, backend, int8_weight_max)
        self.parts = parts
        self.NORM_OPS = () if parts.no_norm else ("add_layernorm",)
        q = dict(parts.x_proj + parts.attn_proj)["q"]
        self.num_heads = parts.num_heads
        width = q.out_features
        if width % self.num_heads:
            raise ValueError(f"attention width {width} is not a multiple of {self.num_heads} heads")
        self.head_dim = width // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.hidden = parts.x_proj[0][1].in_features
        self.activation = parts.activation
        for name, linears in self._gemm_linears(parts).items():
            self._add_gemm(name, linears, smooth, prepared)
        self._track_prepared()

    @staticmethod
    def _gemm_linears(parts: MobileBertParts) -> dict:
        """GEMM name -> the ``nn.Linear`` modules it concatenates, in the order a call runs them."""
        gemms = {"x_proj": tuple(lin for _, lin in parts.x_proj)}
        if parts.attn_proj:
            gemms["attn_proj"] = tuple(lin for _, lin in parts.attn_proj)
        gemms["o"] = (parts.o,)
        for j, (up, down, _) in enumerate(parts.ffn, 1):
            gemms[f"ffn{j}_up"], gemms[f"ffn{j}_down"] = (up,), (down,)
        gemms["up"], gemms["down"] = (parts.up,), (parts.down,)
        if parts.out_bottleneck is not None:
            gemms["out_bottleneck"] = (parts.out_bottleneck,)
        return gemms

    @classmethod
    def gemm_names(cls, parts: MobileBertParts) -> tuple:
        """The GEMMs a layer of these parts runs, in order (the keys of ``gemm_precision``)."""
        return tuple(cls._gemm_linears(parts))

    def _norms(self) -> list:
        p = self.parts
        norms = [*p.norms.values(), p.norm_o, *(n for _, _, n in p.ffn), p.norm_out]
        return norms + ([p.norm_ob] if p.norm_ob is not None else [])

    def operand_tensors(self, cpu: bool = False) -> tuple:
        """Every tensor a call reads, in a fixed order: each GEMM's operands, then every Norm's weight and
        bias (what the CUDA graphs check before replaying)."""
        out = []
        for name in self.gemm_precision:
            g = self._modules[name]
            out += g.cpu_operands() if cpu else g.operands()
        for norm in self._norms():
            out += module_weight_and_bias(norm)
        return tuple(out)

    def _probe_layernorm(self) -> nn.Module:
        return self.parts.norm_o

    def norm_eps(self) -> tuple:
        """NoNorm has no eps (LayerNorm configs run per op): nothing to add to the one-call plan's key."""
        return ()

    def _unserved_reason(self) -> str:
        parts = self.parts
        if not parts.no_norm:
            return "normalization_type='layer_norm': the one-call plan runs NoNorm"
        from ... import _C

        if len(parts.ffn) > _C.MOBILEBERT_MAX_STACKED_FFNS:
            return f"{len(parts.ffn) + 1} FFNs: the one-call plan takes up to {_C.MOBILEBERT_MAX_STACKED_FFNS + 1}"
        return super()._unserved_reason()

    # ------------------------------------------------------------------------------------------ #
    def _norm(self, z: torch.Tensor, norm: nn.Module, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``Norm(z + residual)``; ``z`` is a GEMM output this layer owns (NoNorm runs in place on it)."""
        weight, bias = module_weight_and_bias(norm)
        if self.parts.no_norm:  # as HF: (z + r) * gamma + beta, each step rounded to z's dtype
            if residual is not None:
                z = z.add_(residual)
            if weight.dtype != z.dtype:  # gamma, beta in z's dtype, as HF's model in that dtype has them: a
                weight, bias = weight.to(z.dtype), bias.to(z.dtype)  # same-dtype pass is ~3x faster in bf16
            return z.mul_(weight).add_(bias)
        if residual is not None:
            return ops.add_layernorm(z, residual, weight, bias, norm.eps, backend=self.backend)
        return F.layer_norm(z, z.shape[-1:], weight.to(z.dtype), bias.to(z.dtype), norm.eps)

    def _gemm(self, name: str, x: torch.Tensor, stats: Optional[dict], activation: Optional[str] = None):
        if stats is not None:
            stats.setdefault(name, quant.ChannelAbsMax()).update(x)
        return self._modules[name](x, activation)

    @staticmethod
    def _split(y: torch.Tensor, pieces: tuple) -> dict:
        """The role -> column slice (a view) of a concatenated GEMM output."""
        widths = [lin.out_features for _, lin in pieces]
        return dict(zip([role for role, _ in pieces], y.split(widths, dim=-1)))

    def _block(self, x: torch.Tensor, attend, stats: Optional[dict] = None) -> torch.Tensor:
        """The layer on tokens ``x [..., H]`` with ``attend(q, k, v) -> ctx [..., h]`` (each ``[..., h]``)."""
        p = self.parts
        y = self._split(self._gemm("x_proj", x, stats), p.x_proj)
        normed = {role: self._norm(y.pop(role).contiguous(), p.norms[role]) for role in ("input", "shared")
                  if role in y}
        residual = normed.get("input", x)
        if p.attn_proj:
            y.update(self._split(self._gemm("attn_proj", normed[p.attn_source], stats), p.attn_proj))
        a = self._norm(self._gemm("o", attend(y["q"], y["k"], y["v"]), stats), p.norm_o, residual)
        for j, (_, _, norm) in enumerate(p.ffn, 1):
            u = self._gemm(f"ffn{j}_up", a, stats, self.activation)
            a = self._norm(self._gemm(f"ffn{j}_down", u, stats), norm, a)
        u = self._gemm("up", a, stats, self.activation)
        a = self._norm(self._gemm("down", u, stats), p.norm_out, a)
        if p.out_bottleneck is None:
            return a
        return self._norm(self._gemm("out_bottleneck", a, stats), p.norm_ob, x)

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       stats: Optional[dict] = None, *, offsets_checked: bool = False) -> torch.Tensor:
        """Padding-free: ``x [T, H]`` real tokens of B sequences back to back (``cu_seqlens`` int32
        ``[B + 1]``); attention via ``ops.attention_varlen``. Returns ``[T, H]``."""
        out = self._synced_one_call_packed(x, cu_seqlens, max_seqlen, stats, offsets_checked)
        if out is not None:
            return out
        n, d = self.num_heads, self.head_dim

        def attend(q, k, v):
            T = q.shape[0]
            ctx = ops.attention_varlen(q.view(T, n, d), k.view(T, n, d), v.view(T, n, d), cu_seqlens, max_seqlen,
                                       self.scale, backend=self.backend, offsets_checked=offsets_checked)
            return ctx.reshape(T, n * d)

        return self._block(x, attend, stats)

    def forward_padded(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                       stats: Optional[dict] = None) -> torch.Tensor:
        """Padded: ``x [B, L, H]``, ``key_mask [B, L]`` (1 = real token) or None; padded query positions are
        computed as Hugging Face computes them. Returns ``[B, L, H]``."""
        out = self._synced_one_call_padded(x, key_mask, stats)
        if out is not None:
            return out
        n, d = self.num_heads, self.head_dim

        def attend(q, k, v):
            B, L = q.shape[:2]
            heads = [t.view(B, L, n, d).transpose(1, 2) for t in (q, k, v)]  # [B, n, L, d] views
            ctx = ops.attention(*heads, key_mask, self.scale, backend=self.backend)
            return ctx.transpose(1, 2).reshape(B, L, n * d)

        return self._block(x, attend, stats)

    def extra_repr(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.gemm_precision.items())
        return f"heads={self.num_heads}, head_dim={self.head_dim}, act={self.activation}, {p}"
