"""What the optimize tests on small random models check against the original HF model (test_optimize_models.py,
test_optimize_roberta.py, test_optimize_mobilebert.py): the error where HF defines the output, and the fp32 head check."""
from __future__ import annotations

import copy

import torch

import bertsilicon


def draw_norms_and_biases(model: torch.nn.Module) -> torch.nn.Module:
    """HF's init makes every LayerNorm / NoNorm (1, 0) and every bias 0: a swapped LayerNorm or bias would go
    unseen. Draw them at random (scales in [0.5, 1.5], shifts and biases N(0, 0.1)), from torch's global RNG."""
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__ in ("LayerNorm", "NoNorm"):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.1)
    return model


def rel_error(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor, padded_positions_too: bool) -> float:
    """Relative error on what HF defines: real tokens of token-level outputs (all positions of rows with a real
    token with ``padded_positions_too``); rows with a real token of sequence-level outputs."""
    rows = mask.reshape(-1, mask.shape[-1]).any(-1).reshape(mask.shape[:-1])
    if got.shape[:mask.dim()] == mask.shape:  # token-level output [..., L, ...]
        sel = rows[..., None].expand_as(mask) if padded_positions_too else mask.bool()
    else:
        sel = rows
    g, w = got[sel].double(), want[sel].double()
    return float((g - w).norm() / w.norm())


def assert_fp32_head_matches_hf(m: torch.nn.Module, inputs: dict, unpad: bool):
    """``optimize(m, "fp32")`` keeps the object, its class and ``state_dict`` keys and fuses every layer; the first
    output is within 1e-5 of HF's where HF defines it; ``restore`` gives back HF's output bit for bit. Returns
    the report (for family-specific checks)."""
    ref = copy.deepcopy(m)
    cls, keys = type(m), list(m.state_dict())
    assert bertsilicon.optimize(m, "fp32", unpad=unpad, calibration=None) is m
    assert type(m) is cls and list(m.state_dict()) == keys
    report = m.bertsilicon_report
    assert report.layers and not report.kept and not report.refused
    with torch.no_grad():
        got, want = m(**inputs), ref(**inputs)
    assert rel_error(got[0], want[0], inputs["attention_mask"], padded_positions_too=not unpad) <= 1e-5
    bertsilicon.restore(m)
    with torch.no_grad():
        assert torch.equal(m(**inputs)[0], want[0])
    return report
