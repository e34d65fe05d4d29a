"""Distillation: the papers' losses (:mod:`.losses`), layer maps and student initialisation
(:mod:`.layer_maps`), and :class:`Distiller` (config in :class:`DistillConfig`).

    from bertsilicon.distill import Distiller, DistillConfig, student_from_spec
    teacher = bertsilicon.load_student("minilm-l6")
    student = transformers.BertModel(student_from_spec("bert-L3-H384", teacher.config))
    Distiller(teacher, student, bertsilicon.load_tokenizer(), DistillConfig(steps=200)).fit(texts)

``python -m bertsilicon.distill.demo`` distils the real MiniLM into a 3-layer student and measures it.
"""
from . import losses
from .distiller import LOSS_NAMES, PRECISIONS, DistillConfig, Distiller
from .export import load_bilstm, save_student
from .layer_maps import LAYER_MAPS, init_student_from_teacher, layer_map, student_from_spec
from .mlm import MaskedLMDistiller

__all__ = ["losses", "Distiller", "DistillConfig", "LOSS_NAMES", "PRECISIONS", "LAYER_MAPS", "layer_map",
           "init_student_from_teacher", "student_from_spec", "MaskedLMDistiller", "save_student", "load_bilstm"]
