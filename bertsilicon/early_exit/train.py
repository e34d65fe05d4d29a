"""The task recipe: fine-tune the real MiniLM on a labelled task (backbone + final classifier, hard labels),
then train the branch classifiers by self-distillation with the backbone frozen (FastBERT's two stages).

Each stage writes its result under ``out`` and is skipped when that result is already there, so an
interrupted run resumes at the stage it stopped in:

* ``out/backbone``: the fine-tuned classifier (``save_pretrained``);
* ``out/model``: the early-exit model (:func:`~.artifact.save`: backbone, branches, tokenizer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from .artifact import BRANCH_MANIFEST, load, save
from .branches import EarlyExitModel, attach_branches, train_branches

# The recipe on docstring-module (41 classes, 1174 training texts), steps chosen on the dev split: the backbone at
# the distillation teachers' settings (dev accuracy 0.48 / 0.61 / 0.65 after 80 / 160 / 240 steps); the branches
# (features computed once, so a step is cheap) 6000 steps, where every branch's dev accuracy was still rising
# from 400, 1000 and 2500 steps (layer 3's branch stays a little below layer 2's).
STEPS, BATCH_SIZE, LR = 240, 32, 2e-4
BRANCH_STEPS = 6000


def train_task_model(out: Union[str, Path], task_name: str = "docstring-module", steps: int = STEPS,
                     branch_steps: int = BRANCH_STEPS, lr: float = LR, batch_size: int = BATCH_SIZE,
                     max_length: int = 48, seed: int = 0, progress: bool = True) -> EarlyExitModel:
    """The early-exit MiniLM of ``task_name``, trained into ``out`` (see the module docstring)."""
    import bertsilicon as bs
    from transformers import AutoModelForSequenceClassification

    from ..distill.task import finetune, teacher_classifier
    from ..tasks import task

    out = Path(out)
    if (out / "model" / BRANCH_MANIFEST).is_file():
        return load(out / "model")
    t, tok = task(task_name), bs.load_tokenizer()
    backbone = out / "backbone"
    if (backbone / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(str(backbone), local_files_only=True).eval()
    else:
        model = teacher_classifier(t.num_labels, seed=seed)
        model.config.id2label = dict(enumerate(t.label_names))
        model.config.label2id = {n: i for i, n in enumerate(t.label_names)}
        finetune(model, tok, t.train, steps=steps, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
                 progress=progress)
        model.save_pretrained(backbone)
    ee = attach_branches(model)
    train_branches(ee, tok, t.train.texts, steps=branch_steps, max_length=max_length, seed=seed, progress=progress)
    save(ee, out / "model", tokenizer=tok)
    return ee.eval()


__all__ = ["train_task_model"]
