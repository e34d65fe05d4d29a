"""The final student as a folder users load: Hugging Face (``from_pretrained``) and sentence-transformers.

    save_student(student, tokenizer, "student/")                  # config.json + model.safetensors + tokenizer
    save_student(student, tokenizer, "student/", embedding=True)  # + modules.json, 1_Pooling, 2_Normalize

The folder holds the model's own weights under its own names (``save_pretrained``): no wrapper prefix, no
projection, no optimizer or RNG state (those stay in the resumable checkpoints of :mod:`.checkpoint`). With
``embedding=True`` the same folder is also a sentence-transformers model: the transformer at its root, then
mean pooling over the real tokens and L2 normalisation, the pipeline of all-MiniLM-L6-v2 whose mean-pooled
embeddings the sentence losses distil. A BiLSTM student (not a Hugging Face model) is written as
``model.safetensors`` + ``bilstm_config.json``; :func:`load_bilstm` reads it back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from .bilstm import BiLSTMClassifier, BiLSTMConfig

BILSTM_CONFIG = "bilstm_config.json"


def save_student(student, tokenizer, out: Union[str, Path], embedding: bool = False, max_seq_length: int = 256) -> Path:
    """Write ``student`` (and ``tokenizer``) to the folder ``out``; returns it (module docstring)."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; expected a folder for the student")
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(student, BiLSTMClassifier):
        if embedding:
            raise ValueError("a BiLSTM student is a classifier; it has no sentence-transformers form")
        save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, str(out / "model.safetensors"))
        (out / BILSTM_CONFIG).write_text(json.dumps(student.config.to_dict(), indent=1))
    else:
        if not hasattr(student, "save_pretrained"):
            raise TypeError(f"{type(student).__name__} is not a Hugging Face model (no save_pretrained)")
        student.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if embedding:
        _sentence_transformers(out, student.config.hidden_size, max_seq_length)
    return out


def _sentence_transformers(out: Path, dim: int, max_seq_length: int) -> None:
    """modules.json and the pooling / normalisation folders that make ``out`` a sentence-transformers model."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=1))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                               "do_lower_case": False}, indent=1))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=1))
    (out / "2_Normalize").mkdir(exist_ok=True)


def load_bilstm(folder: Union[str, Path]) -> BiLSTMClassifier:
    """The BiLSTM student :func:`save_student` wrote to ``folder`` (eval mode)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / BILSTM_CONFIG).is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {BILSTM_CONFIG}; expected a folder save_student wrote "
                                "for a BiLSTM student")
    model = BiLSTMClassifier(BiLSTMConfig(**json.loads((folder / BILSTM_CONFIG).read_text())))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


__all__ = ["save_student", "load_bilstm"]
