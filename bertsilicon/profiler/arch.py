"""Shapes of a BERT-family encoder, read from a Hugging Face config (no weights are built).

One :class:`Arch` describes BERT (and the compact BERTs, TinyBERT, MiniLM, BERT-PKD), DistilBERT and
MobileBERT: MobileBERT is a BERT layer with an input bottleneck (``hidden -> true_hidden``), a
key/query bottleneck, ``num_ffn`` stacked FFNs, an output bottleneck and ``NoNorm`` (x * w + b) in place
of LayerNorm; its embeddings are a 128-wide table, a trigram concat (3 x 128) and a dense to ``hidden``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class Arch:
    family: str                 # "bert" | "distilbert" | "mobilebert"
    layers: int
    hidden: int                 # width of the residual stream between layers
    heads: int
    intermediate: int           # FFN inner width
    vocab: int
    max_positions: int
    type_vocab: int             # 0: no token-type table (DistilBERT)
    embedding_size: int         # word-embedding width (MobileBERT 128; else = hidden)
    embedding_project: bool = False  # ELECTRA-small: every embedding table and the LayerNorm E wide, then dense E -> H
    trigram: bool = False       # MobileBERT trigram input: concat of 3 shifted embeddings -> dense
    true_hidden: int = 0        # width inside the layer (MobileBERT bottleneck); 0 -> hidden
    bottleneck: bool = False    # MobileBERT input/output bottlenecks
    kq_shared_bottleneck: bool = False
    bottleneck_attention: bool = False
    num_ffn: int = 1
    norm: str = "layernorm"     # "layernorm" | "nonorm"
    act: str = "gelu"
    pooler: bool = True
    name: str = ""

    @property
    def inner(self) -> int:
        """Width of attention and FFN inputs/outputs inside a layer (= hidden unless bottlenecked)."""
        return self.true_hidden or self.hidden

    @property
    def head_dim(self) -> int:
        return self.inner // self.heads

    def describe(self) -> str:
        s = f"L{self.layers} H{self.hidden} A{self.heads} F{self.intermediate} (head dim {self.head_dim})"
        if self.family == "mobilebert":
            s += f", bottleneck {self.inner}, {self.num_ffn} FFNs, embedding {self.embedding_size}"
        elif self.embedding_project:
            s += f", embeddings {self.embedding_size} -> {self.hidden}"
        return s

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config field {name} must be a positive int, got {value!r}")
    return value


def bert_arch(layers: int, hidden: int, heads: int, intermediate: int, *, vocab: int = 30522,
              max_positions: int = 512, type_vocab: int = 2, pooler: bool = True, act: str = "gelu",
              name: str = "") -> Arch:
    """A plain BERT shape (what the student-design explorer sweeps); validated like a config."""
    return validate(Arch("bert", layers, hidden, heads, intermediate, vocab, max_positions, type_vocab, hidden,
                         pooler=pooler, act=act, name=name))


def validate(a: Arch) -> Arch:
    for f in ("layers", "hidden", "heads", "intermediate", "vocab", "max_positions", "embedding_size", "num_ffn"):
        _positive(f, getattr(a, f))
    if a.inner % a.heads:
        width = "true_hidden_size" if a.true_hidden else "hidden_size"
        raise ValueError(f"impossible shape: {width}={a.inner} is not divisible by num_attention_heads={a.heads} "
                         f"(head dim would be {a.inner / a.heads:.3g}); pick heads that divide {a.inner}")
    return a


def arch_from_config(config, pooler: Optional[bool] = None, name: str = "") -> Arch:
    """The :class:`Arch` of a ``BertConfig`` / ``DistilBertConfig`` / ``MobileBertConfig`` (or any config
    with the same fields and ``model_type``). ``pooler``: whether the model has a pooler (default: the
    base model's — BERT/MobileBERT yes, DistilBERT and ELECTRA no). RoBERTa, XLM-R, CamemBERT and ELECTRA count
    as BERT (the same layers; ELECTRA-small's embeddings are narrower, then projected: ``embedding_project``)."""
    mt = getattr(config, "model_type", None)
    name = name or getattr(config, "name_or_path", "") or mt or ""
    if mt == "distilbert":
        a = Arch("distilbert", config.n_layers, config.dim, config.n_heads, config.hidden_dim, config.vocab_size,
                 config.max_position_embeddings, 0, config.dim, act=str(config.activation),
                 pooler=bool(pooler) if pooler is not None else False, name=name)
    elif mt == "mobilebert":
        true_hidden = config.intra_bottleneck_size if config.use_bottleneck else config.hidden_size
        a = Arch("mobilebert", config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                 config.intermediate_size, config.vocab_size, config.max_position_embeddings, config.type_vocab_size,
                 config.embedding_size, trigram=bool(config.trigram_input), true_hidden=true_hidden,
                 bottleneck=bool(config.use_bottleneck), kq_shared_bottleneck=bool(config.key_query_shared_bottleneck),
                 bottleneck_attention=bool(config.use_bottleneck_attention),
                 num_ffn=config.num_feedforward_networks,
                 norm="nonorm" if config.normalization_type == "no_norm" else "layernorm",
                 act=str(config.hidden_act),
                 pooler=(bool(config.classifier_activation) if pooler is None else bool(pooler)), name=name)
    elif mt in ("bert", "roberta", "xlm-roberta", "electra", "ernie", "camembert") or (
            mt is None and hasattr(config, "num_hidden_layers")):
        emb = getattr(config, "embedding_size", None) or config.hidden_size
        project = emb != config.hidden_size
        if project and mt != "electra":
            raise ValueError(f"config model_type {mt!r} with embedding_size != hidden_size is not supported")
        # ELECTRA's base model has no pooler (its heads pool themselves)
        has_pooler = mt != "electra" if pooler is None else bool(pooler)
        a = Arch("bert", config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                 config.intermediate_size, config.vocab_size, config.max_position_embeddings,
                 getattr(config, "type_vocab_size", 2), emb, embedding_project=project, act=str(config.hidden_act),
                 pooler=has_pooler, name=name)
    else:
        raise ValueError(f"config: unsupported model_type {mt!r}; expected a BertConfig, DistilBertConfig or "
                         "MobileBertConfig (or a student name from bertsilicon.STUDENTS)")
    return validate(a)
