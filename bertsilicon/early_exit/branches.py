"""FastBERT's branch classifiers (Liu et al., 2020): a classifier after every encoder layer of a sequence
classifier, trained by self-distillation from the model's own final classifier with the backbone frozen.

    ee = attach_branches(model)               # BertForSequenceClassification / DistilBertForSequenceClassification
    train_branches(ee, tokenizer, texts)       # KL(final || branch_l) summed over the layers; only branches learn

A branch has the final head's shape and starts as a copy of it: on the first token's state ``h [N, H]``,
``logits = classifier(act(dense(h)))`` with BERT's pooler (``tanh``) or DistilBERT's pre-classifier (``relu``).
Branch ``l`` (0-based) reads layer ``l``'s output, ``l = 0 .. layers - 2``; the last layer is read by the model's
own head, which stays the model's (its logits at ``speed=0`` are the plain model's).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..models.encoder import FusedEncoder
from ..models.optimize import adapter_for

ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu}


@dataclass(frozen=True)
class HeadParts:
    """The final classifier of a sequence classifier: ``classifier(act(dense(h[:, 0])))``."""

    dense: nn.Linear
    activation: str
    classifier: nn.Linear

    def __call__(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.classifier(ACTIVATIONS[self.activation](self.dense(first_token)))


def head_parts(model: nn.Module) -> HeadParts:
    """The final head of a BERT-style (pooler + classifier) or DistilBERT (pre_classifier + classifier)
    sequence classifier; anything else is a ``TypeError`` naming what is expected."""
    pooler = getattr(getattr(model, "base_model", None), "pooler", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear) and isinstance(getattr(pooler, "dense", None), nn.Linear):
        return HeadParts(pooler.dense, "tanh", classifier)
    if isinstance(classifier, nn.Linear) and isinstance(getattr(model, "pre_classifier", None), nn.Linear):
        return HeadParts(model.pre_classifier, "relu", classifier)
    raise TypeError(f"model must be a BERT (with pooler) or DistilBERT sequence classifier "
                    f"(BertForSequenceClassification, DistilBertForSequenceClassification); got {type(model).__name__}")


class Branch(nn.Module):
    """One branch classifier: ``logits [N, C] = classifier(act(dense(h)))`` on ``h [N, H]`` (cast to the
    branch's dtype)."""

    def __init__(self, hidden: int, num_labels: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.dense = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.dense.weight.dtype)
        return self.classifier(ACTIVATIONS[self.activation](self.dense(h)))


class EarlyExitModel(nn.Module):
    """A sequence classifier (plain or :func:`bertsilicon.optimize`-d) and its branch classifiers
    (``branches[l]`` after layer ``l``). Inference: :func:`bertsilicon.early_exit.classify`."""

    def __init__(self, model: nn.Module, branches: Sequence[Branch]):
        super().__init__()
        self.model = model
        self.head = head_parts(model)  # checks the model's class first
        n = len(encoder_of(model).layer)
        if len(branches) != n - 1:
            raise ValueError(f"branches must hold one classifier per layer but the last ({n - 1}), got {len(branches)}")
        self.branches = nn.ModuleList(branches)

    @property
    def num_layers(self) -> int:
        return len(self.branches) + 1

    @property
    def num_labels(self) -> int:
        return self.head.classifier.out_features

    def classifiers(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The classifier after every layer: the branches, then the model's own head."""
        return [*self.branches, self.head]


def encoder_of(model: nn.Module) -> nn.Module:
    """The module holding the layers (a :class:`~bertsilicon.models.encoder.FusedEncoder` once optimized)."""
    adapter = adapter_for(model)
    if adapter is None:
        raise TypeError(f"model must be a Hugging Face BERT-family sequence classifier; got {type(model).__name__}")
    return getattr(adapter.base_model(model), adapter.encoder_attr)


def is_fused(model: nn.Module) -> bool:
    return isinstance(encoder_of(model), FusedEncoder)


def attach_branches(model: nn.Module) -> EarlyExitModel:
    """``model`` with a branch classifier after every layer but the last, each a copy of the final head."""
    head = head_parts(model)
    layers = len(encoder_of(model).layer)
    branches = []
    for _ in range(layers - 1):
        b = Branch(head.dense.in_features, head.classifier.out_features, head.activation)
        b.dense = copy.deepcopy(head.dense)
        b.classifier = copy.deepcopy(head.classifier)
        branches.append(b)
    return EarlyExitModel(model, branches)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """FastBERT's uncertainty ``-sum p log p / log C`` of ``logits [N, C]`` in float32 (float64 stays), in
    ``[0, 1]``: 0 for a one-hot prediction, 1 for a uniform one."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp = F.log_softmax(x, dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(x.shape[-1])


@torch.no_grad()
def layer_features(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 128,
                   progress: bool = True) -> torch.Tensor:
    """First-token states after every layer, ``[N, layers, H]`` float32, of the plain (not optimized) ``model``."""
    from tqdm.auto import tqdm

    if is_fused(model):
        raise ValueError("model: train the branches on the plain model (before bertsilicon.optimize)")
    was_training = model.training
    model.eval()
    chunks = []
    for c in tqdm(range(0, len(texts), batch_size), desc="layer features", disable=not progress):
        b = tokenizer(list(texts[c:c + batch_size]), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
        states = model.base_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                  output_hidden_states=True).hidden_states[1:]
        chunks.append(torch.stack([s[:, 0] for s in states], 1).float())
    model.train(was_training)
    return torch.cat(chunks)


def train_branches(ee: EarlyExitModel, tokenizer, texts: Sequence[str], steps: int = 400, lr: float = 1e-3,
                   batch_size: int = 64, max_length: int = 128, seed: int = 0, progress: bool = True) -> list[float]:
    """Self-distillation (FastBERT): minimise ``sum_l KL(p_final || p_branch_l)`` over ``texts`` (no labels),
    the backbone and the final head frozen. The first-token states are computed once (the backbone does
    not change), so each step costs only the branches. Returns the loss per step."""
    from tqdm.auto import tqdm

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    features = layer_features(ee.model, tokenizer, texts, max_length=max_length, progress=progress)
    with torch.no_grad():
        teacher = F.softmax(ee.head(features[:, -1].to(ee.head.dense.weight.dtype)).float(), -1)
    params = [p for b in ee.branches for p in b.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    ee.branches.train()
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="branches (self-distillation)", disable=not progress):
        idx = torch.randint(len(texts), (min(batch_size, len(texts)),), generator=gen)
        loss = sum(F.kl_div(F.log_softmax(b(features[idx, l]).float(), -1), teacher[idx], reduction="batchmean")
                   for l, b in enumerate(ee.branches))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    ee.branches.eval()
    return losses


__all__ = ["Branch", "EarlyExitModel", "HeadParts", "attach_branches", "head_parts", "encoder_of", "is_fused",
           "normalized_entropy", "layer_features", "train_branches"]
