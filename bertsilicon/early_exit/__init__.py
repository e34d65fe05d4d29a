"""Adaptive inference (FastBERT, Liu et al. 2020): branch classifiers after every layer trained by
self-distillation, and batched early exit with compaction on the fused encoder.

    from bertsilicon import early_exit
    ee = early_exit.attach_branches(classifier)             # a fine-tuned BERT / DistilBERT sequence classifier
    early_exit.train_branches(ee, tokenizer, texts)         # KL to the final classifier, backbone frozen
    bertsilicon.optimize(ee.model, "int8")                  # optional: any precision
    out = early_exit.classify(ee, input_ids, attention_mask, speed=0.3)
    out.logits, out.exit_layer                               # input order; exit_layer in 1 .. layers
    early_exit.save(ee, "dir"); ee = early_exit.load("dir")

Modules: :mod:`.branches` (the model, self-distillation), :mod:`.inference` (batched exit with compaction),
:mod:`.artifact` (save / load), :mod:`.train` (the task recipe), :mod:`.cli` (``bertsilicon early-exit``).
"""
from .artifact import load, save
from .branches import Branch, EarlyExitModel, attach_branches, normalized_entropy, train_branches
from .inference import ExitOutput, classify, classify_texts

__all__ = ["Branch", "EarlyExitModel", "attach_branches", "normalized_entropy", "train_branches", "ExitOutput",
           "classify", "classify_texts", "save", "load"]
