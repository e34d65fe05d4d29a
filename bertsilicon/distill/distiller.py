"""The distiller: trains a student against a teacher on raw text with any weighted mix of the papers' losses.

    loss = Σ_name weight[name] · loss_name(student, teacher, batch)

Loss names (``DistillConfig.losses``), each computed from one forward pass of each model
(``output_hidden_states=True``); attention scores and values are recomputed from the hidden state that
enters the layer (``Q = h W_q + b_q``, ...), so any attention backend (SDPA included) works:

=================  =========================================================================  =============
name                what                                                                       layers
=================  =========================================================================  =============
sentence_mse        MSE of mean-pooled sentence embeddings (Reimers & Gurevych 2020)          output
sentence_cosine     1 - cos of mean-pooled sentence embeddings                                 output
sentence_relation   KL of in-batch similarity distributions (``relation_temperature``)         output
hidden_cosine       DistilBERT's masked cosine on the last hidden states                       last
hidden_mse          TinyBERT's MSE(h_S W_h, h_T) summed over the mapped layers                 layer map
embedding_mse       TinyBERT's MSE(E_S W_e, E_T) on the embedding outputs                      embeddings
attention_mse       TinyBERT's pre-softmax score MSE summed over the mapped layers            layer map
attention_kl        MiniLM's attention-distribution KL                                         last (mapped)
value_kl            MiniLM's value-relation KL                                                 last (mapped)
patient             BERT-PKD's loss on normalised [CLS] states of the mapped layers            layer map
soft_target         Hinton's KL at ``temperature`` (models with ``.logits``)                   output
logit_mse           Tang et al.'s logit MSE (models with ``.logits``)                          output
label_ce            cross-entropy with the hard labels given to ``fit(texts, labels=...)``      output
simcse              unsupervised SimCSE (no teacher): the non-distillation baseline            output
=================  =========================================================================  =============

Precision of the student's weights: ``"fp32"``; ``"bf16-nearest"`` / ``"bf16-stochastic"`` keep the
weights in bf16 values only (no fp32 master copy): after every optimizer step each parameter is
rounded to bf16 with :func:`bertsilicon.ops.round_to` (Philox stochastic rounding keyed on
``(seed, step, parameter index)``, bit-identical on every backend), so updates smaller than half a
bf16 ulp survive in expectation instead of being rounded away.

Checkpoints are safetensors files holding the student, the projections, the AdamW state and the RNG
state; :meth:`Distiller.fit` with ``resume_from`` continues bit-identically (the batch order is a pure
function of ``(seed, step)``).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..models.eval import mean_pool
from . import losses as L
from .checkpoint import load_checkpoint, save_checkpoint
from .labels import MISSING, label_cross_entropy, label_tensor
from .attention import common_heads, heads
from .layer_maps import bert_body, init_student_from_teacher, layer_map, transformer_layers

SENTENCE_LOSSES = ("sentence_mse", "sentence_cosine", "sentence_relation", "simcse")
LAYER_LOSSES = ("hidden_cosine", "hidden_mse", "embedding_mse", "attention_mse", "attention_kl", "value_kl", "patient")
LOGIT_LOSSES = ("soft_target", "logit_mse")
LABEL_LOSSES = ("label_ce",)
TEACHER_FREE_LOSSES = ("simcse", "label_ce")
LOSS_NAMES = SENTENCE_LOSSES + LAYER_LOSSES + LOGIT_LOSSES + LABEL_LOSSES
PRECISIONS = ("fp32", "bf16-nearest", "bf16-stochastic")
_SR_SEED_MASK = (1 << 63) - 1


@dataclass
class DistillConfig:
    """What to train and how. ``losses`` maps loss names (:data:`LOSS_NAMES`) to weights."""

    losses: dict = field(default_factory=lambda: {"sentence_mse": 1.0})
    layer_map: Union[str, list] = "uniform"      # see bertsilicon.distill.layer_maps
    init_from_teacher: bool = True               # copy embeddings + mapped layers (same widths only)
    up_to_layer: Optional[int] = None            # layer losses on student layers 0..up_to_layer only (None: all)
    relation_heads: Optional[int] = None         # attention losses: heads both are split into (None: see attention.py)
    temperature: float = 2.0                     # soft_target
    t2_scale: bool = True                        # soft_target: multiply by T^2 (Hinton, DistilBERT)
    simcse_temperature: float = 0.05
    relation_temperature: float = 0.05           # sentence_relation
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "linear"                     # "linear" decay to 0 at `steps`, or "constant"
    steps: int = 100
    batch_size: int = 32
    max_length: int = 128
    precision: str = "fp32"                      # "fp32" | "bf16-nearest" | "bf16-stochastic"
    seed: int = 0
    freeze_embeddings: bool = False
    student_dropout: Optional[float] = None      # None: the student's own; else every nn.Dropout's p (see below)
    grad_clip: Optional[float] = 1.0
    eval_every: int = 0                          # 0: only at the end (when an eval_fn is given)
    checkpoint_every: int = 0                    # 0: only at the end (when checkpoint_dir is set)
    checkpoint_dir: Optional[str] = None
    progress: bool = True

    def validate(self) -> "DistillConfig":
        if not isinstance(self.losses, dict) or not self.losses:
            raise ValueError(f"losses must be a non-empty dict name -> weight, got {self.losses!r}")
        unknown = [k for k in self.losses if k not in LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; expected some of {LOSS_NAMES}")
        for k, w in self.losses.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"losses[{k!r}] must be a finite number, got {w!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is unknown; expected one of {PRECISIONS}")
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"schedule={self.schedule!r} is unknown; expected 'linear' or 'constant'")
        for name in ("steps", "batch_size", "max_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("eval_every", "checkpoint_every", "warmup_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.student_dropout is not None and not (0.0 <= self.student_dropout < 1.0):
            raise ValueError(f"student_dropout must be None or in [0, 1), got {self.student_dropout!r}")
        if not (self.lr > 0 and self.temperature > 0):
            raise ValueError(f"lr and temperature must be positive, got lr={self.lr}, temperature={self.temperature}")
        return self

    @property
    def teacher_free(self) -> bool:
        return all(k in TEACHER_FREE_LOSSES for k in self.losses)

    @property
    def logit_only(self) -> bool:
        return all(k in LOGIT_LOSSES + LABEL_LOSSES for k in self.losses)

    @property
    def sentence_only(self) -> bool:
        return all(k in SENTENCE_LOSSES for k in self.losses)


def ensemble_soft_target_logits(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits ``[..., C]`` whose softmax at ``temperature`` is the MEAN of the teachers' softmaxes (MT-DNN's
    ensemble soft targets), ``τ · log(mean_k softmax(z_k / τ))``, from ``teacher_logits [K, ..., C]``; one
    teacher gives its own logits back."""
    if teacher_logits.shape[0] == 1:
        return teacher_logits[0]
    log_p = torch.log_softmax(teacher_logits.float() / temperature, -1)
    return temperature * (log_p.logsumexp(0) - math.log(teacher_logits.shape[0]))


