"""Classification on a labelled task (:func:`bertsilicon.tasks.task`): models with a task head, teacher
fine-tuning, predictions and accuracy.

    t = bertsilicon.tasks.task("docstring-module")
    teacher = teacher_classifier(t.num_labels)                       # the real MiniLM + a new linear head
    finetune(teacher, tok, t.train, steps=300)                       # hard-label cross-entropy
    accuracy(teacher, tok, t.test)

Fine-tuning is a :class:`~.distiller.Distiller` run with no teacher and the ``label_ce`` loss alone, so it
shares the distiller's schedule, checkpoints, resume and progress bar.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .distiller import DistillConfig, Distiller
from .layer_maps import student_from_spec


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def teacher_classifier(num_labels: int, seed: int = 0, path=None):
    """A pretrained encoder with a sequence-classification head (the parts the checkpoint lacks drawn with
    ``seed``): the model directory ``path``, by default the real all-MiniLM-L6-v2."""
    from transformers import AutoModelForSequenceClassification

    from ..models.students import minilm_path

    _check_num_labels(num_labels)
    return _seeded(seed, lambda: AutoModelForSequenceClassification.from_pretrained(
        str(path or minilm_path()), num_labels=num_labels, local_files_only=True))


def student_classifier(spec: str, num_labels: int, teacher_config=None, seed: int = 0):
    """A randomly initialised classifier of the student ``spec`` (see :func:`~.layer_maps.student_from_spec`:
    ``bert-L3-H384``, ``L2-H768-A12-F1536``, ``distilbert:n_layers=2``, ``mobilebert:num_hidden_layers=2``, ...)."""
    from transformers import AutoModelForSequenceClassification

    _check_num_labels(num_labels)
    cfg = student_from_spec(spec, teacher_config)
    cfg.num_labels = num_labels
    return _seeded(seed, lambda: AutoModelForSequenceClassification.from_config(cfg)).eval()


def _check_num_labels(num_labels) -> None:
    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")


def finetune(model, tokenizer, split, steps: int = 300, lr: float = 5e-5, batch_size: int = 32,
             max_length: int = 64, seed: int = 0, warmup_steps: Optional[int] = None, progress: bool = True,
             checkpoint_dir: Optional[str] = None, resume_from: Optional[str] = None) -> dict:
    """Fine-tune ``model`` (a classifier) on ``split`` (texts, labels) with the hard-label cross-entropy;
    returns the history. Resumable like any distillation run (``checkpoint_dir``, ``resume_from``)."""
    cfg = DistillConfig(losses={"label_ce": 1.0}, init_from_teacher=False, lr=lr, steps=steps, batch_size=batch_size,
                        max_length=max_length, seed=seed, progress=progress, checkpoint_dir=checkpoint_dir,
                        warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps)
    history = Distiller(None, model, tokenizer, cfg).fit(list(split.texts), list(split.labels), resume_from=resume_from)
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """Logits ``[N, C]`` float32 of ``texts`` (batched by length, the model in eval mode, order kept)."""
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    for c in range(0, len(order), batch_size):
        b = tokenizer([texts[i] for i in order[c:c + batch_size]], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
        chunks.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float())
    model.train(was_training)
    logits = torch.cat(chunks)
    out = torch.empty_like(logits)
    out[torch.tensor(order)] = logits
    return out


def accuracy(model, tokenizer, split, batch_size: int = 64, max_length: int = 128) -> float:
    """Fraction of ``split``'s texts whose arg-max logit is their label."""
    logits = predict_logits(model, tokenizer, split.texts, batch_size, max_length)
    return float((logits.argmax(-1) == torch.tensor(split.labels)).double().mean())


__all__ = ["teacher_classifier", "student_classifier", "finetune", "predict_logits", "accuracy"]
