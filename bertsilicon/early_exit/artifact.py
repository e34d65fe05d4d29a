"""An early-exit model on disk: the model as it is (a :func:`bertsilicon.save` artifact once optimized, else
Hugging Face's ``save_pretrained``) and, beside it, the branch classifiers:

* ``early_exit.json``: format version, branch count, hidden size, labels, activation;
* ``early_exit.safetensors``: ``branches.{l}.dense.weight`` ... of every branch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from ..models.artifact import MANIFEST
from .branches import Branch, EarlyExitModel, is_fused

FORMAT = 1
BRANCH_MANIFEST = "early_exit.json"
BRANCH_TENSORS = "early_exit.safetensors"


def save(ee: EarlyExitModel, path: Union[str, Path], tokenizer=None) -> Path:
    """Write ``ee`` at ``path`` (a directory, created). Returns the path."""
    from safetensors.torch import save_file

    from ..models.artifact import save as save_optimized

    if not isinstance(ee, EarlyExitModel):
        raise TypeError(f"ee must be an EarlyExitModel, got {type(ee).__name__}")
    path = Path(path)
    if is_fused(ee.model):
        save_optimized(ee.model, path, tokenizer=tokenizer)
    else:
        ee.model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    first = ee.branches[0] if len(ee.branches) else None
    meta = {"format": FORMAT, "branches": len(ee.branches), "num_labels": ee.num_labels,
            "hidden": ee.head.dense.in_features, "activation": ee.head.activation,
            "dtype": str(first.dense.weight.dtype).replace("torch.", "") if first is not None else "float32"}
    tensors = {f"branches.{k}": v.detach().cpu().contiguous() for k, v in ee.branches.state_dict().items()}
    save_file(tensors, str(path / BRANCH_TENSORS))
    (path / BRANCH_MANIFEST).write_text(json.dumps(meta, indent=1))
    return path


def _branch_manifest(file: Path) -> dict:
    """``early_exit.json`` as a dict of the format this version writes, else a ``ValueError`` naming the file."""
    try:
        meta = json.loads(file.read_text())
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"load: {file} is not valid JSON ({exc})") from exc
    if found != FORMAT:
        raise ValueError(f"load: {file} has format {found!r}; expected an early-exit manifest of format {FORMAT}")
    return meta


def load(path: Union[str, Path], device: Union[None, str, torch.device] = None) -> EarlyExitModel:
    """The early-exit model saved by :func:`save` at ``path`` (eval mode). ``device``: as :func:`bertsilicon.load`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_file, tensor_file = path / BRANCH_MANIFEST, path / BRANCH_TENSORS
    for f in (meta_file, tensor_file):
        if not f.is_file():
            raise FileNotFoundError(f"load: {f} is missing; expected an early-exit model saved by "
                                    "bertsilicon.early_exit.save")
    meta = _branch_manifest(meta_file)
    if (path / MANIFEST).is_file():
        from ..models.artifact import load as load_optimized
        model = load_optimized(path, device=device)
    else:
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True).eval()
        if device is not None:
            model.to(device)
    dtype = getattr(torch, meta["dtype"])
    branches = [Branch(meta["hidden"], meta["num_labels"], meta["activation"]).to(dtype) for _ in range(meta["branches"])]
    ee = EarlyExitModel(model, branches)
    stored = load_file(str(tensor_file))
    state = {k.split(".", 1)[1]: v for k, v in stored.items()}
    try:
        ee.branches.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"load: {tensor_file} does not hold the branches {meta_file} describes ({exc})") from exc
    ee.branches.to(next(model.parameters()).device)
    return ee.eval()


__all__ = ["save", "load", "BRANCH_MANIFEST", "BRANCH_TENSORS"]
