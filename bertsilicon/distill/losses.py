"""The losses of the distillation papers, with the conventions the papers disagree on made explicit.

Shapes: ``B`` batch, ``S`` sequence, ``H`` heads, ``D`` hidden width, ``C`` classes, ``dk`` head width.
``mask`` is always a ``[B, S]`` tensor, 1 (or True) for a real token and 0 for padding. Every loss is
a differentiable function of the student's tensors (the teacher's are treated as constants, but
gradients flow into them too if they require grad) and works in float32 and float64.

=====================  ===================================================  ===============================
loss                    math                                                 paper
=====================  ===================================================  ===============================
soft_target_loss        KL(p_T^τ || p_S^τ) or CE(p_T^τ, p_S^τ), × τ² opt.   Hinton et al. 2015; DistilBERT
hidden_cosine_loss      mean over real tokens of 1 - cos(h_S, h_T)           DistilBERT (Sanh et al. 2019)
attention_score_mse     MSE of pre-softmax scores QKᵀ/√dk, real pairs only   TinyBERT (Jiao et al. 2020)
hidden_mse_loss         MSE(h_S W_h + b, h_T), W_h learned                   TinyBERT
embedding_mse_loss      hidden_mse_loss on the embedding-layer outputs       TinyBERT
patient_loss            Σ_layers ‖h_S/‖h_S‖ - h_T/‖h_T‖‖² on [CLS]         BERT-PKD (Sun et al. 2019)
attention_kl            KL(softmax(QKᵀ/√dk)_T || ..._S), last layer        MiniLM (Wang et al. 2020)
value_relation_kl       KL(softmax(VVᵀ/√dk)_T || ..._S), last layer        MiniLM
logit_mse               ‖z_T - z_S‖² per example                            Tang et al. 2019
similarity_kl           KL of in-batch cosine-similarity distributions      relational KD (Park et al. 2019)
contrastive_loss        InfoNCE between two views (not a distillation loss)  SimCSE (Gao et al. 2021), baseline
=====================  ===================================================  ===============================
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------------------------ #
# argument checks                                                                                     #
# ------------------------------------------------------------------------------------------------ #
def _float(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    _float(a_name, a)
    _float(b_name, b)
    if a.shape != b.shape:
        raise ValueError(f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; "
                         "they must match (use a projection for different widths)")


def _reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is unknown; expected one of {REDUCTIONS}")
    return reduction


def _token_weights(mask: Optional[torch.Tensor], lead_shape: torch.Size, name: str = "mask") -> Optional[torch.Tensor]:
    """``mask`` as a float tensor of ``lead_shape`` (the token dimensions), or None for "all tokens"."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected {tuple(lead_shape)} (1 = real token)")
    return (mask != 0).to(torch.float64 if mask.dtype == torch.float64 else torch.float32)