@torch.no_grad()
def teacher_logits(teachers: Sequence, tokenizer, texts: Sequence[str], max_length: int = 128, batch_size: int = 64,
                   progress: bool = True) -> torch.Tensor:
    """Every teacher's logits of ``texts``, ``[teachers, N, C]`` float32 (batched by length, order kept; the
    teachers in eval mode)."""
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    for c in tqdm(range(0, len(order), batch_size), desc="teacher logits", file=sys.stderr, disable=not progress,
                  leave=False):
        idx = order[c:c + batch_size]
        b = dict(tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
        logits = torch.stack([t.eval()(**b).logits.float() for t in teachers])
        if out is None:
            out = torch.empty(len(teachers), len(texts), *logits.shape[2:])
        out[:, idx] = logits
    return out


class Distiller:
    """Train ``student`` against ``teacher`` (Hugging Face BERT-family models) on raw texts.

    ``eval_fn(student) -> dict[str, float]`` is called every ``eval_every`` steps and at the end (the
    student in eval mode). ``fit`` returns the history: per-step losses and the evaluations. The teacher
    is put in eval mode and frozen (``requires_grad_(False)``).
    ``teacher_cache``: with logit and label losses only, the teachers' logits of the training texts
    ``[teachers, N, C]``; with sentence-level losses only, the teacher's mean-pooled embeddings of the
    training texts ``[N, D]``, computed once by ``fit`` (assign one to reuse it across students).
    """

    def __init__(self, teacher, student, tokenizer, config: Optional[DistillConfig] = None,
                 eval_fn: Optional[Callable] = None, projections: Optional[torch.nn.ModuleDict] = None):
        self.config = (config or DistillConfig()).validate()
        cfg = self.config
        if teacher is None and not cfg.teacher_free:
            raise ValueError(f"teacher is None but the losses {sorted(cfg.losses)} need one")
        self.teachers = list(teacher) if isinstance(teacher, (list, tuple)) else ([] if teacher is None else [teacher])
        if not self.teachers and teacher is not None:
            raise ValueError("teacher is an empty list; give a model, a list of models, or None")
        teacher = self.teachers[0] if self.teachers else None
        layer_losses = [k for k in cfg.losses if k in LAYER_LOSSES]
        if len(self.teachers) > 1 and layer_losses:
            raise ValueError(f"losses {layer_losses} compare layers with one teacher; several teachers give "
                             f"averaged soft targets only ({LOGIT_LOSSES})")
        self.teacher, self.student, self.tokenizer, self.eval_fn = teacher, student, tokenizer, eval_fn
        self.step = 0
        self.history = {"step": [], "loss": [], "parts": [], "eval": []}
        self.teacher_cache = None
        # the layer structure is needed only by layer losses, initialisation and frozen embeddings: a
        # non-transformer student (a BiLSTM) trains with the logit and label losses alone
        needs_body = bool(layer_losses) or (teacher is not None and cfg.init_from_teacher) or cfg.freeze_embeddings
        s_body = bert_body(student) if needs_body else None
        self.layers: list[int] = []
        if teacher is not None and needs_body:
            t_body = bert_body(teacher)
            self.layers = layer_map(cfg.layer_map, len(transformer_layers(student)), len(transformer_layers(teacher)))
            if cfg.init_from_teacher:
                init_student_from_teacher(student, teacher, self.layers)
        # (student layer, teacher layer) pairs the layer losses use: all, or the first up_to_layer + 1
        # (a stage of progressive transfer)
        self.loss_layers = list(enumerate(self.layers))[:None if cfg.up_to_layer is None else cfg.up_to_layer + 1]
        for t in self.teachers:
            t.eval().requires_grad_(False)
        # TinyBERT's W_h (hidden layers, shared) and W_e (embeddings) when the widths differ; a later stage
        # (task distillation after general distillation) passes the earlier stage's to carry them over
        self.projections = projections if projections is not None else torch.nn.ModuleDict()
        width_losses = [k for k in cfg.losses if k in SENTENCE_LOSSES + LAYER_LOSSES and k != "simcse"]
        if teacher is not None and width_losses:
            d_s, d_t = bert_body(student).config.hidden_size, bert_body(teacher).config.hidden_size
            if d_s != d_t:
                for name in ("hidden_mse", "embedding_mse"):
                    if name in cfg.losses and name not in self.projections:
                        self.projections[name] = L.HiddenProjection(d_s, d_t)
                if ("sentence_mse" in cfg.losses or "sentence_cosine" in cfg.losses) and "sentence" not in self.projections:
                    self.projections["sentence"] = L.HiddenProjection(d_s, d_t)
                bad = [k for k in ("hidden_cosine", "patient") if k in cfg.losses]
                if bad:
                    raise ValueError(f"losses {bad} compare hidden states directly and need equal widths "
                                     f"(student {d_s}, teacher {d_t})")
        if cfg.student_dropout is not None:
            # 0.0: a deterministic student chasing a deterministic teacher (eval mode), the usual choice
            # for short distillation runs; SimCSE needs its dropout (the two views), so leave it None there.
            for m in student.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = float(cfg.student_dropout)
        if cfg.freeze_embeddings:
            if "embedding_mse" in cfg.losses and "embedding_mse" not in self.projections:
                raise ValueError("freeze_embeddings=True with the 'embedding_mse' loss and equal widths leaves "
                                 "that loss nothing to train; unfreeze the embeddings or drop the loss")
            s_body.embeddings.requires_grad_(False)
        self._params = [p for p in student.parameters() if p.requires_grad] + list(self.projections.parameters())
        self.optimizer = torch.optim.AdamW(self._params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.precision != "fp32":
            self._round_weights(stochastic=False)  # start from bf16 values

    # -------------------------------------------------------------------------------------------- #
    def _round_weights(self, stochastic: bool) -> None:
        from .. import ops

        with torch.no_grad():
            for i, p in enumerate(self._params):
                if stochastic:
                    seed = (self.config.seed * 1_000_003 + self.step * 10_007 + i) & _SR_SEED_MASK
                    p.copy_(ops.round_to(p.data, "bf16", "stochastic", seed=seed))
                else:
                    p.copy_(ops.round_to(p.data, "bf16", "nearest"))

    def _lr(self, step: int) -> float:
        cfg = self.config
        scale = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "linear":
            scale *= max(0.0, 1.0 - step / cfg.steps)
        return cfg.lr * scale

    def batch_indices(self, step: int, n: int) -> list[int]:
        """Indices of the texts in batch ``step``: a fresh permutation per epoch, seeded by
        ``(seed, epoch)``, so the order depends on nothing but the step (this is what makes resume exact)."""
        bs = self.config.batch_size
        out, perms = [], {}
        for j in range(step * bs, (step + 1) * bs):
            epoch = j // n
            if epoch not in perms:
                g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
                perms[epoch] = torch.randperm(n, generator=g).tolist()
            out.append(perms[epoch][j % n])
        return out

    def _tokenize(self, texts: Sequence[str]) -> dict:
        """input_ids and attention_mask (single sentences: token types are all 0, and DistilBERT takes none)."""
        b = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                           return_tensors="pt")
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}

    @torch.no_grad()
    def teacher_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Mean-pooled teacher embeddings of ``texts`` [N, D] (batched by length; teacher in eval mode)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), bert_body(self.teacher).config.hidden_size)
        chunks = range(0, len(order), batch_size)
        for c in self._bar(chunks, "teacher embeddings"):
            idx = order[c:c + batch_size]
            b = self._tokenize([texts[i] for i in idx])
            h = self.teacher(**b, output_hidden_states=True).hidden_states[-1]
            out[idx] = mean_pool(h.float(), b["attention_mask"])
        return out

    def _bar(self, iterable, desc, **kw):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, file=sys.stderr, disable=not self.config.progress, leave=False, **kw)

    # -------------------------------------------------------------------------------------------- #
    def compute_loss(self, batch: dict, teacher_sentences: Optional[torch.Tensor] = None,
                     labels: Optional[torch.Tensor] = None, teacher_logits: Optional[torch.Tensor] = None):
        """(total loss, {name: unweighted value}) for one tokenized batch; ``labels`` [B] (or [B, S] for
        token-level heads; -100 = no label there) for ``label_ce``; ``teacher_logits`` [teachers, B, C]: cached
        teacher logits (no teacher pass)."""
        cfg = self.config
        mask = batch["attention_mask"]
        needs_hidden = any(k in cfg.losses for k in SENTENCE_LOSSES + LAYER_LOSSES)
        s_out = self.student(**batch, output_hidden_states=True) if needs_hidden else self.student(**batch)
        s_hid = s_out.hidden_states if needs_hidden else None
        need_teacher_pass = not cfg.teacher_free and not (cfg.sentence_only and teacher_sentences is not None) \
            and not (cfg.logit_only and teacher_logits is not None)
        t_out = None
        if need_teacher_pass:
            with torch.no_grad():
                t_out = self.teacher(**batch, output_hidden_states=needs_hidden)
        t_hid = t_out.hidden_states if t_out is not None and needs_hidden else None
        parts = {}
        s_sent = None
        if any(k in cfg.losses for k in SENTENCE_LOSSES):
            s_sent = mean_pool(s_hid[-1], mask)
        if any(k in cfg.losses for k in ("sentence_mse", "sentence_cosine", "sentence_relation")):
            t_sent = teacher_sentences if teacher_sentences is not None else mean_pool(t_hid[-1], mask)
            proj = self.projections["sentence"](s_sent) if "sentence" in self.projections else s_sent
            if "sentence_mse" in cfg.losses:
                parts["sentence_mse"] = L.hidden_mse_loss(proj, t_sent)
            if "sentence_cosine" in cfg.losses:
                parts["sentence_cosine"] = L.hidden_cosine_loss(proj, t_sent)
            if "sentence_relation" in cfg.losses:  # widths may differ: no projection needed
                parts["sentence_relation"] = L.similarity_kl(s_sent, t_sent, cfg.relation_temperature)
        if "simcse" in cfg.losses:  # a second pass: different dropout = the second view
            s_sent2 = mean_pool(self.student(**batch).last_hidden_state, mask)
            parts["simcse"] = L.contrastive_loss(s_sent, s_sent2, cfg.simcse_temperature)
        if "hidden_cosine" in cfg.losses:
            parts["hidden_cosine"] = L.hidden_cosine_loss(s_hid[-1], t_hid[-1], mask)
        if "embedding_mse" in cfg.losses:
            parts["embedding_mse"] = L.embedding_mse_loss(s_hid[0], t_hid[0], self.projections["embedding_mse"]
                                                          if "embedding_mse" in self.projections else None, mask)
        if "hidden_mse" in cfg.losses:
            proj = self.projections["hidden_mse"] if "hidden_mse" in self.projections else None
            parts["hidden_mse"] = sum(L.hidden_mse_loss(s_hid[i + 1], t_hid[t + 1], proj, mask)
                                      for i, t in self.loss_layers)
        if "patient" in cfg.losses:
            parts["patient"] = L.patient_loss([s_hid[i + 1][:, 0] for i, _ in self.loss_layers],
                                              [t_hid[t + 1][:, 0] for _, t in self.loss_layers])
        if any(k in cfg.losses for k in ("attention_mse", "attention_kl", "value_kl")):
            s_layers, t_layers = transformer_layers(self.student), transformer_layers(self.teacher)
            if "attention_mse" in cfg.losses:
                total = 0
                for i, t in self.loss_layers:
                    r = common_heads(s_layers[i], t_layers[t], cfg.relation_heads)
                    with torch.no_grad():
                        t_scores, _ = heads(t_layers[t], t_hid[t], r)
                    s_scores, _ = heads(s_layers[i], s_hid[i], r)
                    total = total + L.attention_score_mse(s_scores, t_scores, mask)
                parts["attention_mse"] = total
            if "attention_kl" in cfg.losses or "value_kl" in cfg.losses:
                i, last = self.loss_layers[-1]  # the student's last layer and its teacher layer (uniform: the last)
                r = common_heads(s_layers[i], t_layers[last], cfg.relation_heads)
                with torch.no_grad():
                    t_scores, t_values = heads(t_layers[last], t_hid[last], r)
                s_scores, s_values = heads(s_layers[i], s_hid[i], r)
                if "attention_kl" in cfg.losses:
                    parts["attention_kl"] = L.attention_kl(s_scores, t_scores, mask)
                if "value_kl" in cfg.losses:
                    parts["value_kl"] = L.value_relation_kl(s_values, t_values, mask)
        if any(k in cfg.losses for k in LOGIT_LOSSES + LABEL_LOSSES) and getattr(s_out, "logits", None) is None:
            raise ValueError(f"losses {[k for k in LOGIT_LOSSES + LABEL_LOSSES if k in cfg.losses]} need a student "
                             "with logits (a task head, e.g. BertForSequenceClassification)")
        # token-level logits [B, S, C] (a masked-LM head): padded positions count in no logit loss
        logit_mask = mask if getattr(s_out, "logits", None) is not None and s_out.logits.dim() == 3 else None
        if any(k in cfg.losses for k in LOGIT_LOSSES):
            if teacher_logits is None:
                if getattr(t_out, "logits", None) is None:
                    raise ValueError(f"losses {[k for k in LOGIT_LOSSES if k in cfg.losses]} need a teacher with "
                                     "logits (a task head, e.g. BertForSequenceClassification)")
                teacher_logits = torch.stack([t_out.logits.float(), *self._other_teacher_logits(batch)])
            if "soft_target" in cfg.losses:
                targets = ensemble_soft_target_logits(teacher_logits, cfg.temperature)
                parts["soft_target"] = L.soft_target_loss(s_out.logits, targets, cfg.temperature,
                                                           t2_scale=cfg.t2_scale, mask=logit_mask)
            if "logit_mse" in cfg.losses:
                parts["logit_mse"] = L.logit_mse(s_out.logits, teacher_logits.mean(0), mask=logit_mask)
        if "label_ce" in cfg.losses:
            if labels is None:
                raise ValueError("the 'label_ce' loss needs labels: fit(texts, labels=...)")
            parts["label_ce"] = label_cross_entropy(s_out.logits, labels)
        total = sum(cfg.losses[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def _other_teacher_logits(self, batch: dict) -> list:
        return [t(**batch).logits.float() for t in self.teachers[1:]]

    def teacher_logits(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Every teacher's logits of ``texts``, ``[teachers, N, C]`` (see :func:`teacher_logits`)."""
        return teacher_logits(self.teachers, self.tokenizer, texts, self.config.max_length, batch_size,
                              self.config.progress)

    def train_step(self, batch: dict, teacher_sentences: Optional[torch.Tensor] = None,
                   labels: Optional[torch.Tensor] = None, teacher_logits: Optional[torch.Tensor] = None) -> float:
        """One optimizer step (+ bf16 rounding of the weights when asked); returns the loss."""
        cfg = self.config
        self.student.train()
        self.projections.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr(self.step)
        total, parts = self.compute_loss(batch, teacher_sentences, labels, teacher_logits)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
        self.optimizer.step()
        if cfg.precision != "fp32":
            self._round_weights(stochastic=cfg.precision == "bf16-stochastic")
        self.step += 1
        self.history["step"].append(self.step)
        loss = float(total.detach())
        self.history["loss"].append(loss)
        self.history["parts"].append(parts)
        return loss

    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        was_training = self.student.training
        self.student.eval()
        try:
            result = {k: float(v) for k, v in self.eval_fn(self.student).items()}
        finally:
            self.student.train(was_training)
        self.history["eval"].append({"step": self.step, **result})
        return result

    def fit(self, texts: Sequence[str], labels: Optional[Sequence[int]] = None,
            resume_from: Optional[Union[str, os.PathLike]] = None, stop_at: Optional[int] = None) -> dict:
        """Train until ``config.steps`` (or ``stop_at`` steps, for a partial run); returns the history.
        ``labels``: one class index per text for the ``label_ce`` loss (hard labels), None (or -100) for a
        text without one: the other losses train on every text, ``label_ce`` on the labelled ones (:mod:`.labels`)."""
        cfg = self.config
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty sequence of str")
        labels = label_tensor(labels, len(texts))
        if "label_ce" in cfg.losses and (labels is None or bool((labels == MISSING).all())):
            raise ValueError("the 'label_ce' loss needs labels: fit(texts, labels=...) with at least one text "
                             "labelled (entries None / -100 mark texts without one)")
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        if cfg.sentence_only and not cfg.teacher_free and self.teacher_cache is None:
            self.teacher_cache = self.teacher_embeddings(texts)
        if cfg.logit_only and not cfg.teacher_free and self.teacher_cache is None:
            self.teacher_cache = self.teacher_logits(texts)
        bar = self._bar(range(self.step, end), "distill", initial=0)
        for _ in bar:
            idx = self.batch_indices(self.step, len(texts))
            batch = self._tokenize([texts[i] for i in idx])
            labels_now = labels[idx] if labels is not None else None
            if cfg.logit_only and self.teacher_cache is not None:
                loss = self.train_step(batch, None, labels_now, self.teacher_cache[:, idx])
            else:
                cached = self.teacher_cache[idx] if self.teacher_cache is not None else None
                loss = self.train_step(batch, cached, labels_now)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.4f}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < end:
                self.evaluate()
            if cfg.checkpoint_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(Path(cfg.checkpoint_dir) / f"step-{self.step:06d}.safetensors")
        if self.eval_fn is not None and (not self.history["eval"] or self.history["eval"][-1]["step"] != self.step):
            self.evaluate()
        if cfg.checkpoint_dir:
            self.save_checkpoint(Path(cfg.checkpoint_dir) / f"step-{self.step:06d}.safetensors")
        return self.history

    # -------------------------------------------------------------------------------------------- #
    def save_checkpoint(self, path: Union[str, os.PathLike]) -> Path:
        """Student, projections, AdamW state and RNG state in one safetensors file (see :mod:`.checkpoint`)."""
        return save_checkpoint(self, path)

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        load_checkpoint(self, path)


__all__ = ["DistillConfig", "Distiller", "LOSS_NAMES", "PRECISIONS"]
