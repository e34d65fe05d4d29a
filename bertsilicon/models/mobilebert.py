"""MobileBERT is refused (kept unchanged, with the reason in the report), never run wrongly.

Its layers are not the post-LayerNorm block the fused layer implements: inverted bottlenecks
(512 -> 128 inside each layer, with input/output bottleneck projections), ``NoNorm`` (an elementwise
affine ``x * gamma + beta`` with no statistics) instead of LayerNorm, four stacked FFNs per layer and
Q/K computed from the bottleneck while V comes from the full-width input.
"""
from __future__ import annotations

from transformers.models.mobilebert import modeling_mobilebert as hf

REASON = ("MobileBERT layers (bottleneck projections 512->128, NoNorm instead of LayerNorm, 4 stacked FFNs, "
          "V from the full-width input) are not the fused post-LayerNorm block: kept unchanged")
PRETRAINED_CLASS = hf.MobileBertPreTrainedModel
