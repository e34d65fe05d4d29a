"""Adapter for ``DistilBertModel`` and its heads."""
from __future__ import annotations

from transformers.modeling_outputs import BaseModelOutput
from transformers.models.distilbert import modeling_distilbert as hf

from .base import Adapter, activation_of
from ..layers import LayerParts


def _parts(layer, config) -> LayerParts:
    a, f = layer.attention, layer.ffn
    return LayerParts(q=a.q_lin, k=a.k_lin, v=a.v_lin, o=a.out_lin, ln1=layer.sa_layer_norm, up=f.lin1, down=f.lin2,
                      ln2=layer.output_layer_norm, activation=activation_of(config.activation), num_heads=config.n_heads)


def _unsupported(config):
    if activation_of(config.activation) is None:
        return f"unsupported activation activation={config.activation!r} (fused: gelu, relu)"
    return None


ADAPTER = Adapter(
    family="DistilBERT", pretrained_class=hf.DistilBertPreTrainedModel, base_class=hf.DistilBertModel,
    encoder_attr="transformer", layer_parts=_parts, unsupported_reason=_unsupported,
    encoder_output=lambda h: BaseModelOutput(last_hidden_state=h), max_positions=lambda c: c.max_position_embeddings)
