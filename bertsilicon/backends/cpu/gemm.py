"""The ``cpu`` backend's GEMM family: ``linear``, ``quantize``, ``int8_linear`` (C++ in csrc/gemm*.cpp,
csrc/quantize.cpp).

Weights are pre-packed into the micro-kernel's panel layout (``csrc/gemm_common.h``, ``PackKind``). The
registered ops take plain ``nn.Linear`` weights and keep one pack per weight tensor (:func:`cached_pack`:
keyed on the tensor object, dropped when the tensor is freed, re-packed when it changes in place), so a
model calling ``ops.linear`` with its parameters packs each weight once. Packs cost one more copy of the
weights in memory. A caller can also hold a pack explicitly::

    from bertsilicon.backends.cpu import gemm as _cpu_gemm
    pw = _cpu_gemm.pack_linear(layer.weight)           # fp32 / bf16 weight [N, K]
    y = _cpu_gemm.linear_packed(x, pw, layer.bias, "gelu")
    pq = _cpu_gemm.pack_int8(w_q)                      # int8 weight [N, K]
    y = _cpu_gemm.int8_linear_packed(x_q, x_scale, pq, w_scale, bias, "gelu")
    y = _cpu_gemm.int8_linear_dynamic(x, pq, w_scale, bias, "gelu")  # quantize(x) fused in

A :class:`PackedWeight` remembers its source tensor and that tensor's version counter: if the weight
was changed in place (``w.copy_(...)``, an optimizer step) or the instruction-set path was switched
(:func:`bertsilicon.backends.cpu.set_isa`), it is re-packed on the next call, so a stale pack is never
used. (Writes through ``w.data`` bypass the version counter: re-pack explicitly after those.)
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from ... import _C
from ...validation import contiguous, first_reason
from ..registry import register
from . import runtime
from .runtime import ACT, ELEM, OUT, dtype_reason, f32, ptr, threads

# Which GEMM serves float `linear`: "own" (packed-B register-blocked micro-kernel with the epilogue
# fused on the register tile) or "torch" (torch's F.linear, then our activation in one in-place pass).
# Both are measured by bench/kernels/bench_linear.py ("linear" vs "linear (torch GEMM + our epilogue)").
# "own" is the default: on an AVX-512 CPU (Zen 4) it matched or beat torch's oneDNN/MKL GEMM on every
# BERT-layer shape in fp32 and bf16 (best-of-30, interleaved; figures in bench/results/cpu/gemm.md),
# and the torch path pays a second pass over the output for the activation (and, in bf16, rounds
# twice: GEMM output, then activation).
LINEAR_GEMM = os.environ.get("BERTSILICON_LINEAR_GEMM", "own")
if LINEAR_GEMM not in ("own", "torch"):
    raise ValueError(f"BERTSILICON_LINEAR_GEMM={LINEAR_GEMM!r}; expected 'own' or 'torch'")


# ---------------------------------------------------------------------------------------------- #
# Packed weights                                                                                  #
# ---------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Pack:
    """One immutable packing of a weight: the layout, the buffer, and the source version it reflects."""

    version: int          # source._version when packed
    kind: int             # PackKind (csrc/gemm_common.h)
    weight_7bit: bool     # int8 with every |w| <= 63 (the AVX2 u8 x s7 kernel takes it)
    data: torch.Tensor    # uint8 buffer; empty for the scalar path, which reads the source itself
    source: torch.Tensor  # the contiguous weight it was packed from

    def ptr(self) -> int:
        return self.data.data_ptr() if self.kind else self.source.data_ptr()


def _pack_now(weight: torch.Tensor) -> _Pack:
    w = weight.detach().contiguous()
    N, K = w.shape
    weight_7bit = w.dtype == torch.int8 and _C.int8_fits_7bit(w.data_ptr(), w.numel())
    kind = _C.gemm_pack_kind(ELEM[w.dtype], weight_7bit)
    data = torch.empty(_C.gemm_packed_bytes(kind, N, K), dtype=torch.uint8)
    if kind and data.numel():
        _C.gemm_pack(kind, w.data_ptr(), ELEM[w.dtype], N, K, data.data_ptr(), threads())
    return _Pack(weight._version, kind, weight_7bit, data, w)


class PackedWeight:
    """A weight ``[N, K]`` packed for the active kernel path (see the module docstring).

    ``current()`` returns an immutable snapshot, re-packing first when the weight changed in place or the
    ISA path changed; the snapshot is swapped in with one reference assignment, so a call running in
    another thread keeps a consistent (layout, buffer) pair.
    """

    def __init__(self, weight: torch.Tensor, *, weak: bool = False):
        # weak=True (the cache below): do not keep the weight alive; the pack's own detached view
        # shares its storage and version counter, so staleness is still detected.
        self._weight_ref = weakref.ref(weight) if weak else (lambda: weight)
        self._pack = _pack_now(weight)

    @property
    def weight(self) -> torch.Tensor:
        w = self._weight_ref()
        return w if w is not None else self._pack.source

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def layout(self) -> str:
        return _C.gemm_pack_name(self.current().kind)

    def current(self) -> _Pack:
        pack = self._pack
        if (pack.version != self.weight._version
                or pack.kind != _C.gemm_pack_kind(ELEM[self.weight.dtype], pack.weight_7bit)):
            pack = self._pack = _pack_now(self.weight)
        return pack


_PACK_CACHE: dict[int, PackedWeight] = {}


def cached_pack(weight: torch.Tensor) -> PackedWeight:
    """The pack of ``weight``, made on first use and kept while the tensor lives (the plain ops use it,
    so a model's weights are packed once, not on every call)."""
    key = id(weight)
    pw = _PACK_CACHE.get(key)
    if pw is not None and pw._weight_ref() is weight:
        return pw
    pw = _PACK_CACHE[key] = PackedWeight(weight, weak=True)
    weakref.finalize(weight, _PACK_CACHE.pop, key, None)
    return pw


def packed_bytes(weight: torch.Tensor) -> int:
    """Bytes of the pack :func:`cached_pack` holds for ``weight`` (0 when none was made yet, or when its layout
    reads the weight itself)."""
    pw = _PACK_CACHE.get(id(weight))
    if pw is None or pw._weight_ref() is not weight:
        return 0
    return pw._pack.data.numel() if pw._pack.kind else 0


def _check_weight(name: str, w, dtypes) -> Optional[str]:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return f"{name} must be a 2-D tensor [N, K]"
    return dtype_reason(name, w, dtypes) or (f"{name} is on {w.device}; expected a CPU tensor" if w.device.type != "cpu" else None)


def native_bf16() -> bool:
    """Whether bf16 ``linear`` runs on the AVX512_BF16 kernel (``vdpbf16ps``) on the active path, rather
    than being widened to fp32."""
    return _C.gemm_pack_name(_C.gemm_pack_kind(ELEM[torch.bfloat16])) == "bf16x64"


# What each packed layout's micro-kernel multiplies with (csrc/gemm_common.h, PackKind).
_INSTRUCTIONS = {"raw": "scalar", "f32x64": "FMA zmm", "f32x16": "FMA ymm", "bf16x64": "vdpbf16ps zmm",
                 "u8s8x64": "vpdpbusd zmm", "s16x64": "vpmaddwd zmm", "s16x16": "vpmaddwd ymm",
                 "u8s7x16": "vpmaddubsw ymm"}
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8"}


def kernel_summary(gemm_dtypes, attention_dtype: torch.dtype) -> str:
    """One line for a model's report: the active path; for each GEMM weight dtype in ``gemm_dtypes`` the
    layout and instruction that run; bf16 attention's kernel; and what it means where the CPU lacks the
    feature that makes a low precision faster (VNNI for int8, AVX512_BF16 for bf16)."""
    parts, remarks = [f"{runtime.kernel_path()} path"], []
    for dtype in dict.fromkeys(gemm_dtypes):
        layout = _C.gemm_pack_name(_C.gemm_pack_kind(ELEM[dtype]))
        parts.append(f"{_SHORT[dtype]} GEMM {layout} ({_INSTRUCTIONS[layout]})")
        if dtype == torch.int8 and int8_weight_max() < 127:
            narrow = _C.gemm_pack_name(_C.gemm_pack_kind(ELEM[dtype], True))
            parts[-1] = (f"int8 GEMM {narrow} ({_INSTRUCTIONS[narrow]}) on 7-bit weights, {layout} "
                         f"({_INSTRUCTIONS[layout]}) on 8-bit ones")
            remarks.append("no VNNI here: int8 GEMMs on 7-bit weights run vpmaddubsw (no saturation possible), "
                           "those calibration gave 8-bit weights run exact int16 pairs")
        elif dtype == torch.int8 and layout.startswith("s16"):
            remarks.append("no VNNI here: int8 GEMMs run exact int16 pairs, ~1.5x the fp32 kernel's speed (VNNI: ~3x)")
        if dtype == torch.bfloat16 and layout != "bf16x64":
            remarks.append("no AVX512_BF16 here: bf16 runs on the fp32 kernels (widened exactly), no faster than "
                           "fp32; an optimized fp32 model keeps its fp32 weights beside the bf16 copies, so no "
                           "memory is saved either")
    if attention_dtype == torch.bfloat16:  # csrc/attention_impl.h: DotBf16 on avx512 with AVX512_BF16
        parts.append(f"bf16 attention {'vdpbf16ps' if runtime.native_bf16_attention() else 'widened to fp32'}")
    return ", ".join(parts) + "".join(f"; {r}" for r in remarks)


def int8_weight_max() -> int:
    """The widest int8 weight range ``[-q, q]`` the active path's fastest int8 kernel takes: 63 on AVX2 (the
    ``vpmaddubsw`` kernel cannot saturate only with 7-bit weights), 127 elsewhere. Weights quantized to
    127 still run everywhere, exactly, on the int16-pair kernel there."""
    kind = _C.gemm_pack_kind(ELEM[torch.int8], True)
    return _C.INT8_7BIT_MAX if kind == int(_C.PackKind.U8S7x16) else 127


def pack_linear(weight: torch.Tensor) -> PackedWeight:
    """Pack an fp32 or bf16 ``nn.Linear`` weight ``[N, K]`` once for :func:`linear_packed`."""
    reason = _check_weight("weight", weight, (torch.float32, torch.bfloat16))
    if reason:
        raise ValueError(reason)
    return PackedWeight(weight)


def pack_int8(w_q: torch.Tensor) -> PackedWeight:
    """Pack an int8 weight ``[N, K]`` once for :func:`int8_linear_packed`: VNNI layout with its
    ``128 * sum_k w`` compensation where the CPU has AVX512-VNNI; on AVX2 the same u8 x s8 layout 16 columns
    wide (``vpmaddubsw``) when every ``|w| <= 63`` (:func:`int8_weight_max`), else int16 pairs for
    ``vpmaddwd`` (64 columns wide on AVX-512 without VNNI, 16 on AVX2)."""
    reason = _check_weight("w_q", w_q, (torch.int8,))
    if reason:
        raise ValueError(reason)
    return PackedWeight(w_q)


# ---------------------------------------------------------------------------------------------- #
# linear                                                                                          #
# ---------------------------------------------------------------------------------------------- #
def _check_linear(x, weight, bias, activation) -> Optional[str]:
    return first_reason(dtype_reason("x", x, (torch.float32, torch.bfloat16)),
                        contiguous("x", x), contiguous("bias", bias))


def linear_packed(x: torch.Tensor, packed: PackedWeight, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None) -> torch.Tensor:
    """activation(x @ W^T + bias) with W pre-packed by :func:`pack_linear`; x ``[..., K]`` contiguous,
    x's dtype = W's dtype (fp32 or bf16); fp32 accumulation, epilogue in fp32, one rounding to x's dtype.

    Also fp32 x with a bf16 W (the model wrapper's bf16 GEMMs inside an fp32 layer): x is rounded to bf16
    (nearest even) as the GEMM reads it, products are exact, the sum and the epilogue are fp32 and the
    result is fp32 — the bf16 GEMM without the two casts around it and without rounding its output."""
    pack = packed.current()
    N, K = packed.shape
    mixed = x.dtype == torch.float32 and packed.dtype == torch.bfloat16
    if (x.dtype != packed.dtype and not mixed) or x.shape[-1] != K or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous {packed.dtype} tensor [..., {K}]; got {x.dtype} "
                         f"{tuple(x.shape)} (contiguous={x.is_contiguous()})")
    out = torch.empty(*x.shape[:-1], N, dtype=x.dtype)
    if out.numel() == 0:
        return out
    M = out.numel() // N
    if mixed and _C.gemm_pack_name(pack.kind) != "bf16x64":
        x = x.to(torch.bfloat16)  # the paths without vdpbf16ps take bf16 activations (then widen exactly)
    bias32 = f32(bias, N)  # held in a name: C++ reads it after this line
    _C.linear(pack.kind, x.data_ptr(), ELEM[x.dtype], M, K, pack.ptr(), N, ptr(bias32),
              ACT[activation], out.data_ptr(), OUT[out.dtype], threads())
    return out