def _masked_mean(per_row: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``per_row`` over the rows ``weights`` selects; 0 (not NaN) when no row is selected."""
    if weights is None:
        return per_row.mean() if per_row.numel() else per_row.sum()
    w = weights.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1)


def _reduce(per_row: torch.Tensor, weights: Optional[torch.Tensor], reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row if weights is None else per_row * weights.to(per_row.dtype)
    if reduction == "sum":
        return (per_row if weights is None else per_row * weights.to(per_row.dtype)).sum()
    return _masked_mean(per_row, weights)


# ------------------------------------------------------------------------------------------------ #
# output-level losses                                                                                 #
# ------------------------------------------------------------------------------------------------ #
def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                     kind: str = "kl", t2_scale: bool = True, reduction: str = "mean",
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Hinton et al.'s soft-target loss on logits ``[..., C]`` at temperature ``τ``.

        p_T = softmax(z_T / τ),   log p_S = log_softmax(z_S / τ)
        kind="kl":  ℓ = Σ_c p_T,c (log p_T,c - log p_S,c)        (KL(p_T || p_S); 0 when they agree)
        kind="ce":  ℓ = -Σ_c p_T,c log p_S,c                      (= KL + H(p_T): same gradient, offset)
        t2_scale:   ℓ ← τ² ℓ

    Conventions of the papers: Hinton et al. (2015) multiply by τ² so that the gradient magnitude does
    not shrink as 1/τ² when τ changes; DistilBERT uses ``KLDivLoss(reduction="batchmean") * τ²``, i.e.
    ``kind="kl", t2_scale=True, reduction="mean"`` over the selected rows; TinyBERT's prediction-layer
    loss is the soft cross-entropy at τ = 1 without the τ² factor (``kind="ce", t2_scale=False``).

    ``reduction`` over the rows (every leading dimension): ``"mean"`` (over the rows ``mask`` selects,
    e.g. the masked-LM positions), ``"sum"`` or ``"none"`` (per-row losses, zero where masked out).
    ``mask``: optional ``[...]`` selection of rows, e.g. the [MASK] positions for MLM distillation.
    """
    _same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if kind not in ("kl", "ce"):
        raise ValueError(f"kind={kind!r} is unknown; expected 'kl' or 'ce'")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    reduction = _reduction(reduction)
    weights = _token_weights(mask, student_logits.shape[:-1])
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    p_t = log_p_t.exp()
    per_row = -(p_t * log_p_s).sum(-1)
    if kind == "kl":
        per_row = per_row + (p_t * log_p_t).sum(-1)
    if t2_scale:
        per_row = per_row * (temperature ** 2)
    return _reduce(per_row, weights, reduction)


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean",
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Tang et al. (2019)'s logit regression: ``ℓ = ‖z_T - z_S‖²₂`` per example (``[..., C]``), reduced
    over the rows. Note ``torch.nn.MSELoss()`` would also divide by ``C``: this is the paper's form."""
    _same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    reduction = _reduction(reduction)
    per_row = (student_logits - teacher_logits).pow(2).sum(-1)
    return _reduce(per_row, _token_weights(mask, student_logits.shape[:-1]), reduction)


# ------------------------------------------------------------------------------------------------ #
# hidden-state losses                                                                                 #
# ------------------------------------------------------------------------------------------------ #
def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DistilBERT's cosine loss: the mean over real tokens of ``1 - cos(h_S, h_T)``, ``[..., D]``.

    DistilBERT applies ``CosineEmbeddingLoss(target=1)`` to the last hidden states after selecting the
    non-padded tokens, which is exactly this with ``mask = attention_mask``. Also used on pooled
    sentence embeddings (``[B, D]``, no mask). A zero vector has cosine 0 (``F.cosine_similarity``'s
    eps) rather than NaN."""
    _same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    weights = _token_weights(mask, student_hidden.shape[:-1])
    per_token = 1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)
    return _masked_mean(per_token, weights)


def hidden_mse_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                    projection: Optional[torch.nn.Module] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TinyBERT's hidden-state loss ``MSE(h_S W_h + b, h_T)``: ``[..., D_S]`` and ``[..., D_T]``.

    ``projection``: the learned ``W_h`` (``torch.nn.Linear(D_S, D_T)``, see :class:`HiddenProjection`);
    needed when ``D_S != D_T``, optional otherwise. The mean is over the real tokens and the ``D_T``
    features. TinyBERT's code averages over every position, padding included; with ``mask=None`` this
    does the same."""
    _float("student_hidden", student_hidden)
    _float("teacher_hidden", teacher_hidden)
    if projection is not None:
        student_hidden = projection(student_hidden)
    _same_shape("student_hidden (after projection)", student_hidden, "teacher_hidden", teacher_hidden)
    weights = _token_weights(mask, student_hidden.shape[:-1])
    per_token = (student_hidden - teacher_hidden).pow(2).mean(-1)
    return _masked_mean(per_token, weights)


def embedding_mse_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor,
                       projection: Optional[torch.nn.Module] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TinyBERT's embedding-layer loss ``MSE(E_S W_e + b, E_T)``: :func:`hidden_mse_loss` applied to the
    outputs of the embedding layers (``hidden_states[0]``), with its own projection ``W_e``."""
    return hidden_mse_loss(student_embeddings, teacher_embeddings, projection, mask)


class HiddenProjection(torch.nn.Linear):
    """TinyBERT's learned ``W_h`` (``fit_dense``): ``D_S -> D_T`` with a bias, trained with the student."""

    def __init__(self, student_width: int, teacher_width: int, dtype: torch.dtype = torch.float32):
        super().__init__(student_width, teacher_width, bias=True, dtype=dtype)


def patient_loss(student_cls: Union[torch.Tensor, Sequence[torch.Tensor]],
                 teacher_cls: Union[torch.Tensor, Sequence[torch.Tensor]], reduction: str = "sum") -> torch.Tensor:
    """BERT-PKD's patient loss on the [CLS] states of the mapped layers, ``[B, L, D]`` (or lists of ``L``
    tensors ``[B, D]``):

        ℓ = mean_b Σ_l ‖ h_S,l / ‖h_S,l‖₂ - h_T,l / ‖h_T,l‖₂ ‖²₂

    ``reduction="sum"`` is the paper's formula (sum over layers and features, mean over the batch);
    ``"mean"`` averages over layers and features too (``F.mse_loss`` of the normalised states, as the
    authors' code does). Widths must match (PKD students keep the teacher's width)."""
    s = torch.stack(list(student_cls), 1) if not isinstance(student_cls, torch.Tensor) else student_cls
    t = torch.stack(list(teacher_cls), 1) if not isinstance(teacher_cls, torch.Tensor) else teacher_cls
    _same_shape("student_cls", s, "teacher_cls", t)
    if s.dim() != 3:
        raise ValueError(f"student_cls must be [batch, layers, hidden], got shape {tuple(s.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction={reduction!r} is unknown; expected 'sum' (paper) or 'mean' (authors' code)")
    diff = F.normalize(s, dim=-1) - F.normalize(t, dim=-1)
    sq = diff.pow(2)
    return sq.sum((1, 2)).mean() if reduction == "sum" else sq.mean()


# ------------------------------------------------------------------------------------------------ #
# attention losses                                                                                    #
# ------------------------------------------------------------------------------------------------ #
def _pair_weights(mask: Optional[torch.Tensor], scores: torch.Tensor) -> Optional[torch.Tensor]:
    """[B, 1, S, S] weights: 1 where both the query and the key are real tokens."""
    if mask is None:
        return None
    w = _token_weights(mask, (scores.shape[0], scores.shape[-1]))
    return (w[:, None, :, None] * w[:, None, None, :])


def attention_score_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TinyBERT's attention loss: MSE of the pre-softmax scores ``QKᵀ/√dk``, ``[B, H, S, S]``.

    Averaged over heads and over the (query, key) pairs where both tokens are real. The scores must
    be the raw ones, without the additive padding mask: TinyBERT zeroes the masked entries
    (``where(att <= -1e2, 0, att)``) and averages over every pair, so its padded query rows still count;
    here they do not. Student and teacher need the same number of heads."""
    _same_shape("student_scores", student_scores, "teacher_scores", teacher_scores)
    if student_scores.dim() != 4 or student_scores.shape[-1] != student_scores.shape[-2]:
        raise ValueError(f"scores must be [batch, heads, seq, seq], got {tuple(student_scores.shape)}")
    sq = (student_scores - teacher_scores).pow(2)
    w = _pair_weights(mask, student_scores)
    if w is None:
        return sq.mean()
    w = w.to(sq.dtype)
    return (sq * w).sum() / (w.sum() * sq.shape[1]).clamp_min(1)


def _relation_kl(student_rel: torch.Tensor, teacher_rel: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """mean over batch, heads and real queries of KL(softmax(teacher_rel) || softmax(student_rel)), the
    softmax over the real keys; ``[B, H, S, S]`` scaled relation scores."""
    if mask is not None:
        # padded keys get the dtype's most negative finite value: probability exactly 0 after the softmax,
        # and no -inf, so no 0 * inf = NaN in the gradients (a fully padded row stays finite: uniform)
        keys = _token_weights(mask, (student_rel.shape[0], student_rel.shape[-1]))[:, None, None, :] > 0
        student_rel = student_rel.masked_fill(~keys, torch.finfo(student_rel.dtype).min)
        teacher_rel = teacher_rel.masked_fill(~keys, torch.finfo(teacher_rel.dtype).min)
    log_s = F.log_softmax(student_rel, dim=-1)
    log_t = F.log_softmax(teacher_rel, dim=-1)
    per_query = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, H, S]
    if mask is None:
        return per_query.mean()
    queries = _token_weights(mask, (student_rel.shape[0], student_rel.shape[-1]))[:, None, :].to(per_query.dtype)
    per_query = per_query * queries
    return per_query.sum() / (queries.sum() * per_query.shape[1]).clamp_min(1)


def attention_kl(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MiniLM's self-attention distribution transfer on the last layer, ``[B, H, S, S]`` pre-softmax
    scores ``QKᵀ/√dk`` (student and teacher ``dk`` may differ; heads must match):

        ℓ = 1/(B·H·|real queries|) Σ_{b,h,i} KL( softmax_j(score_T)[i] || softmax_j(score_S)[i] )

    with the softmax over real keys only and padded queries left out."""
    _same_shape("student_scores", student_scores, "teacher_scores", teacher_scores)
    return _relation_kl(student_scores, teacher_scores, mask)


def value_relation_kl(student_values: torch.Tensor, teacher_values: torch.Tensor,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MiniLM's value-relation transfer, ``[B, H, S, dk]`` per-head values of the last layer (``dk``
    may differ between student and teacher; heads must match):

        VR = softmax(V Vᵀ / √dk),   ℓ = mean over b, h, real i of KL(VR_T[i] || VR_S[i])"""
    _float("student_values", student_values)
    _float("teacher_values", teacher_values)
    if student_values.dim() != 4 or student_values.shape[:3] != teacher_values.shape[:3]:
        raise ValueError(f"values must be [batch, heads, seq, head_dim] with matching batch, heads and seq; got "
                         f"{tuple(student_values.shape)} and {tuple(teacher_values.shape)}")

    def relation(v):
        return v @ v.transpose(-1, -2) / math.sqrt(v.shape[-1])

    return _relation_kl(relation(student_values), relation(teacher_values), mask)


def similarity_kl(student_emb: torch.Tensor, teacher_emb: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """In-batch relational distillation of sentence embeddings ``[B, D_S]``, ``[B, D_T]`` (widths may
    differ): each sentence's distribution over the OTHER sentences of the batch, by cosine at ``τ``,

        P_T[i] = softmax_{j≠i}(cos(t_i, t_j) / τ),   ℓ = mean_i KL(P_T[i] || P_S[i])

    — the teacher's neighbour structure, which retrieval and kNN use (in the spirit of relational KD,
    Park et al. 2019, and MiniLM's relation transfer applied across sentences instead of tokens)."""
    _float("student_emb", student_emb)
    _float("teacher_emb", teacher_emb)
    if student_emb.dim() != 2 or teacher_emb.dim() != 2 or student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(f"student_emb and teacher_emb must be [batch, width] with one batch size, got "
                         f"{tuple(student_emb.shape)} and {tuple(teacher_emb.shape)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if student_emb.shape[0] < 2:
        return student_emb.sum() * 0.0  # no other sentence to relate to

    def relation(e):
        e = F.normalize(e, dim=-1)
        sim = e @ e.T / temperature
        return sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), torch.finfo(sim.dtype).min)

    log_s = F.log_softmax(relation(student_emb), dim=-1)
    log_t = F.log_softmax(relation(teacher_emb), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


# ------------------------------------------------------------------------------------------------ #
# baseline objective (no teacher)                                                                      #
# ------------------------------------------------------------------------------------------------ #
def contrastive_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE between two views of the same ``[B, D]`` sentences (unsupervised SimCSE: the views are
    two forward passes with different dropout). Not a distillation loss: the baseline objective that
    trains a student on the same text without a teacher.

        ℓ = mean_i [ -log softmax_j(cos(a_i, b_j) / τ)[i] ]"""
    _same_shape("view_a", view_a, "view_b", view_b)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    sim = F.normalize(view_a, dim=-1) @ F.normalize(view_b, dim=-1).T / temperature
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


__all__ = ["soft_target_loss", "logit_mse", "hidden_cosine_loss", "hidden_mse_loss", "embedding_mse_loss",
           "HiddenProjection", "patient_loss", "attention_score_mse", "attention_kl", "value_relation_kl", "similarity_kl",
           "contrastive_loss", "REDUCTIONS"]
