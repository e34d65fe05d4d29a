"""Adapter for ``ElectraModel`` and its heads (ELECTRA-small and other ELECTRA discriminators).

Its encoder layers are BertLayer clones and its positions are BERT's (numbered from 0), so the adapter is
bert.py's with another class. ``embeddings_project`` (present when ``embedding_size != hidden_size``, e.g.
ELECTRA-small's 128 -> 256) runs between the embeddings and the encoder and is left as it is.
"""
from __future__ import annotations

from transformers.models.electra import modeling_electra as hf

from .bert import bert_layer_adapter

ADAPTER = bert_layer_adapter("ELECTRA", hf.ElectraPreTrainedModel, hf.ElectraModel)
