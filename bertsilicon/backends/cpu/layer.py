"""A fused encoder layer in one C++ call on the cpu backend (BERT block and MobileBERT layer plans).

:meth:`FusedEncoderLayer.forward_packed` / ``forward_padded`` on the cpu backend would make ~7 Python-level
op calls per layer (four GEMMs, attention, two residual + LayerNorms), each with its own validation and dispatch: at batch 1 that costs more than the kernels. This
module instead calls ``_C.encoder_layer_packed`` / ``_C.encoder_layer_padded`` (csrc/encoder_layer.cpp), which
runs the same kernels in the same order on the same bits — attention reads q, k, v in place from the qkv
GEMM's output through strides, every intermediate lives in one C++ scratch block of the calling thread —
so the result is bit-identical to the per-op path (tests/backends/cpu/test_fused_layer_cpu.py).

An fp16 GEMM (fp32 activations: a CPU without fp16 arithmetic) is the per-op path's fp16-on-fp32 GEMM: its input
rounded to fp16 values (nearest even) by the C++ round_to kernel, ``ops.round_to(x, "fp16")``'s own code and
format parameters (``round_format_args``), then the fp32 GEMM on the pack of ``weight_fp16_in_fp32``.

A layer's :class:`Snapshot` is the C++ plan (each GEMM's pack layout and pointer, fp32 bias, int8 scales and
SmoothQuant factors, fp16 input rounding; LayerNorm weight/bias as fp32 and eps; heads, head dim, activation), every tensor the
plan points into, and what it was built from: the layer's operand tensors (identity and version counter),
the LayerNorm eps values and the active ISA path. Each call compares those (~20 dict lookups and version
reads, a few microseconds) and builds a new snapshot when anything differs; the packs then come from the
shared cache, whose ``PackedWeight.current()`` re-packs a weight changed in place or packed for another ISA
path, so both paths always use the same packs. A snapshot is never modified after it is built, so a call
running in another thread keeps a consistent one. (Writes through ``.data`` bypass version counters, as for
the packs themselves.)
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from ... import _C
from ... import validation as V
from . import gemm as _cpu_gemm
from . import runtime
from .ops import round_format_args
from .runtime import ACT, DTYPE_CODE, ELEM, threads

_DTYPE = {d: DTYPE_CODE[d] for d in (torch.float32, torch.bfloat16)}  # the activation dtypes a plan takes
_CPU = torch.device("cpu")
# Float GEMM weight dtypes the cpu linear takes for each activation dtype (fp32 activations on a bf16
# weight: the int8 path's bf16 fallback).
_FLOAT_WEIGHTS = {torch.float32: (torch.float32, torch.bfloat16), torch.bfloat16: (torch.bfloat16,)}


@dataclass(frozen=True)
class Snapshot:
    isa: tuple        # (the kernel path the packs were made for: _cpu.kernel_path(), the attention dtype)
    operands: tuple   # the tensors it was built from (layer.operand_tensors(cpu=True)); held, so their ids stay unique
    ids: tuple        # their id()s
    versions: tuple   # their version counters at the time
    eps: tuple        # (ln1.eps, ln2.eps)
    plan: object      # _C.EncoderLayerPlan, or None: this layer's GEMM mix is not served in one call
    held: tuple       # the weight packs and fp32 copies the plan points into, kept alive with it

    @classmethod
    def of(cls, isa: tuple, operands: tuple, eps: tuple, plan=None, held: tuple = ()) -> "Snapshot":
        return cls(isa, operands, tuple(map(id, operands)), _versions(operands), eps, plan, held)

    def describes(self, isa: tuple, operands: tuple, eps: tuple) -> bool:
        return (isa == self.isa and eps == self.eps and tuple(map(id, operands)) == self.ids
                and _versions(operands) == self.versions)


@contextlib.contextmanager
def scratch_held():
    """The one-call layers run inside share the calling thread's C++ scratch block whatever its size.

    Without it a block over 64 MB is freed after each layer call (so a big batch does not pin memory), and
    the next layer's block comes fresh from mmap and is page-faulted in again (for DistilBERT on 8 x 512 tokens
    a ~110 MB block, every layer). FusedEncoder holds it around its layer loop; the block is freed when the
    loop ends."""
    _C.hold_layer_scratch(True)
    try:
        yield
    finally:
        _C.hold_layer_scratch(False)


def _versions(tensors: tuple) -> tuple:
    return tuple([t._version for t in tensors if t is not None])


def _fp32_vector(name: str, t: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.numel() not in (1, n):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected [{n}]")
    return runtime.f32(t, n)


def _set_gemm(plan, index: int, name: str, precision: str, operands: tuple, N: int, K: int, dtype: torch.dtype,
              held: list) -> bool:
    """Point GEMM ``index`` of a C++ layer plan at this GEMM's pack, fp32 bias, int8 scales and SmoothQuant
    factors (``operands``: its :meth:`PreparedLinear.cpu_operands`); False when the plan cannot serve it (the
    per-op path then runs, and raises where it must)."""
    int8 = precision == "int8"
    w, b, w_scale, inv = (*operands, None, None)[:4]
    if tuple(w.shape) != (N, K):
        raise ValueError(f"{name} GEMM weight has shape {tuple(w.shape)}; expected [{N}, {K}]")
    if not int8 and w.dtype not in _FLOAT_WEIGHTS[dtype]:
        return False
    # fp16: served only as fp16 values on the fp32 kernel (weight_fp16_in_fp32, fp32 activations)
    fp16_on_fp32 = precision == "fp16"
    if fp16_on_fp32 and (w.dtype != torch.float32 or dtype != torch.float32):
        return False
    pack = _cpu_gemm.cached_pack(w).current()
    bias32 = _fp32_vector(f"{name} bias", b, N)
    ws = _fp32_vector(f"{name} w_scale", w_scale, N)
    if inv is not None and (inv.dtype != torch.float32 or tuple(inv.shape) != (K,) or not inv.is_contiguous()):
        raise ValueError(f"{name} inv_smooth must be a contiguous float32 tensor [{K}]; got {inv.dtype} "
                         f"{tuple(inv.shape)}")
    plan.set_gemm(index, pack.kind, pack.ptr(), ELEM[w.dtype], N, K, runtime.ptr(bias32), runtime.ptr(ws),
                  runtime.ptr(inv))
    if fp16_on_fp32:
        plan.set_input_rounding(index, *round_format_args("fp16"))
    held += [pack, bias32, ws]
    return True


def _build(layer, isa: tuple, ops: tuple, eps: tuple) -> Snapshot:
    """A new snapshot of the BERT-block layer as it is now; packs come from the shared cache
    (PackedWeight.current() re-packs a stale one), so the per-op path and this one use the very same packs."""
    H, n, dtype = layer.hidden, layer.num_heads, layer.compute_dtype
    F = layer.up.out_features
    held = []

    def unserved():  # the per-op path decides (and raises where it must)
        return Snapshot.of(isa, ops, eps)

    if dtype not in _DTYPE:
        return unserved()
    plan = _C.EncoderLayerPlan(_DTYPE[dtype], H, n, F, ACT[layer.activation], float(layer.scale))
    shapes = ((3 * H, H), (H, H), (F, H), (H, F))
    pos = 0
    for i, name in enumerate(("qkv", "o", "up", "down")):
        precision = layer._modules[name].precision
        width = 4 if precision == "int8" else 2
        if not _set_gemm(plan, i, name, precision, ops[pos:pos + width], *shapes[i], dtype, held):
            return unserved()
        pos += width
    for j, (weight, bias) in enumerate((ops[pos:pos + 2], ops[pos + 2:pos + 4])):
        lw, lb = _fp32_vector(f"ln{j + 1} weight", weight, H), _fp32_vector(f"ln{j + 1} bias", bias, H)
        plan.set_layernorm(j, lw.data_ptr(), lb.data_ptr(), eps[j])
        held += [lw, lb]
    plan.attention_bf16 = layer.attention_dtype(_CPU) != dtype
    plan.check()
    return Snapshot.of(isa, ops, eps, plan, tuple(held))


# MobileBERT GEMM and NoNorm indices of _C.MobileBertLayerPlan (csrc/layer_bindings.cpp)
_MOBILEBERT_GEMMS = {"x_proj": 0, "attn_proj": 1, "o": 2, "up": 3, "down": 4, "out_bottleneck": 5}


def _mobilebert_gemm_index(name: str) -> int:
    if name in _MOBILEBERT_GEMMS:
        return _MOBILEBERT_GEMMS[name]
    j, part = name[3:].split("_")  # "ffn{j}_up" / "ffn{j}_down", j from 1
    return 6 + 2 * (int(j) - 1) + (part == "down")


def _build_mobilebert(layer, isa: tuple, ops: tuple, eps: tuple) -> Snapshot:
    """A new snapshot of a :class:`~bertsilicon.models.layers.FusedMobileBertLayer`: its GEMMs, NoNorms
    and the column offsets of each role in the concatenated GEMM outputs. NoNorm's gamma and beta go in as fp32
    holding the compute dtype's values (what the per-op path multiplies by). LayerNorm configs are not served."""
    parts, dtype = layer.parts, layer.compute_dtype
    if dtype not in _DTYPE or not parts.no_norm or len(parts.ffn) > _C.MOBILEBERT_MAX_STACKED_FFNS:
        return Snapshot.of(isa, ops, eps)
    F = parts.up.out_features
    plan = _C.MobileBertLayerPlan(_DTYPE[dtype], layer.hidden, layer.num_heads, layer.head_dim, F,
                                  ACT[layer.activation], float(layer.scale))
    held = []
    for name in layer.gemm_precision:
        g = layer._modules[name]
        if not _set_gemm(plan, _mobilebert_gemm_index(name), name, g.precision, g.cpu_operands(), g.out_features,
                         g.in_features, dtype, held):
            return Snapshot.of(isa, ops, eps)

    def offsets(pieces) -> dict:
        out, col = {}, 0
        for role, lin in pieces:
            out[role], col = col, col + lin.out_features
        return out

    xp, ap = offsets(parts.x_proj), offsets(parts.attn_proj)
    plan.set_roles(xp.get("input", -1), xp.get("shared", -1), xp.get("q", -1), xp.get("k", -1), xp.get("v", -1),
                   0 if parts.attn_source in (None, "input") else 1, ap.get("q", -1), ap.get("k", -1), ap.get("v", -1))
    norms = [(0, parts.norms.get("input")), (1, parts.norms.get("shared")), (2, parts.norm_o), (3, parts.norm_out),
             (4, parts.norm_ob)] + [(5 + j, norm) for j, (_, _, norm) in enumerate(parts.ffn)]
    for index, norm in norms:
        if norm is None:
            continue
        weight, bias = norm.weight, norm.bias
        n = weight.numel()
        gamma, beta = (_fp32_vector("NoNorm weight", t.detach().to(dtype), n) for t in (weight, bias))
        plan.set_nonorm(index, gamma.data_ptr(), beta.data_ptr())
        held += [gamma, beta]
    plan.check()
    return Snapshot.of(isa, ops, eps, plan, tuple(held))


