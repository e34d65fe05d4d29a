"""Adapter for ``BertModel`` and every ``BertFor*`` head (BERT-base, TinyBERT, MiniLM, BERT-PKD, ...), and
:func:`bert_layer_adapter`, which serves the families whose encoder layers are BertLayer clones (roberta.py)."""
from __future__ import annotations

from typing import Callable, Optional

from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bert import modeling_bert as hf

from .base import Adapter, activation_of
from ..layers import LayerParts


def _parts(layer, config) -> LayerParts:
    a = layer.attention
    return LayerParts(q=a.self.query, k=a.self.key, v=a.self.value, o=a.output.dense, ln1=a.output.LayerNorm,
                      up=layer.intermediate.dense, down=layer.output.dense, ln2=layer.output.LayerNorm,
                      activation=activation_of(config.hidden_act), num_heads=config.num_attention_heads)


def _unsupported(config):
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return "decoder (causal self-attention / cross-attention): only bidirectional encoders are fused"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type={config.position_embedding_type!r} (relative positions in attention)"
    if activation_of(config.hidden_act) is None:
        return f"unsupported activation hidden_act={config.hidden_act!r} (fused: gelu, gelu_new, gelu_pytorch_tanh, relu)"
    return None


def bert_layer_adapter(family: str, pretrained_class: type, base_class: type,
                       max_positions: Callable[[object], Optional[int]] = lambda c: c.max_position_embeddings,
                       position_limit: Optional[Callable[[object], str]] = None) -> Adapter:
    """The adapter of a family whose base model holds ``encoder.layer`` of BertLayer clones (same sub-module
    names, same math, same config fields): BERT itself, RoBERTa, XLM-R, CamemBERT, ELECTRA."""
    return Adapter(family=family, pretrained_class=pretrained_class, base_class=base_class, encoder_attr="encoder",
                   layer_parts=_parts, unsupported_reason=_unsupported,
                   encoder_output=lambda h: BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=h),
                   max_positions=max_positions, position_limit=position_limit)


ADAPTER = bert_layer_adapter("BERT", hf.BertPreTrainedModel, hf.BertModel)
