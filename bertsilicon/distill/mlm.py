"""DistilBERT's triple loss as published (Sanh et al. 2019), for a teacher with a masked-LM head.

Per batch, the input is masked once (:func:`mask_tokens`) and both models read the SAME masked input:

    L = α_ce · τ² KL(softmax(z_T / τ) || softmax(z_S / τ))   over the real (non-padded) tokens   [B, S, V]
      + α_mlm · CE(z_S, original id)                            over the masked positions only
      + α_cos · (1 - cos(h_S, h_T))                              over the real tokens, last hidden states

(DistilBERT's defaults: α_ce = 5, α_mlm = 2, α_cos = 1, τ = 2; the KL is the soft-target cross-entropy
less the teacher's entropy, the same gradient.) Masking, BERT's rule: each real token that is not a
special token is selected with probability ``mlm_probability`` (0.15); a selected token becomes
``[MASK]`` with probability 0.8, a uniformly drawn vocabulary id with 0.1, and stays with 0.1. Padding
and special tokens ([CLS], [SEP], ...) are never selected.

The shipped all-MiniLM-L6-v2 is a sentence encoder without a masked-LM head, so this recipe needs a
teacher that has one (any ``BertForMaskedLM`` / ``DistilBertForMaskedLM``); the task form used with the
real MiniLM (soft targets on task logits + hidden cosine + hard labels) is the ``distilbert`` recipe of
:mod:`.recipes`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F

from . import losses as L
from .distiller import _SR_SEED_MASK, DistillConfig, Distiller

DISTILBERT_WEIGHTS = {"soft_target": 5.0, "mlm": 2.0, "hidden_cosine": 1.0}
MASK_RULE = (0.8, 0.1)  # of the selected tokens: fraction -> [MASK], fraction -> a random id (the rest kept)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids, mask_token_id: int,
                vocab_size: int, mlm_probability: float = 0.15, generator: Optional[torch.Generator] = None):
    """(masked input ids, labels), both ``[B, S]`` int64: BERT's 15% / 80-10-10 masking (module docstring).
    ``labels`` holds the original id at the selected positions and -100 elsewhere."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must be the same [batch, seq] shape")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability!r}")
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & candidates
    how = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(selected & (how < MASK_RULE[0]), torch.full_like(input_ids, mask_token_id), input_ids)
    to_random = selected & (how >= MASK_RULE[0]) & (how < MASK_RULE[0] + MASK_RULE[1])
    masked = torch.where(to_random, random_ids, masked)
    return masked, torch.where(selected, input_ids, torch.full_like(input_ids, -100))


def triple_loss(student_logits, teacher_logits, student_hidden, teacher_hidden, labels, attention_mask,
                weights: dict = DISTILBERT_WEIGHTS, temperature: float = 2.0, t2_scale: bool = True):
    """(weighted total, {name: unweighted value}) of the triple loss (module docstring): logits ``[B, S, V]``,
    last hidden states ``[B, S, D]``, ``labels [B, S]`` (-100: not masked), ``attention_mask [B, S]``.
    With no masked position in the batch the MLM term is 0 (not NaN)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the vocabularies must match")
    parts = {"soft_target": L.soft_target_loss(student_logits.float(), teacher_logits.float(), temperature,
                                                t2_scale=t2_scale, mask=attention_mask),
             "hidden_cosine": L.hidden_cosine_loss(student_hidden, teacher_hidden, attention_mask)}
    chosen = labels != -100
    flat = student_logits.float()[chosen]
    parts["mlm"] = F.cross_entropy(flat, labels[chosen]) if chosen.any() else flat.sum() * 0.0
    total = sum(weights.get(k, 0.0) * v for k, v in parts.items())
    return total, parts


class MaskedLMDistiller(Distiller):
    """:class:`~.distiller.Distiller` with DistilBERT's triple loss: ``weights`` maps ``soft_target``,
    ``mlm`` and ``hidden_cosine`` to α_ce, α_mlm, α_cos; ``config`` gives the rest (temperature, steps,
    layer map and initialisation from the teacher, ...; its ``losses`` are replaced). Teacher and
    student: masked-LM models (``.logits [B, S, V]``) of one vocabulary and, for the cosine, one width.
    The masking of step ``k`` is a pure function of ``(seed, k)``, so resuming stays exact."""

    def __init__(self, teacher, student, tokenizer, config: Optional[DistillConfig] = None,
                 weights: Optional[dict] = None, mlm_probability: float = 0.15, **kw):
        weights = dict(DISTILBERT_WEIGHTS if weights is None else weights)
        unknown = [k for k in weights if k not in DISTILBERT_WEIGHTS]
        if unknown:
            raise ValueError(f"weights {unknown} are unknown; expected some of {tuple(DISTILBERT_WEIGHTS)}")
        if teacher is None or isinstance(teacher, (list, tuple)):
            raise ValueError("MaskedLMDistiller needs one teacher with a masked-LM head")
        for role, m in (("teacher", teacher), ("student", student)):
            emb = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
            if emb is None:
                raise ValueError(f"the {role} ({type(m).__name__}) has no masked-LM head; use a *ForMaskedLM "
                                 "model (the shipped all-MiniLM-L6-v2 has none)")
        # both a layer-level and a logit-level entry: the base class then keeps a teacher pass every step
        cfg = replace(config or DistillConfig(), losses={"soft_target": weights.get("soft_target", 0.0),
                                                         "hidden_cosine": weights.get("hidden_cosine", 0.0)})
        super().__init__(teacher, student, tokenizer, cfg, **kw)
        self.weights, self.mlm_probability = weights, mlm_probability
        self._special = tokenizer.all_special_ids
        self._vocab = teacher.get_output_embeddings().weight.shape[0]
        if cfg.init_from_teacher:
            _copy_mlm_head(student, teacher)

    def masking_generator(self) -> torch.Generator:
        """The generator of this step's masking, seeded by ``(seed, step)``."""
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + self.step * 10_007 + 17) & _SR_SEED_MASK)

    def compute_loss(self, batch: dict, teacher_sentences=None, labels=None, teacher_logits=None):
        ids, mlm_labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self._special,
                                      self.tokenizer.mask_token_id, self._vocab, self.mlm_probability,
                                      self.masking_generator())
        masked = {**batch, "input_ids": ids}
        s_out = self.student(**masked, output_hidden_states=True)
        with torch.no_grad():
            t_out = self.teacher(**masked, output_hidden_states=True)
        total, parts = triple_loss(s_out.logits, t_out.logits, s_out.hidden_states[-1], t_out.hidden_states[-1],
                                   mlm_labels, batch["attention_mask"], self.weights, self.config.temperature,
                                   self.config.t2_scale)
        return total, {k: float(v.detach()) for k, v in parts.items()}


def _copy_mlm_head(student, teacher) -> None:
    """Copy the teacher's masked-LM head into the student when both are BERT heads of one width."""
    s_head, t_head = getattr(student, "cls", None), getattr(teacher, "cls", None)
    if s_head is None or t_head is None:
        return
    s_state, t_state = s_head.state_dict(), t_head.state_dict()
    if s_state.keys() == t_state.keys() and all(s_state[k].shape == t_state[k].shape for k in s_state):
        s_head.load_state_dict(t_state)


__all__ = ["DISTILBERT_WEIGHTS", "mask_tokens", "triple_loss", "MaskedLMDistiller"]
