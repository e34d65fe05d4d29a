"""Distiller checkpoints: one safetensors file holding the student, the projections, the AdamW state and the
RNG state; step, config and history in its metadata. Loading one into a :class:`Distiller` built the same
way continues bit-identically (the batch order is a pure function of ``(seed, step)``)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Union

import torch

METADATA_KEY = "bertsilicon.distill"


def save_checkpoint(distiller, path: Union[str, os.PathLike]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"student.{k}": v.detach().clone().contiguous() for k, v in distiller.student.state_dict().items()}
    tensors.update({f"projections.{k}": v.detach().clone().contiguous()
                    for k, v in distiller.projections.state_dict().items()})
    opt = distiller.optimizer.state_dict()
    for pid, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": distiller.step, "param_groups": opt["param_groups"], "config": asdict(distiller.config),
            "history": distiller.history}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def load_checkpoint(distiller, path: Union[str, os.PathLike]) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{str(path)!r} is not a bertsilicon.distill checkpoint (no metadata)")
    meta = json.loads(raw)
    tensors = load_file(str(path))

    def section(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    distiller.student.load_state_dict(section("student."))
    distiller.projections.load_state_dict(section("projections."))
    state: dict = {}
    for k, v in section("optim.").items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    distiller.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    distiller.step = int(meta["step"])
    distiller.history = meta["history"]
