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
  ``_C.encoder_layer_padded`` (csrc/encoder_layer.cpp, :mod:`bertsilicon.backends.cpu.layer`): the four packed GEMMs
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
  :mod:`bertsilicon.backends.triton.layer`): same kernels, same results, without the public op's validation and dispatch.
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
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ... import ops, quant
from ...backends import routing
from .base import FusedLayerBase
from .prepared_linear import PreparedLinear, module_weight_and_bias

GEMMS = ("qkv", "o", "up", "down")


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


@functools.cache
def _triton_layer():
    """:mod:`bertsilicon.backends.triton.layer` (imported on first use: it imports triton)."""
    from ...backends.triton import layer

    return layer


class FusedEncoderLayer(FusedLayerBase):
    """A drop-in for one HF encoder layer, run on the fused ops (see the module docstring).

    ``gemm_precision``: ``{"qkv" | "o" | "up" | "down": "fp32" | "bf16" | "fp16" | "int8"}``;
    ``compute_dtype``: the dtype of activations between GEMMs (residual stream, attention inputs);
    ``smooth``: optional SmoothQuant factors per GEMM (int8 GEMMs only); ``int8_weight_max``: optional int8
    weight range by GEMM name (default: the path's, :class:`PreparedLinear`);
    ``prepared``: per GEMM, its prepared copies as saved (``bertsilicon.load``: adopted, not derived again);
    ``one_call`` (attribute): run the whole layer as one C++ call where the cpu backend serves it (default
    ``ONE_CALL``; see the module docstring).
    ``bf16_attention`` (attribute, default True): let an int8 layer run attention in bf16 where that is faster
    (:meth:`attention_dtype`); False keeps it in the compute dtype.
    """

    CPU_PLAN = "encoder_layer"  # the cpu backend's one-call plan (bertsilicon.backends.cpu.layer)

    def __init__(self, original: nn.Module, parts: LayerParts, gemm_precision: dict, compute_dtype: torch.dtype,
                 smooth: Optional[dict] = None, backend: Optional[str] = None, int8_weight_max: Optional[dict] = None,
                 prepared: Optional[dict] = None):
        super().__init__(original, gemm_precision, compute_dtype, backend, int8_weight_max)
        self.parts = parts
        self.num_heads = parts.num_heads
        self.hidden = parts.q.in_features
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of {self.num_heads} heads")
        self.head_dim = self.hidden // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.activation = parts.activation
        self.direct_launch = True  # the triton per-op path calls the launchers directly (see direct_triton)
        self.bf16_attention = True  # int8 layers on a CPU with AVX512_BF16: see attention_dtype
        self._direct_verdicts = {}  # (device, dtype) -> whether every op resolves to triton
        linears = {"qkv": (parts.q, parts.k, parts.v), "o": (parts.o,), "up": (parts.up,), "down": (parts.down,)}
        for name in GEMMS:
            self._add_gemm(name, linears[name], smooth, prepared)
        self._track_prepared()

    @staticmethod
    def gemm_names(parts: LayerParts) -> tuple:
        """The GEMMs a layer of these parts runs, in order (the keys of ``gemm_precision``)."""
        return GEMMS

    def _apply(self, fn, *args, **kwargs):
        self._direct_verdicts.clear()  # .to() / .half(): the weights the verdicts were asked about change
        return super()._apply(fn, *args, **kwargs)

    def operand_tensors(self, cpu: bool = False) -> tuple:
        """Every tensor a call of the layer reads, in a fixed order: per GEMM (qkv, o, up, down) its
        :meth:`PreparedLinear.operands` (``cpu``: :meth:`PreparedLinear.cpu_operands`, what the cpu GEMMs
        read), then ln1 weight, bias, ln2 weight, bias. What the one-call snapshot and the CUDA graphs check
        before reusing what they recorded."""
        modules = self._modules
        parts = self.parts
        read = PreparedLinear.cpu_operands if cpu else PreparedLinear.operands
        return (*read(modules["qkv"]), *read(modules["o"]), *read(modules["up"]), *read(modules["down"]),
                *module_weight_and_bias(parts.ln1), *module_weight_and_bias(parts.ln2))

    def direct_triton(self, x: torch.Tensor) -> bool:
        """Whether this call's per-op path launches the triton kernels directly (:mod:`bertsilicon.backends.triton.layer`):
        ``direct_launch`` on, backend None or "triton", CUDA tensors (or CPU under the Triton interpreter with
        ``backend="triton"``), not tracing, x's last dim contiguous, and every op of the layer resolving to
        triton for x's device and dtype (:meth:`backends_used`, asked once per device and dtype)."""
        if not self.direct_launch or not routing.triton_direct(x, self.backend):
            return False
        key = (x.device, x.dtype)
        verdicts = self._direct_verdicts
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
                and routing.native_bf16_attention(device, self.backend)):
            return torch.bfloat16
        return self.compute_dtype

    # ------------------------------------------------------------------------------------------ #
    def _add_ln(self, x, residual, ln: nn.LayerNorm, direct: bool = False):
        if direct:
            return _triton_layer().add_layernorm(x, residual, ln)
        return ops.add_layernorm(x, residual, ln.weight, ln.bias, ln.eps, backend=self.backend)

    def norm_eps(self) -> tuple:
        """The LayerNorms' eps, (ln1, ln2): part of what the one-call plan was built from."""
        parts = self.parts
        return float(parts.ln1.eps), float(parts.ln2.eps)


    def _block(self, x, attend, stats: Optional[dict] = None, direct: bool = False):
        """The layer on tokens ``x [..., H]`` with ``attend(qkv) -> ctx [..., H]``; ``stats`` (calibration)
        collects the per-channel max |input| of every GEMM; ``direct``: the GEMMs and LayerNorms launch the
        triton kernels directly (:meth:`direct_triton`)."""
        parts = self.parts
        modules = self._modules
        gemm = _triton_layer().linear if direct else (lambda g, t, act=None: g(t, act))
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
                ctx = _triton_layer().attention_varlen(q, k, v, cu_seqlens, max_seqlen, self.scale)
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
                ctx = _triton_layer().attention(q, k, v, key_mask, self.scale)
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
