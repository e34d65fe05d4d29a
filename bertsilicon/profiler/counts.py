"""Analytic operation counts of a BERT-family encoder, one :class:`Op` per op per layer.

Units and conventions (the profiler states these in every report):

* **MACs** are multiply-accumulates of matrix products: ``[M, K] @ [K, N]`` is ``M*K*N`` MACs.
  **Matmul FLOPs = 2 x MACs** (what ``torch.utils.flop_counter.FlopCounterMode`` reports for
  ``mm/addmm/bmm``). Attention's two batched matmuls (``Q K^T`` and ``P V``) are matmuls and are counted.
* **Other FLOPs** are element-wise work, counted per element as in :data:`FLOPS_PER_ELEMENT`
  (a transcendental — exp, erf, tanh, rsqrt — counts as one FLOP).
* Counts are over the tokens actually processed: ``B*S`` padded tokens, or the real tokens of an
  ``attention_mask`` (padding stripped once after the embeddings, as ``bertsilicon.optimize`` runs).
  Attention work scales with ``sum_i n_i^2`` (``n_i`` = tokens of sequence ``i``).

Element counts of the tensors each op reads and writes are recorded without a dtype; the roofline
(:mod:`.roofline`) prices them at the chosen precision. ``fused=False`` describes Hugging Face eager
execution (QKV as three GEMMs, scale/mask/softmax as separate kernels, the ``S x S`` score matrix in
memory, add and LayerNorm separate); ``fused=True`` describes ``bertsilicon.optimize`` (one QKV GEMM,
a fused attention kernel that never writes the scores, bias+GELU in the FFN-up epilogue, fused
add+LayerNorm). ``fused_attention=True`` alone describes HF with ``attn_implementation="sdpa"``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

from .arch import Arch

FLOPS_PER_ELEMENT = {
    "add": 1,        # residual add, bias add, embedding sum, attention-mask add
    "scale": 1,      # scores * 1/sqrt(d)
    "softmax": 5,    # max, subtract, exp, sum, divide
    "layernorm": 8,  # mean (1), x-mean (1), square+sum (2), rsqrt-scale (1), *gamma (1), +beta (1), +1 amortised
    "nonorm": 2,     # MobileBERT NoNorm: x * w + b
    "gelu": 8,       # 0.5 * x * (1 + erf(x / sqrt 2)): mul, div, erf, add, mul, mul (+2 for the erf polynomial)
    "relu": 1,
    "tanh": 1,
}

GATHER, GEMM, ATTENTION, ELEMENTWISE = "gather", "gemm", "attention", "elementwise"


@dataclass
class Op:
    """One op of one layer. Element counts; bytes are priced later at a precision."""
    layer: str
    op: str
    kind: str                    # gather | gemm | attention | elementwise
    macs: int = 0                # matmul multiply-accumulates
    other_flops: int = 0         # element-wise FLOPs (bias, softmax, LayerNorm, GELU, ...)
    params: int = 0              # parameters owned by this op
    weight_elems: int = 0        # matmul weight elements (stored at the weight precision)
    vector_param_elems: int = 0  # biases, LayerNorm gamma/beta (stored in float)
    table_elems_read: int = 0    # embedding-table rows gathered (elements)
    gemm_in_elems: int = 0       # activation elements read as GEMM inputs (int8 when precision is int8)
    act_in_elems: int = 0        # other activation elements read (float)
    act_out_elems: int = 0       # activation elements written (float)
    kernels: int = 0             # kernel launches / framework dispatches
    gemm_kernels: int = 0        # of which matrix products (sets the GEMM size used for a rate curve)
    tokens: int = 0              # tokens this op ran on
    group: str = ""              # "attention": scores/softmax/context run as one fused kernel

    @property
    def matmul_flops(self) -> int:
        return 2 * self.macs

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.other_flops

    def to_dict(self) -> dict:
        return asdict(self)


def _gemm(layer, op, tokens, k, n, launches=1, copies=1) -> Op:
    """``copies`` linear layers ``[tokens, k] @ [k, n] + bias`` on the same input (Q, K, V) in ``launches``
    kernels; each launch reads the input once (eager QKV: 3 launches; fused QKV: 1)."""
    return Op(layer, op, GEMM, macs=copies * tokens * k * n, other_flops=copies * tokens * n,
              params=copies * (k * n + n), weight_elems=copies * k * n, vector_param_elems=copies * n,
              gemm_in_elems=launches * tokens * k, act_out_elems=copies * tokens * n, kernels=launches,
              gemm_kernels=launches, tokens=tokens)


_SUMMED = ("macs", "other_flops", "params", "weight_elems", "vector_param_elems", "table_elems_read", "gemm_in_elems",
           "act_in_elems", "act_out_elems", "kernels", "gemm_kernels")


def _merge(into: Op, other: Op) -> Op:
    """Add ``other``'s counts to ``into`` (two products reported as one row, e.g. MobileBERT's Q/K + V)."""
    for f in _SUMMED:
        setattr(into, f, getattr(into, f) + getattr(other, f))
    return into


def _add_norm(layer, op, tokens, width, norm, fused) -> Op:
    """residual add then LayerNorm/NoNorm over ``width``: eager = 2 kernels (add, norm)."""
    n = tokens * width
    return Op(layer, op, ELEMENTWISE, other_flops=n * (FLOPS_PER_ELEMENT["add"] + FLOPS_PER_ELEMENT[norm]),
              params=2 * width, vector_param_elems=2 * width,
              act_in_elems=2 * n if fused else 3 * n, act_out_elems=n if fused else 2 * n,
              kernels=1 if fused else 2, tokens=tokens)


def _act(layer, tokens, width, act, fused) -> Op:
    n = tokens * width
    name = act if act in FLOPS_PER_ELEMENT else "gelu"
    if fused:  # applied in the FFN-up GEMM epilogue: no extra traffic, no extra launch
        return Op(layer, act, ELEMENTWISE, other_flops=n * FLOPS_PER_ELEMENT[name], tokens=tokens)
    return Op(layer, act, ELEMENTWISE, other_flops=n * FLOPS_PER_ELEMENT[name], act_in_elems=n, act_out_elems=n,
              kernels=1, tokens=tokens)


def _embeddings(a: Arch, T: int, fused: bool) -> List[Op]:
    tables = 3 if a.type_vocab else 2
    H, E = a.hidden, a.embedding_size
    # W: width of the position / token-type tables, their adds and the norm. ELECTRA-small: all E wide, then a
    # dense E -> H (embeddings_project); MobileBERT: only the word table is E wide, (trigram concat ->) dense to H
    # before the adds.
    W = E if a.embedding_project else H
    params = a.vocab * E + a.max_positions * W + a.type_vocab * W + 2 * W
    norm = "nonorm" if a.norm == "nonorm" else "layernorm"
    table_read = T * E + (tables - 1) * T * W
    out = []
    if a.embedding_project:
        out.append(_gemm("embeddings", "embeddings project", T, E, H))
    elif a.trigram or E != H:
        k = 3 * E if a.trigram else E
        emb_t = _gemm("embeddings", "embedding transformation", T, k, H)
        if not fused:
            emb_t.act_in_elems += T * E + T * k   # pad/cat of the shifted copies: read E, write 3E, read back
            emb_t.act_out_elems += T * k
            emb_t.kernels += 3
        out.append(emb_t)
    elif a.family == "mobilebert":  # HF builds embedding_transformation even when forward skips it
        params += (3 * E if a.trigram else E) * H + H
    adds = tables - 1
    ew = T * W * (adds * FLOPS_PER_ELEMENT["add"] + FLOPS_PER_ELEMENT[norm])
    if fused:
        act_in, act_out, kernels = 0, T * W, 1
    else:  # gathers write their rows; each add reads 2 writes 1; norm reads 1 writes 1
        act_in = T * W * (2 * adds + 1)
        act_out = T * (E + (tables - 1) * W) + T * W * (adds + 1)
        kernels = tables + adds + 1
    gather = Op("embeddings", "embeddings (gather + add + norm)", GATHER, other_flops=ew, params=params,
                vector_param_elems=2 * W, table_elems_read=table_read, act_in_elems=act_in, act_out_elems=act_out,
                kernels=kernels, tokens=T)
    return [gather, *out]


def _attention(layer: str, a: Arch, T: int, pairs: int, fused: bool) -> List[Op]:
    """scores = Q K^T * scale + mask; P = softmax(scores); ctx = P V. ``pairs`` = sum_i n_i^2."""
    A, d, W = a.heads, a.head_dim, a.inner
    sp = A * pairs  # score elements
    if fused:  # one kernel (flash-style): reads Q, K, V, writes the context; the scores stay on chip
        g = "attention"
        scores = Op(layer, "attention scores", ATTENTION, macs=sp * d, other_flops=2 * sp, act_in_elems=2 * T * W,
                    kernels=1, gemm_kernels=1, tokens=T, group=g)
        softmax = Op(layer, "softmax", ELEMENTWISE, other_flops=FLOPS_PER_ELEMENT["softmax"] * sp, tokens=T, group=g)
        context = Op(layer, "context", ATTENTION, macs=sp * d, act_in_elems=T * W, act_out_elems=T * W, tokens=T,
                     group=g)
    else:  # matmul writes S; *scale reads/writes; +mask reads/writes; softmax reads/writes; PV; transpose copy
        scores = Op(layer, "attention scores", ATTENTION, macs=sp * d, other_flops=2 * sp,
                    act_in_elems=2 * T * W + 2 * sp, act_out_elems=3 * sp, kernels=3, gemm_kernels=1, tokens=T)
        softmax = Op(layer, "softmax", ELEMENTWISE, other_flops=FLOPS_PER_ELEMENT["softmax"] * sp,
                     act_in_elems=sp, act_out_elems=sp, kernels=1, tokens=T)
        context = Op(layer, "context", ATTENTION, macs=sp * d, act_in_elems=sp + 2 * T * W, act_out_elems=2 * T * W,
                     kernels=2, gemm_kernels=1, tokens=T)
    return [scores, softmax, context]


def _layer(i: int, a: Arch, T: int, pairs: int, fused: bool, fused_attention: bool) -> List[Op]:
    L = f"layer {i}"
    H, W, F = a.hidden, a.inner, a.intermediate
    norm = "nonorm" if a.norm == "nonorm" else "layernorm"
    ops: List[Op] = []
    if a.bottleneck:
        bn = _gemm(L, "bottleneck in", T, H, W)
        if a.kq_shared_bottleneck and not a.bottleneck_attention:  # a second bottleneck feeds Q and K
            _merge(bn, _gemm(L, "bottleneck in", T, H, W))
        elif a.kq_shared_bottleneck:  # HF builds it even when bottleneck attention bypasses it
            bn.params += H * W + W + 2 * W
        n_bn = bn.act_out_elems
        bn.other_flops += n_bn * FLOPS_PER_ELEMENT[norm]
        bn.params += 2 * n_bn // T
        bn.vector_param_elems += 2 * n_bn // T
        if not fused:
            bn.act_in_elems += n_bn
            bn.act_out_elems += n_bn
            bn.kernels += bn.gemm_kernels
        ops.append(bn)
        # Q and K read the (shared) bottleneck; V reads the layer input unless bottleneck attention
        q_in = W
        v_in = W if a.bottleneck_attention else H
        if not a.kq_shared_bottleneck and not a.bottleneck_attention:
            q_in = H
    else:
        q_in = v_in = H
    if q_in == v_in:
        qkv = _gemm(L, "qkv", T, q_in, W, launches=1 if fused else 3, copies=3)
    else:  # MobileBERT: Q, K from the bottleneck, V from the layer input
        qkv = _merge(_gemm(L, "qkv", T, q_in, W, launches=1 if fused else 2, copies=2), _gemm(L, "qkv", T, v_in, W))
    ops.append(qkv)
    ops += _attention(L, a, T, pairs, fused or fused_attention)
    ops.append(_gemm(L, "output projection", T, W, W))
    ops.append(_add_norm(L, "add+norm (attention)" if norm == "nonorm" else "add+layernorm (attention)", T, W,
                         norm, fused))
    ffn_names = [f"ffn{j + 1}" for j in range(a.num_ffn - 1)] + ["ffn"]
    for j, ffn in enumerate(ffn_names):
        ops.append(_gemm(L, f"{ffn} up", T, W, F))
        act = _act(L, T, F, a.act, fused)
        act.op = f"{a.act}" if a.num_ffn == 1 else f"{ffn} {a.act}"
        ops.append(act)
        ops.append(_gemm(L, f"{ffn} down", T, F, W))
        nm = "add+norm" if norm == "nonorm" else "add+layernorm"
        ops.append(_add_norm(L, f"{nm} ({ffn})" if a.num_ffn > 1 else f"{nm} (ffn)", T, W, norm, fused))
    if a.bottleneck:
        ops.append(_gemm(L, "bottleneck out", T, W, H))
        ops.append(_add_norm(L, "add+norm (bottleneck out)", T, H, norm, fused))
    return ops


def count_ops(a: Arch, batch_size: int, seq_len: int, lengths: Optional[Sequence[int]] = None,
              fused: bool = False, head: Optional[Sequence[tuple]] = None,
              fused_attention: bool = False) -> List[Op]:
    """Every op of a forward pass of ``a`` on ``batch_size`` sequences of ``seq_len`` tokens.

    ``lengths``: real tokens per sequence (from an attention mask); ``None`` means all ``seq_len``.
    ``head``: ``(name, in_features, out_features)`` linear layers applied to the pooled output (one token
    per sequence), e.g. a sequence-classification head. ``fused_attention``: the attention of an otherwise
    eager model runs as one kernel (PyTorch SDPA / flash attention: scores never written to memory).
    """
    if lengths is None:
        lengths = [seq_len] * batch_size
    T = int(sum(lengths))
    pairs = int(sum(n * n for n in lengths))
    ops = _embeddings(a, T, fused)
    for i in range(a.layers):
        ops += _layer(i, a, T, pairs, fused, fused_attention)
    B = batch_size
    if a.pooler:  # dense + tanh on the first token of every sequence
        p = _gemm("pooler", "pooler", B, a.hidden, a.hidden)
        p.other_flops += B * a.hidden * FLOPS_PER_ELEMENT["tanh"]
        if not fused:
            p.act_in_elems += B * a.hidden
            p.act_out_elems += B * a.hidden
            p.kernels += 1
        ops.append(p)
    for name, k, n in head or ():
        ops.append(_gemm("head", name, B, k, n))
    return ops


def layer_names(ops: Sequence[Op]) -> List[str]:
    seen = []
    for o in ops:
        if o.layer not in seen:
            seen.append(o.layer)
    return seen
