"""Adapters for ``RobertaModel``, ``XLMRobertaModel``, ``CamembertModel`` and their heads (DistilRoBERTa,
all-distilroberta-v1, the multilingual MiniLM students such as paraphrase-multilingual-MiniLM-L12-v2, ...).

Their encoder layers are BertLayer clones (same sub-modules, same math, same config switches), so the
adapters are bert.py's with another class. What differs is the position table: these models number
positions from ``pad_token_id + 1`` (fairseq's ``make_positions``; the padding row is never used for a
real token), so the longest input is ``max_position_embeddings - pad_token_id - 1`` tokens (514 - 1 - 1
= 512 for the released checkpoints), not ``max_position_embeddings``.
"""
from __future__ import annotations

from transformers.models.camembert import modeling_camembert
from transformers.models.roberta import modeling_roberta
from transformers.models.xlm_roberta import modeling_xlm_roberta

from .bert import bert_layer_adapter


def _first_position(config) -> int:
    return (config.pad_token_id or 0) + 1


def _max_positions(config) -> int:
    return config.max_position_embeddings - _first_position(config)


def _position_limit(config) -> str:
    return (f"max_position_embeddings={config.max_position_embeddings} with positions numbered from "
            f"pad_token_id + 1 = {_first_position(config)}: at most {_max_positions(config)} tokens")


_CLASSES = (("RoBERTa", modeling_roberta.RobertaPreTrainedModel, modeling_roberta.RobertaModel),
            ("XLM-RoBERTa", modeling_xlm_roberta.XLMRobertaPreTrainedModel, modeling_xlm_roberta.XLMRobertaModel),
            ("CamemBERT", modeling_camembert.CamembertPreTrainedModel, modeling_camembert.CamembertModel))
ADAPTERS = tuple(bert_layer_adapter(family, pretrained, base, _max_positions, _position_limit)
                 for family, pretrained, base in _CLASSES)