# layer -> its latest Snapshot; kept outside the module so deepcopy / pickling of a model never meet it.
_SNAPSHOTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# The plan builders, by the name a fused layer class gives in ``CPU_PLAN``.
PLAN_BUILDERS = {"encoder_layer": _build, "mobilebert_layer": _build_mobilebert}


def snapshot(layer) -> Snapshot:
    """The layer's current snapshot, rebuilt when any weight, bias, scale or norm parameter was
    replaced or changed in place, or the kernel path changed (the packs are then re-packed)."""
    isa, ops = (runtime.kernel_path(), layer.attention_dtype(_CPU)), layer.operand_tensors(cpu=True)
    eps = layer.norm_eps()
    snap = _SNAPSHOTS.get(layer)
    if snap is None or not snap.describes(isa, ops, eps):
        snap = _SNAPSHOTS[layer] = PLAN_BUILDERS[layer.CPU_PLAN](layer, isa, ops, eps)
    return snap


def _cu_seqlens_here(cu_seqlens, T: int, max_seqlen, offsets_checked: bool) -> tuple[int, torch.Tensor]:
    """``(B, cu_seqlens contiguous)``: a CPU tensor, its values checked by ``validation.check_cu_seqlens`` unless the
    caller built or checked them already (``offsets_checked``; the C++ call trusts them)."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device.type != "cpu":
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}; expected a CPU tensor like x")
    if offsets_checked:
        V.cu_seqlens_arg(cu_seqlens, max_seqlen)
    else:
        V.check_cu_seqlens(cu_seqlens, T, max_seqlen)
    return cu_seqlens.numel() - 1, cu_seqlens.contiguous()


def _keep_mask(key_mask, B: int, L: int) -> Optional[torch.Tensor]:
    """uint8 [B, L] contiguous (nonzero = real key) from a key mask of any dtype (nonzero = real), or None;
    a contiguous bool mask (what FusedEncoder passes) is reinterpreted, not copied."""
    if key_mask is None:
        return None
    V.tensor("key_mask", key_mask, ndim=2)
    V.shape("key_mask", key_mask, (B, L), "([batch, length] of x, nonzero = real token)")
    if key_mask.device.type != "cpu":
        raise ValueError(f"key_mask is on {key_mask.device}; expected a CPU tensor like x")
    if key_mask.dtype == torch.bool and key_mask.is_contiguous():
        return key_mask.view(torch.uint8)
    return key_mask.ne(0).to(torch.uint8).contiguous()


def _check_x(layer, x: torch.Tensor, ndim: int, what: str) -> None:
    if x.dim() != ndim or x.shape[-1] != layer.hidden:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected {what} with hidden size {layer.hidden}")


def forward_packed(layer, snap: Snapshot, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   offsets_checked: bool = False) -> torch.Tensor:
    """``layer.forward_packed`` in one C++ call; x ``[T, H]`` contiguous CPU of the layer's compute dtype
    (the caller checked that and that the snapshot serves it)."""
    _check_x(layer, x, 2, "[T, H]")
    T = x.shape[0]
    B, cu = _cu_seqlens_here(cu_seqlens, T, max_seqlen, offsets_checked)
    out = torch.empty_like(x)
    if T:
        _C.encoder_layer_packed(snap.plan, x.data_ptr(), T, cu.data_ptr(), B, max_seqlen, out.data_ptr(),
                                threads())
    return out


def forward_padded(layer, snap: Snapshot, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``layer.forward_padded`` in one C++ call; x ``[B, L, H]`` (see :func:`forward_packed`)."""
    _check_x(layer, x, 3, "[B, L, H]")
    B, L = x.shape[:2]
    keep = _keep_mask(key_mask, B, L)
    out = torch.empty_like(x)
    if out.numel():
        _C.encoder_layer_padded(snap.plan, x.data_ptr(), B, L, 0 if keep is None else keep.data_ptr(),
                                out.data_ptr(), threads())
    return out
