"""torch.export of an optimized model: dynamic batch and length for fp32, bf16 and int8 on a CPU; the exported
program at other shapes against the eager model (fp32: the same numbers; bf16 / int8: the error against the
float64 HF model at most 2x the eager model's + a floor); torch.export.save / load in a fresh process gives the
same outputs. Small random BERT, odd sizes (head dim 26), ragged padding with a fully padded row."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.export import Dim

import bertsilicon
from hf_parity import draw_norms_and_biases
from numerics import ragged_mask

REPO = Path(__file__).resolve().parents[2]
BERT = dict(num_hidden_layers=2, hidden_size=78, num_attention_heads=3, intermediate_size=100,
            max_position_embeddings=64)


def _model():
    import transformers

    cfg = bertsilicon.student_config("tinybert4", **BERT)
    cfg.initializer_range = 0.2
    torch.manual_seed(0)
    return draw_norms_and_biases(transformers.BertModel(cfg).eval())


def _inputs(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (batch, length), generator=g),
            "attention_mask": ragged_mask(batch, length, g)}


def _real(out, inputs):
    return out[inputs["attention_mask"].bool()].double()


def _export(model, inputs):
    batch, length = Dim("batch", min=1, max=256), Dim("length", min=2, max=64)
    shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    return torch.export.export(model, (), kwargs=inputs, dynamic_shapes=shapes)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_export_dynamic_shapes_save_load(precision, tmp_path):
    hf = _model()
    model = bertsilicon.optimize(_model(), precision)
    program = _export(model, _inputs(3, 21, seed=1))
    inputs = _inputs(5, 37, seed=2)  # another batch and length than traced
    with torch.no_grad():
        eager = model(**inputs).last_hidden_state
        ref = hf.double()(**inputs).last_hidden_state
        exported = program.module()(**inputs).last_hidden_state
    assert exported.shape == eager.shape
    padded = ~inputs["attention_mask"].bool()
    assert torch.equal(exported[padded], torch.zeros_like(exported[padded]))  # unpad: padded positions are 0
    if precision == "fp32":
        assert torch.equal(exported, eager)
    else:
        err_exported = (_real(exported, inputs) - _real(ref, inputs)).norm()
        err_eager = (_real(eager, inputs) - _real(ref, inputs)).norm()
        assert err_exported <= 2 * err_eager + 1e-6 * _real(ref, inputs).norm(), (err_exported, err_eager)

    torch.export.save(program, tmp_path / "model.pt2")
    torch.save(inputs, tmp_path / "inputs.pt")
    code = textwrap.dedent(f"""
        import torch, bertsilicon.ops.library  # registers the custom ops the program calls
        import transformers.modeling_outputs  # registers the HF output classes with pytree
        program = torch.export.load({str(tmp_path / 'model.pt2')!r})
        with torch.no_grad():
            out = program.module()(**torch.load({str(tmp_path / 'inputs.pt')!r})).last_hidden_state
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), exported)


def test_exported_loaded_artifact(tmp_path):
    """A model loaded from an artifact exports too (its replaced GEMM weights are meta tensors it never reads)."""
    model = bertsilicon.optimize(_model(), "int8")
    loaded = bertsilicon.load(bertsilicon.save(model, tmp_path / "a"))
    inputs = _inputs(4, 29, seed=3)
    with torch.no_grad():
        want = _export(model, _inputs(3, 21, seed=1)).module()(**inputs).last_hidden_state
        got = _export(loaded, _inputs(3, 21, seed=1)).module()(**inputs).last_hidden_state
    assert torch.equal(got, want)
