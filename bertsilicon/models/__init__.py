"""Hugging Face adapters and students: configs, loaders, and (issue 5) ``optimize``/``restore``."""
from .students import STUDENTS, load_student, load_tokenizer, minilm_path, student_config

__all__ = ["STUDENTS", "load_student", "load_tokenizer", "minilm_path", "student_config"]