def linear_torch_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      activation: Optional[str] = None) -> torch.Tensor:
    """The other candidate: torch's GEMM (``F.linear``, bias fused by addmm), then our activation in
    one in-place pass over the output. For bf16 the activation reads the bf16-rounded GEMM output."""
    y = torch.nn.functional.linear(x, weight, None if bias is None else bias.to(x.dtype))
    if activation is not None and y.numel():
        y = y.contiguous()
        _C.gemm_epilogue_inplace(y.data_ptr(), ELEM[y.dtype], y.numel() // y.shape[-1], y.shape[-1], 0,
                                 ACT[activation], threads())
    return y


@register("linear", "cpu", check=_check_linear)
def linear(x, weight, bias, activation):
    if LINEAR_GEMM == "torch":
        return linear_torch_gemm(x, weight, bias, activation)
    return linear_packed(x, cached_pack(weight), bias, activation)


# ---------------------------------------------------------------------------------------------- #
# quantize                                                                                        #
# ---------------------------------------------------------------------------------------------- #
def _check_quantize(x, dtype, granularity) -> Optional[str]:
    return first_reason(dtype_reason("x", x, (torch.float32, torch.bfloat16)), contiguous("x", x))


@register("quantize", "cpu", check=_check_quantize)
def quantize(x, dtype, granularity):
    shape = list(x.shape)
    if granularity == "per_token":
        scale_shape, cols = shape[:-1] + [1], shape[-1]
    elif granularity == "per_channel":
        scale_shape, cols = shape[:1] + [1] * (len(shape) - 1), x[0].numel() if shape[0] else 0
    else:
        scale_shape, cols = [1] * len(shape), x.numel()
    q = torch.empty(shape, dtype=torch.int8)
    if x.numel() == 0:
        return q, torch.ones(scale_shape, dtype=torch.float32)
    scale = torch.empty(scale_shape, dtype=torch.float32)
    _C.quantize(x.data_ptr(), ELEM[x.dtype], x.numel() // cols, cols, granularity == "per_tensor",
                q.data_ptr(), scale.data_ptr(), threads())
    return q, scale


