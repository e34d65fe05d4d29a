"""Flash-attention forward: one kernel for the padded batch (key-padding mask) and for packed tokens
(``cu_seqlens``), chosen by the constexpr ``VARLEN``.

    out[b, h, i] = sum_j softmax_j(q[b,h,i] . k[b,h,j] * scale, keys j with mask[b, j] == 0 excluded) v[b,h,j]

Padded: q ``[B, H, Lq, D]``, k/v ``[B, H, Lk, D]`` (any strides, last dim contiguous: the model wrapper
passes ``[B, L, H, D].transpose(1, 2)`` views), mask ``[B, Lk]`` of any dtype (nonzero = real token).
Packed: q/k/v ``[T, H, D]``, sequence b = tokens ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32), attending only
to itself. out is contiguous, q's dtype (fp32, bf16, fp16); D <= 128, padded inside the kernel to
``BLOCK_D`` = next power of two (26 -> 32) with masked loads.

Algorithm (FlashAttention-2 forward): one program owns BLOCK_M query rows of one (b, h); it walks the
keys in BLOCK_N blocks keeping the running max m, the running sum l and the unnormalised output acc in
fp32 registers; scores are scaled by ``scale * log2(e)`` so the softmax uses exp2. A fully padded row has
m = -inf throughout: the exponent base is then taken as 0 (every p = 0) and the row is written as zeros
(the reference's convention); a row whose real keys all score -inf (an inf in q) ends the same way but
is written as NaN, the reference's softmax over them. With a mask, a first pass over the mask row finds the last real key and
the key loop stops there: trailing padding (the usual right-padded batch) costs no matrix work, so a
ragged batch does ~sum(l_b) * L instead of B * L^2 score blocks. NaN in a row of q (or in a real key)
propagates (l is then NaN, not 0); padded keys are masked out of the v loads too (NaN / inf there never
reach the output, as the reference).
p is rounded to v's dtype for the second matrix product (as every flash kernel does); fp32 operands
use ``input_precision`` from :func:`bertsilicon.kernels._common.fp32_dot_precision`.

Cost per (b, h): FLOPs = 4 Lq Lk D (two matrix products; exp and the rescale are O(Lq Lk));
fewest bytes = (2 Lq + 2 Lk) D * itemsize (q, k, v read once, out written once) + B Lk mask bytes.
At L = 128, D = 64 that is 64 FLOP/byte in fp16: matrix-unit bound on paper, but short rows make the
kernel latency bound in practice; see bench/results/gpu/NOTES.md.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (autotune_configs, cdiv, fma_dots, fp32_dot_precision, hardware_class, matrix_unit_dots, mma,
                      next_pow2, token_bucket, upcast_bf16_dots)

_LOG2E = 1.4426950408889634


def _configs(kind: Optional[str] = None, fma: bool = False) -> list[triton.Config]:
    """Autotuning configs per hardware class (``BLOCK_M, BLOCK_N, warps, stages``); ``fma``: dots on the
    FMA units (:func:`bertsilicon.kernels._common.fma_dots`): fp32 operands with ieee dots on any GPU class,
    every dtype on Turing, which has its own list."""
    kind = kind or hardware_class()
    if kind == "interpreter":
        table = [(32, 32, 4, 1)]
    elif not matrix_unit_dots(kind):  # Turing: fp16 / bf16 dots are FFMA too, and fp16 operands spill where fp32
        # ones do not (sm_75 SASS, triton 3.6 and 3.9): 64x32 / 8 warps has no LDL/STL at D 32 and 64 in any
        # dtype, 32x16 at D 128; no cp.async before sm_80, so two stages
        table = [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2), (64, 16, 4, 2)]
    elif fma:  # sm_90 SASS, triton 3.6 and 3.9: at every D (32/64/128) at least one of these has no LDL/STL
        # (32x32 at D 128), where the matrix-unit list's 128-row tiles spill ~5000 with 3.6 (sass_sm90.md)
        table = [(64, 32, 8, 2), (64, 32, 8, 3), (32, 32, 4, 2), (64, 16, 4, 2)]
    elif kind == "hopper":
        # (128, 64) with 4 warps spills at D 128 (sm_90 SASS, triton 3.9): 8 warps for 128-row tiles
        table = [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)]
    else:  # Ampere. (128, 64) with 4 warps spills at D 128 and in fp32-tf32 at D 64 (sm_80 SASS, triton 3.6 and 3.9)
        table = [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in table]


@triton.jit(do_not_specialize=["Lq", "Lk"])
def _attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr, cu_ptr,
                          stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                          stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol, stride_mb,
                          H, Lq, Lk, D, qk_scale,
                          L_BUCKET: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr,
                          DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    if VARLEN:  # packed tokens: the batch stride is unused; sequence b starts at token cu[b]
        first = tl.load(cu_ptr + b).to(tl.int64)
        seq_q = (tl.load(cu_ptr + b + 1) - tl.load(cu_ptr + b)).to(tl.int32)
        seq_k = seq_q
        q_base = q_ptr + first * stride_ql + h * stride_qh
        k_base = k_ptr + first * stride_kl + h * stride_kh
        v_base = v_ptr + first * stride_vl + h * stride_vh
        o_base = o_ptr + first * stride_ol + h * stride_oh
    else:
        seq_q = Lq
        seq_k = Lk
        b64 = b.to(tl.int64)
        q_base = q_ptr + b64 * stride_qb + h * stride_qh
        k_base = k_ptr + b64 * stride_kb + h * stride_kh
        v_base = v_ptr + b64 * stride_vb + h * stride_vh
        o_base = o_ptr + b64 * stride_ob + h * stride_oh
    if pid_m * BLOCK_M >= seq_q:  # a short packed sequence: nothing left for this program
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :],
                mask=(offs_m[:, None] < seq_q) & d_ok[None, :], other=0.0)

    kv_end = seq_k
    if HAS_MASK:  # trailing padding is skipped: the key loop stops after the last real key of row b
        kv_end = 0
        for start_n in range(0, seq_k, BLOCK_N):
            keys = start_n + offs_n
            real = tl.load(mask_ptr + b * stride_mb + keys, mask=keys < seq_k, other=0) != 0
            kv_end = tl.maximum(kv_end, tl.max(tl.where(real, keys + 1, 0), axis=0))

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, kv_end, BLOCK_N):
        keys = start_n + offs_n
        key_ok = keys < seq_k
        kt = tl.load(k_base + keys[None, :] * stride_kl + offs_d[:, None],
                     mask=key_ok[None, :] & d_ok[:, None], other=0.0)                 # [BLOCK_D, BLOCK_N]
        s = mma(q, kt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_PRECISION, UPCAST) * qk_scale  # log2 domain
        if HAS_MASK:  # holes before kv_end (a mask need not be a prefix)
            key_ok = key_ok & (tl.load(mask_ptr + b * stride_mb + keys, mask=key_ok, other=0) != 0)
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)   # all keys so far padded: every p = 0
        alpha = tl.math.exp2(m_i - base)
        p = tl.math.exp2(s - base[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # padded keys read as 0: p = 0 there, and 0 * NaN / inf in a padded v would be NaN
        v = tl.load(v_base + keys[:, None] * stride_vl + offs_d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)                  # [BLOCK_N, BLOCK_D]
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST)
        m_i = m_new

    # l = 0: no real key (a fully padded row: zeros, the reference's convention), or real keys whose
    # scores are all -inf (an inf in q): the softmax over them is 0 / 0, NaN as in the reference
    no_keys = l_i == 0.0
    empty = tl.where(kv_end > 0, float("nan"), 0.0)
    out = tl.where(no_keys[:, None], empty, acc / tl.where(no_keys, 1.0, l_i)[:, None])
    tl.store(o_base + offs_m[:, None] * stride_ol + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < seq_q) & d_ok[None, :])


_KEY = ["L_BUCKET", "BLOCK_D", "HAS_MASK", "VARLEN"]
_attention_mma = triton.autotune(configs=autotune_configs(_configs()), key=_KEY)(_attention_fwd_kernel)
_attention_fma = triton.autotune(configs=autotune_configs(_configs(fma=True)), key=_KEY)(_attention_fwd_kernel)


def _dot_precision(dtype: torch.dtype) -> str:
    return fp32_dot_precision() if dtype == torch.float32 else "tf32"  # ignored for 16-bit operands


def _autotuned(dtype: torch.dtype, precision: str):
    return _attention_fma if fma_dots(dtype, precision) else _attention_mma


def _scale(scale: Optional[float], D: int) -> float:
    return (D ** -0.5 if scale is None else float(scale)) * _LOG2E


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor],
              scale: Optional[float]) -> torch.Tensor:
    """Launcher, padded batch: q ``[B, H, Lq, D]``, k/v ``[B, H, Lk, D]`` (last dim contiguous),
    mask ``[B, Lk]`` or None; returns a contiguous ``[B, H, Lq, D]``."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if Lk == 0:  # no keys at all: every row is "fully padded"
        return out.zero_()
    mask = attention_mask
    if mask is not None and mask.stride(-1) != 1:
        mask = mask.contiguous()
    grid = lambda meta: (cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    precision = _dot_precision(q.dtype)
    _autotuned(q.dtype, precision)[grid](
        q, k, v, out, mask if mask is not None else q, q,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        mask.stride(0) if mask is not None else 0,
        H, Lq, Lk, D, _scale(scale, D),
        L_BUCKET=token_bucket(max(Lq, Lk)), HAS_MASK=mask is not None, VARLEN=False,
        DOT_PRECISION=precision, UPCAST=upcast_bf16_dots(q.dtype), BLOCK_D=max(16, next_pow2(D)))
    return out


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, scale: Optional[float]) -> torch.Tensor:
    """Launcher, packed tokens: q/k/v ``[T, H, D]`` (last dim contiguous), cu_seqlens int32 ``[B + 1]``;
    returns a contiguous ``[T, H, D]``. The grid covers ``max_seqlen`` query rows per sequence."""
    T, H, D = q.shape
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    B = cu_seqlens.numel() - 1
    if out.numel() == 0 or B <= 0 or max_seqlen == 0:
        return out
    cu = cu_seqlens.contiguous()
    grid = lambda meta: (cdiv(max_seqlen, meta["BLOCK_M"]), B * H)  # noqa: E731
    precision = _dot_precision(q.dtype)
    _autotuned(q.dtype, precision)[grid](
        q, k, v, out, cu, cu,
        0, q.stride(1), q.stride(0), 0, k.stride(1), k.stride(0),
        0, v.stride(1), v.stride(0), 0, out.stride(1), out.stride(0), 0,
        H, max_seqlen, max_seqlen, D, _scale(scale, D),
        L_BUCKET=token_bucket(max_seqlen), HAS_MASK=False, VARLEN=True,
        DOT_PRECISION=precision, UPCAST=upcast_bf16_dots(q.dtype), BLOCK_D=max(16, next_pow2(D)))
    return out


__all__ = ["attention", "attention_varlen"]
