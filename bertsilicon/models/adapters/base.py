"""What the model wrapper needs to know about one Hugging Face model family (see bert.py, distilbert.py,
roberta.py, electra.py, mobilebert.py).

An adapter finds the encoder (the module holding the ``layer`` ModuleList) and, per layer, the parts its
``layer_class`` is built from (:class:`~bertsilicon.models.layers.LayerParts` for the post-LayerNorm
BERT block); it says why a model cannot be fused
(``unsupported_reason``) and builds the encoder's own output type from the last hidden state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..layers import FusedEncoderLayer

# HF activation names -> the epilogue activations of ops.linear / ops.int8_linear
ACTIVATION_NAMES = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def activation_of(name) -> Optional[str]:
    """The ops epilogue for an HF activation name, or None if it has none (e.g. ``silu``, a callable)."""
    return ACTIVATION_NAMES.get(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class Adapter:
    family: str                                   # "BERT", "DistilBERT", "RoBERTa", "MobileBERT"
    pretrained_class: type                        # e.g. BertPreTrainedModel: which models this adapter serves
    base_class: type                              # e.g. BertModel
    encoder_attr: str                             # attribute of the base model holding the encoder
    layer_parts: Callable[[nn.Module, object], object]  # -> LayerParts | MobileBertParts
    unsupported_reason: Callable[[object], Optional[str]]  # config -> None | why the layers are kept
    encoder_output: Callable[[object], object]    # last hidden state -> the encoder's ModelOutput
    max_positions: Callable[[object], Optional[int]]  # config -> the longest input (tokens), None: no limit
    # config -> how that limit follows from the config, for the too-long-input error (None: "max_position_embeddings=N")
    position_limit: Optional[Callable[[object], str]] = None

    def position_limit_text(self, config) -> str:
        return (self.position_limit(config) if self.position_limit is not None
                else f"max_position_embeddings={self.max_positions(config)}")
    layer_class: type = FusedEncoderLayer          # the fused layer built from layer_parts' parts

    def base_model(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, self.base_class) else model.base_model
