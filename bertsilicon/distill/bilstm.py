"""Tang et al. (2019)'s non-transformer student: word embeddings -> one bidirectional LSTM -> MLP -> logits.

    h_fwd, h_bwd = the last real token's forward state and the first token's backward state   [B, hidden]
    logits = W_2 · ReLU(W_1 · [h_fwd; h_bwd] + b_1) + b_2                                        [B, num_labels]

The paper distils a fine-tuned BERT into it with the logit MSE (``losses={"logit_mse": 1, "label_ce": ...}``
in :class:`~bertsilicon.distill.Distiller`). Padding is never read: the sequences are packed by their
attention-mask lengths. ``from_teacher_embeddings`` copies a BERT's word-embedding table (the role the
paper's word2vec vectors play) so student and baseline start from the same pretrained table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch


@dataclass
class BiLSTMConfig:
    """Shapes of the student; ``hidden_size`` is per direction (the paper: 300 embedding, 150 hidden, 400 MLP)."""

    num_labels: int
    vocab_size: int = 30522
    embedding_dim: int = 300
    hidden_size: int = 150
    mlp_hidden: int = 400
    dropout: float = 0.1

    def validate(self) -> "BiLSTMConfig":
        for name in ("num_labels", "vocab_size", "embedding_dim", "hidden_size", "mlp_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"BiLSTMConfig.{name} must be a positive int, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BiLSTMConfig.dropout must be in [0, 1), got {self.dropout!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class BiLSTMClassifier(torch.nn.Module):
    """``forward(input_ids [B, S], attention_mask [B, S]) -> .logits [B, num_labels]`` (float32); other
    keyword arguments of a BERT call (``token_type_ids``, ``output_hidden_states``) are accepted and unused."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        self.config = config.validate()
        self.embeddings = torch.nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        self.lstm = torch.nn.LSTM(config.embedding_dim, config.hidden_size, batch_first=True, bidirectional=True)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * config.hidden_size, config.mlp_hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(config.mlp_hidden, config.num_labels))

    @classmethod
    def from_teacher_embeddings(cls, config: BiLSTMConfig, teacher, seed: int = 0) -> "BiLSTMClassifier":
        """A student (random weights drawn with ``seed``) whose embedding table is the teacher's word
        embeddings; ``config.embedding_dim`` must equal the teacher's width."""
        table = teacher.get_input_embeddings().weight
        if tuple(table.shape) != (config.vocab_size, config.embedding_dim):
            raise ValueError(f"teacher word embeddings are {tuple(table.shape)}; the config asks for "
                             f"({config.vocab_size}, {config.embedding_dim}) (vocab_size, embedding_dim)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
        with torch.no_grad():
            model.embeddings.weight.copy_(table)
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask=None, **unused):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected {tuple(input_ids.shape)}")
        lengths = attention_mask.sum(1).clamp_min(1).cpu()  # a fully padded row reads its first token
        x = self.dropout(self.embeddings(input_ids))
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: [2, B, hidden] = last forward state, last backward state
        features = self.dropout(torch.cat([h[0], h[1]], dim=-1))
        return SimpleNamespace(logits=self.mlp(features))


__all__ = ["BiLSTMConfig", "BiLSTMClassifier"]