# ---------------------------------------------------------------------------------------------- #
# int8_linear                                                                                     #
# ---------------------------------------------------------------------------------------------- #
def _check_int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype) -> Optional[str]:
    return first_reason(contiguous("x_q", x_q))


def _int8_gemm(x_q, x_scale, packed: PackedWeight, w_scale, bias, activation, out_dtype) -> torch.Tensor:
    pack = packed.current()
    N, K = packed.shape
    if x_q.dtype != torch.int8 or x_q.shape[-1] != K or not x_q.is_contiguous():
        raise ValueError(f"x_q must be a contiguous int8 tensor [..., {K}]; got {x_q.dtype} {tuple(x_q.shape)} "
                         f"(contiguous={x_q.is_contiguous()})")
    out = torch.empty(*x_q.shape[:-1], N, dtype=out_dtype)
    if out.numel() == 0:
        return out
    M = out.numel() // N
    # fp32 copies held in names for the duration of the C++ call (it reads raw pointers)
    xs, ws, bias32 = f32(x_scale, M), f32(w_scale, N), f32(bias, N)
    if out_dtype == torch.int32:  # raw sums; the scales are not read
        xs, ws = torch.ones(M), torch.ones(N)
    _C.int8_linear(pack.kind, x_q.data_ptr(), M, K, pack.ptr(), N, xs.data_ptr(), ws.data_ptr(),
                   ptr(bias32), ACT[activation], out.data_ptr(), OUT[out_dtype], threads())
    return out


