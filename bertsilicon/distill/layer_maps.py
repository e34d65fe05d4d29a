"""Which teacher layer each student layer learns from (and is initialised from); student specs.

Layers are 0-based transformer layers (``hidden_states[l + 1]`` is the output of layer ``l``;
``hidden_states[0]`` is the embedding output). A map is a list with one teacher layer per student layer.

=============  ==========================================================  ==============================
kind            teacher layers for M student layers of an N-layer teacher   used by
=============  ==========================================================  ==============================
``uniform``     ``round((m + 1) N / M) - 1``: every N/M-th, ending at N-1     TinyBERT (g(m) = m·N/M)
``skip``        ``start + m·step`` (default step k = N // M, start k - 1)   BERT-PKD-Skip / "one in k"
``last``        the last M layers ``N-M .. N-1``                              BERT-PKD-Last
``first``       the first M layers ``0 .. M-1``                               PKD's initialisation
``distilbert``  ``[0, 2, 4, 7, 9, 11]`` (M = 6, N = 12)                      DistilBERT's initialisation
``custom``      the list you give                                            —
=============  ==========================================================  ==============================
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

LAYER_MAPS = ("uniform", "skip", "last", "first", "distilbert", "custom")
DISTILBERT_LAYERS = (0, 2, 4, 7, 9, 11)


def layer_map(kind: Union[str, Sequence[int]], n_student: int, n_teacher: int,
              layers: Optional[Sequence[int]] = None, step: Optional[int] = None, start: Optional[int] = None) -> list[int]:
    """Teacher layer (0-based) for each of the ``n_student`` student layers. ``kind`` is one of
    :data:`LAYER_MAPS` or directly a list of teacher layers (= ``"custom"``). BERT-PKD-Skip with a
    12-layer teacher and a 6-layer student: ``layer_map("skip", 6, 12) == [1, 3, 5, 7, 9, 11]`` (the
    paper's layers {2, 4, 6, 8, 10, 12} counted from 1)."""
    for name, v in (("n_student", n_student), ("n_teacher", n_teacher)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_student > n_teacher and kind not in ("custom",) and isinstance(kind, str):
        raise ValueError(f"n_student={n_student} > n_teacher={n_teacher}: only a 'custom' map can repeat teacher layers")
    if not isinstance(kind, str):
        kind, layers = "custom", kind
    if kind == "uniform":
        out = [round((m + 1) * n_teacher / n_student) - 1 for m in range(n_student)]
    elif kind == "skip":
        # PKD-Skip learns from every k-th layer counting from 1: {2, 4, 6, 8, 10} of 12 for k = 2, i.e.
        # 0-based k-1, 2k-1, ... (ending at the teacher's last layer when M divides N)
        step = n_teacher // n_student if step is None else step
        start = step - 1 if start is None else start
        out = [start + m * step for m in range(n_student)]
    elif kind == "last":
        out = list(range(n_teacher - n_student, n_teacher))
    elif kind == "first":
        out = list(range(n_student))
    elif kind == "distilbert":
        if (n_student, n_teacher) != (6, 12):
            raise ValueError(f"the 'distilbert' map takes 6 of 12 layers; got n_student={n_student}, n_teacher={n_teacher}")
        out = list(DISTILBERT_LAYERS)
    elif kind == "custom":
        if layers is None:
            raise ValueError("kind='custom' needs layers=[teacher layer per student layer]")
        out = [int(x) for x in layers]
        if len(out) != n_student:
            raise ValueError(f"layers has {len(out)} entries; expected one per student layer ({n_student})")
    else:
        raise ValueError(f"layer map {kind!r} is unknown; expected one of {LAYER_MAPS} or a list of ints")
    bad = [x for x in out if not 0 <= x < n_teacher]
    if bad:
        raise ValueError(f"layer map {kind!r} gives teacher layers {bad} outside 0..{n_teacher - 1}")
    return out


# ------------------------------------------------------------------------------------------------ #
# students                                                                                            #
# ------------------------------------------------------------------------------------------------ #
_BERT_SPEC = re.compile(r"^bert-L(\d+)-H(\d+)(?:-A(\d+))?(?:-F(\d+))?$")


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def student_from_spec(spec: str, teacher_config=None):
    """The Hugging Face config of a student written as

    * a published student (``"tinybert4"``, ``"bert-L4-H256"``: see ``bertsilicon.STUDENTS``);
    * a published student with overrides: ``"minilm-l6:num_hidden_layers=3,intermediate_size=1024"``;
    * a shape as ``bertsilicon design`` prints it, ``"L2-H768-A12-F1536"``;
    * a generic BERT ``"bert-L{L}-H{H}[-A{A}][-F{F}]"``: missing heads / FFN width take the teacher's when
      ``H`` equals the teacher's width (so its layers can be copied), else Turc et al.'s ``A = H/64``,
      ``F = 4H``. E.g. ``bert-L3-H384`` under MiniLM-L6 = 3 layers, 12 heads, FFN 1536.
    """
    from ..models.students import _BERT_SHAPES, DESIGN_NAME, student_config

    if not isinstance(spec, str) or not spec:
        raise TypeError(f"student spec must be a non-empty str, got {spec!r}")
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"student spec {spec!r}: override {item!r} must be key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    if DESIGN_NAME.match(name):  # the design explorer's names: every field given
        return student_config(name, **overrides)
    m = _BERT_SPEC.match(name)
    if m and name not in _BERT_SHAPES:
        L, H = int(m.group(1)), int(m.group(2))
        same_width = teacher_config is not None and getattr(teacher_config, "hidden_size", None) == H
        A = int(m.group(3)) if m.group(3) else (teacher_config.num_attention_heads if same_width else max(1, H // 64))
        Fw = int(m.group(4)) if m.group(4) else (teacher_config.intermediate_size if same_width else 4 * H)
        if H % A:
            raise ValueError(f"student spec {spec!r}: hidden size {H} is not divisible by {A} heads")
        base = {"num_hidden_layers": L, "hidden_size": H, "num_attention_heads": A, "intermediate_size": Fw}
        return student_config("bert-base", **{**base, **overrides})
    return student_config(name, **overrides)


def student_from_design(path, pick: int) -> str:
    """The student spec of entry ``pick`` (0-based) of the Pareto front in a ``bertsilicon design --json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--from-design {str(path)!r} does not exist (write one with bertsilicon design --json FILE)")
    try:
        front = json.loads(path.read_text())["front"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"--from-design {str(path)!r} is not a bertsilicon design JSON (no 'front' list)") from None
    if not isinstance(pick, int) or not 0 <= pick < len(front):
        raise ValueError(f"--pick {pick!r} is outside the front of {str(path)!r} (0..{len(front) - 1})")
    return front[pick]["name"].split(" / ")[0]  # a grid shape, or a published student that has the same shape


def _check_widths(student_cfg, teacher_cfg) -> None:
    fields = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
              "type_vocab_size", "hidden_act")
    diff = [f"{f}: student {getattr(student_cfg, f, None)} vs teacher {getattr(teacher_cfg, f, None)}"
            for f in fields if getattr(student_cfg, f, None) != getattr(teacher_cfg, f, None)]
    if diff:
        raise ValueError("cannot initialise the student from teacher layers: the shapes differ ("
                         + "; ".join(diff) + "). Initialise only students of the teacher's width "
                         "(init_from_teacher=False trains from random init; a hidden-state projection handles the widths)")


def bert_body(model):
    """The encoder model inside a Hugging Face BERT-family model (itself, or ``.bert`` / ``.distilbert`` /
    ``.mobilebert`` of a task head): embeddings + transformer layers (``encoder.layer`` or DistilBERT's
    ``transformer.layer``)."""
    body = getattr(model, "base_model", model)
    layers = getattr(getattr(body, "encoder", None) or getattr(body, "transformer", None), "layer", None)
    if not (hasattr(body, "embeddings") and layers is not None):
        raise TypeError(f"{type(model).__name__} is not a BERT-family model (embeddings + transformer layers); "
                        "layer maps, initialisation from teacher layers (init_from_teacher=False turns it off) and "
                        "layer losses need one")
    return body


def transformer_layers(model):
    """The transformer layers (``torch.nn.ModuleList``) of a BERT-family model."""
    body = bert_body(model)
    return (body.encoder if hasattr(body, "encoder") else body.transformer).layer


@torch.no_grad()
def init_student_from_teacher(student, teacher, layers: Sequence[int]):
    """Copy the teacher's embeddings and, for student layer ``i``, teacher layer ``layers[i]`` into
    ``student`` (in place; returned). The pooler is copied when both have one. Raises ``ValueError``
    naming the fields that differ when the widths do not match."""
    s_body, t_body = bert_body(student), bert_body(teacher)
    _check_widths(s_body.config, t_body.config)
    s_layers, t_layers = transformer_layers(student), transformer_layers(teacher)
    n_s, n_t = len(s_layers), len(t_layers)
    layers = layer_map(list(layers), n_s, n_t)
    s_body.embeddings.load_state_dict(t_body.embeddings.state_dict())
    for i, t in enumerate(layers):
        s_layers[i].load_state_dict(t_layers[t].state_dict())
    if getattr(s_body, "pooler", None) is not None and getattr(t_body, "pooler", None) is not None:
        s_body.pooler.load_state_dict(t_body.pooler.state_dict())
    return student


__all__ = ["LAYER_MAPS", "DISTILBERT_LAYERS", "layer_map", "student_from_spec", "student_from_design", "init_student_from_teacher",
           "transformer_layers",
           "bert_body"]
