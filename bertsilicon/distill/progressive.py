"""MobileBERT's progressive knowledge transfer (Sun et al. 2020): the student's layers are trained one at a
time, bottom up, each against its mapped teacher layer while every other layer is frozen.

Stage ``l`` (``l = 0 .. L-1``): the layer losses (default: the feature-map transfer ``hidden_mse`` and the
attention transfer ``attention_kl`` on layer ``l``, MobileBERT's two) use the student's layers ``0 .. l`` and
their mapped teacher layers (``DistillConfig.up_to_layer = l``); only layer ``l`` trains (and the embeddings at ``l = 0``), and the hidden
projection (student and teacher widths may differ) is carried from stage to stage.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .distiller import DistillConfig, Distiller
from .layer_maps import bert_body, layer_map, transformer_layers

PKT_LOSSES = {"hidden_mse": 1.0, "attention_kl": 1.0}


def progressive_transfer(teacher, student, tokenizer, texts: Sequence[str], steps_per_layer: int = 100,
                         losses: Optional[dict] = None, map_kind="uniform", **config) -> list:
    """Train ``student`` layer by layer (in place); returns each stage's history. ``config``: other
    :class:`DistillConfig` fields (lr, batch_size, max_length, seed, ...)."""
    layers = transformer_layers(student)
    mapped = layer_map(map_kind, len(layers), len(transformer_layers(teacher)))
    body = bert_body(student)
    trainable = {id(p): p.requires_grad for p in student.parameters()}
    histories, projections = [], None
    try:
        for stage in range(len(layers)):
            student.requires_grad_(False)
            layers[stage].requires_grad_(True)
            body.embeddings.requires_grad_(stage == 0)
            cfg = DistillConfig(losses=dict(losses or PKT_LOSSES), layer_map=mapped, up_to_layer=stage,
                                init_from_teacher=False, steps=steps_per_layer, **config)
            d = Distiller(teacher, student, tokenizer, cfg, projections=projections)
            histories.append(d.fit(list(texts)))
            projections = d.projections
    finally:
        for p in student.parameters():
            p.requires_grad_(trainable[id(p)])
    return histories


__all__ = ["progressive_transfer", "PKT_LOSSES"]