def int8_linear_packed(x_q, x_scale, packed: PackedWeight, w_scale, bias=None, activation=None,
                       out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """activation((x_q @ W_q^T) * x_scale * w_scale + bias) with W_q pre-packed by :func:`pack_int8`;
    semantics and argument shapes as :func:`bertsilicon.ops.int8_linear`."""
    if out_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"out_dtype={out_dtype} is not supported; expected float32, bfloat16 or float16")
    return _int8_gemm(x_q, x_scale, packed, w_scale, bias, activation, out_dtype)


def int8_linear_dynamic(x: torch.Tensor, w_q, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                        activation: Optional[str] = None, inv_smooth: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dynamic int8 linear from float activations, in one call: ``x [..., K]`` (fp32 or bf16, contiguous;
    times ``inv_smooth [K]`` fp32 first when given) is quantized per token straight into the int8 GEMM's
    operand, then the GEMM with the dequant + bias + activation epilogue; result in x's dtype.

    Bit-identical to ``int8_linear(*quantize(x * inv_smooth, "per_token"), w_q, w_scale, bias, activation,
    out_dtype=x.dtype)`` on the cpu backend (same scales, same integers, same epilogue), without the int8
    copy of x and its second pass. ``w_q``: an int8 weight ``[N, K]`` or a :func:`pack_int8` result."""
    packed = w_q if isinstance(w_q, PackedWeight) else cached_pack(w_q)
    pack = packed.current()
    N, K = packed.shape
    if x.dtype not in (torch.float32, torch.bfloat16) or x.shape[-1] != K or not x.is_contiguous() or x.device.type != "cpu":
        raise ValueError(f"x must be a contiguous float32 or bfloat16 CPU tensor [..., {K}]; got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device} (contiguous={x.is_contiguous()})")
    if inv_smooth is not None and (inv_smooth.dtype != torch.float32 or inv_smooth.shape != (K,)
                                   or not inv_smooth.is_contiguous()):
        raise ValueError(f"inv_smooth must be a contiguous float32 tensor [{K}]; got {inv_smooth.dtype} "
                         f"{tuple(inv_smooth.shape)}")
    if w_scale.numel() not in (1, N):
        raise ValueError(f"w_scale has shape {tuple(w_scale.shape)}; expected one value or one per output channel ([{N}])")
    if bias is not None and bias.numel() != N:
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected [{N}]")
    out = torch.empty(*x.shape[:-1], N, dtype=x.dtype)
    if out.numel() == 0:
        return out
    M = out.numel() // N
    x_scale = torch.empty(M, dtype=torch.float32)
    ws, bias32 = f32(w_scale, N), f32(bias, N)  # held in names: C++ reads them during the call
    _C.int8_linear_dynamic(pack.kind, x.data_ptr(), ELEM[x.dtype], M, K, ptr(inv_smooth), pack.ptr(), N,
                           ws.data_ptr(), x_scale.data_ptr(), ptr(bias32), ACT[activation], out.data_ptr(),
                           OUT[x.dtype], threads())
    return out


def int8_matmul(x_q: torch.Tensor, w_q) -> torch.Tensor:
    """Exact int32 ``x_q [M, K] @ w_q[N, K]^T`` (w_q an int8 tensor or a :func:`pack_int8` result): the
    bare int8 GEMM, for tests and for measuring against ``torch._int_mm``."""
    packed = w_q if isinstance(w_q, PackedWeight) else pack_int8(w_q)
    return _int8_gemm(x_q, None, packed, None, None, None, torch.int32)


@register("int8_linear", "cpu", check=_check_int8_linear)
def int8_linear(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype):
    return _int8_gemm(x_q, x_scale, cached_pack(w_q), w_scale, bias, activation, out_dtype)
