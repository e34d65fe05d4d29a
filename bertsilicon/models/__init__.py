"""The model side: ``optimize`` / ``restore`` of Hugging Face models (:mod:`.optimize`), the fused encoder and
layers, the family adapters, and the built-in students (configs, loaders)."""
from .students import STUDENTS, load_student, load_tokenizer, minilm_path, student_config

__all__ = ["STUDENTS", "load_student", "load_tokenizer", "minilm_path", "student_config"]
