"""Attention internals of the student and teacher layers, for the attention losses, across families.

``qkv(layer, h)``: the query, key and value projections ``[B, S, heads x dk]`` a layer computes from the
hidden state ``h [B, S, D]`` that enters it, and its head count:

* BERT (``BertLayer``): ``attention.self.query / key / value`` of ``h``;
* MobileBERT (``MobileBertLayer``): Q and K from the bottleneck's shared input (width ``true_hidden_size``),
  V from the bottleneck's value input — not from ``h``, whose width (512) is not the attention's (128);
* DistilBERT (``TransformerBlock``): ``attention.q_lin / k_lin / v_lin`` of ``h``.

``heads(layer, h, relation_heads)``: scores ``QKᵀ/√d_r`` ``[B, R, S, S]`` (no padding mask) and values
``[B, R, S, d_v]``, with the projections split into ``R`` heads. ``R`` defaults to the layer's own heads;
students and teachers with different head counts use a common ``R`` (MiniLM-v2's relation heads: the
concatenated heads re-split into ``R`` equal parts, ``d_r = heads x dk / R``), see :func:`common_heads`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def qkv(layer, h: torch.Tensor):
    """(q, k, v [B, S, all_heads], heads) of one transformer layer whose input is ``h``."""
    if hasattr(layer, "bottleneck") or hasattr(layer, "use_bottleneck"):  # MobileBERT
        q_in, k_in, v_in, _ = layer.bottleneck(h) if layer.use_bottleneck else (h, h, h, h)
        sa = layer.attention.self
        return sa.query(q_in), sa.key(k_in), sa.value(v_in), sa.num_attention_heads
    att = layer.attention
    if hasattr(att, "q_lin"):  # DistilBERT
        return att.q_lin(h), att.k_lin(h), att.v_lin(h), att.n_heads
    if hasattr(att, "self") and hasattr(att.self, "query"):  # BERT
        sa = att.self
        return sa.query(h), sa.key(h), sa.value(h), sa.num_attention_heads
    raise TypeError(f"{type(layer).__name__} is not a BERT, MobileBERT or DistilBERT layer: no attention projections")


def num_heads(layer) -> int:
    att = layer.attention
    return att.n_heads if hasattr(att, "n_heads") else att.self.num_attention_heads


def attention_width(layer) -> int:
    """heads x dk of a layer's queries and keys."""
    att = layer.attention
    return att.q_lin.out_features if hasattr(att, "q_lin") else att.self.query.out_features


def common_heads(student_layer, teacher_layer, requested: Optional[int] = None) -> int:
    """The number of (relation) heads both layers are split into: ``requested``, else their shared head count,
    else the teacher's when it divides the student's attention width, else the greatest common divisor."""
    widths = attention_width(student_layer), attention_width(teacher_layer)
    s, t = num_heads(student_layer), num_heads(teacher_layer)
    r = requested or (s if s == t else t if widths[0] % t == 0 else math.gcd(s, t))
    if widths[0] % r or widths[1] % r:
        raise ValueError(f"relation_heads={r} must divide the attention widths of student ({widths[0]}) and teacher "
                         f"({widths[1]})")
    return r


def heads(layer, h: torch.Tensor, relation_heads: Optional[int] = None):
    """(scores [B, R, S, S] = QKᵀ/√d_r without the padding mask, values [B, R, S, d_v])."""
    q, k, v, nh = qkv(layer, h)
    r = relation_heads or nh
    B, S, _ = h.shape

    def split(x):
        return x.reshape(B, S, r, x.shape[-1] // r).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), v


__all__ = ["qkv", "heads", "common_heads", "num_heads", "attention_width"]
