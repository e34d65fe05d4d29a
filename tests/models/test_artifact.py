"""bertsilicon.save / bertsilicon.load: bit-identical round trips (fp32, bf16, int8 with SmoothQuant; a BERT head and
a MobileBERT with tied weights), no fp32 copy of replaced GEMM weights, restore refused, every bad artifact a clear
error naming the file, a VNNI / BF16 artifact loaded with those features hidden, the CLI. Small random models with
odd sizes (head dim 26, length 37) and ragged padding with a fully padded row."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

import bertsilicon
from bertsilicon.models.artifact import MANIFEST, TENSORS, ArtifactError
from bertsilicon.models.tensor_file import sha256
from cpu_isa import cpu_available
from hf_parity import draw_norms_and_biases
from numerics import ragged_mask

REPO = Path(__file__).resolve().parents[2]
B, L = 4, 37
BERT = dict(num_hidden_layers=2, hidden_size=78, num_attention_heads=3, intermediate_size=100,
            max_position_embeddings=64)
MOBILEBERT = dict(num_hidden_layers=2, hidden_size=120, intra_bottleneck_size=78, num_attention_heads=3,
                  intermediate_size=100, embedding_size=40, num_feedforward_networks=2, max_position_embeddings=64)


def _model(family: str, seed: int = 0) -> torch.nn.Module:
    if family == "bert":
        cfg, cls = bertsilicon.student_config("tinybert4", **BERT), transformers.BertForSequenceClassification
    else:
        cfg, cls = bertsilicon.student_config("mobilebert", **MOBILEBERT), transformers.MobileBertForMaskedLM
    cfg.initializer_range = 0.2  # attention scores with a spread of a few units (0.02: every softmax flat)
    torch.manual_seed(seed)
    return draw_norms_and_biases(cls(cfg).eval())


def _inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, 30000, (B, L), generator=g), "attention_mask": ragged_mask(B, L, g)}


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _optimized(family: str, precision: str) -> torch.nn.Module:
    return bertsilicon.optimize(_model(family), precision, smooth=0.5 if precision == "int8" else None)


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    """A saved int8 BERT artifact and the saved model's logits on fresh ragged inputs."""
    model = _optimized("bert", "int8")
    path = bertsilicon.save(model, tmp_path_factory.mktemp("int8") / "artifact")
    return path, _logits(model, _inputs())


def _copy(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    out.mkdir()
    for f in path.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.mark.parametrize("family", ["bert", "mobilebert"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_round_trip_is_bit_identical(family, precision, tmp_path):
    model = _optimized(family, precision)
    inputs = _inputs()
    want = _logits(model, inputs)
    path = bertsilicon.save(model, tmp_path / "artifact")
    loaded = bertsilicon.load(path)
    assert type(loaded) is type(model)
    got = _logits(loaded, inputs)
    assert torch.equal(got, want), f"max diff {(got - want).abs().max():.3e}"
    assert loaded.bertsilicon_report.layers[0].gemms == model.bertsilicon_report.layers[0].gemms
    # a second call with other shapes: still the saved model's numbers
    other = _inputs(seed=7)
    assert torch.equal(_logits(loaded, other), _logits(model, other))


def test_loaded_model_holds_no_fp32_copy_of_replaced_gemm_weights(int8_artifact):
    path, _ = int8_artifact
    loaded = bertsilicon.load(path)
    attention = loaded.bert.encoder.__dict__["original"].layer[0].attention.self
    assert attention.query.weight.is_meta and attention.key.weight.is_meta  # int8: only w_q, w_scale, bias held
    manifest = json.loads((path / MANIFEST).read_text())
    assert "bert.encoder.layer.0.attention.self.query.weight" in manifest["tensors"]["not_stored"]
    assert loaded.bert.encoder.layer[0].qkv.w_q.dtype == torch.int8
    with pytest.raises(ValueError, match="loaded from the artifact .* nothing to restore"):
        bertsilicon.restore(loaded)


def test_tied_weights_stay_tied(tmp_path):
    model = _optimized("mobilebert", "int8")
    loaded = bertsilicon.load(bertsilicon.save(model, tmp_path / "a"))
    assert loaded.cls.predictions.decoder.weight is loaded.mobilebert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------- #
# bad artifacts: each a clear error naming the file, nothing returned                            #
# ---------------------------------------------------------------------------------------------- #
def test_truncated_tensor_file(int8_artifact, tmp_path):
    path = _copy(int8_artifact[0], tmp_path)
    data = (path / TENSORS).read_bytes()
    (path / TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=rf"{TENSORS}: tensor .* ends at byte \d+ of the data.*truncated"):
        bertsilicon.load(path)
    (path / TENSORS).write_bytes(data[:5])
    with pytest.raises(ArtifactError, match=rf"{TENSORS}: 5 bytes, too short"):
        bertsilicon.load(path)


def test_corrupted_tensor_file(int8_artifact, tmp_path):
    path = _copy(int8_artifact[0], tmp_path)
    data = bytearray((path / TENSORS).read_bytes())
    data[-100] ^= 0x40  # one bit of one weight
    (path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{TENSORS}: SHA-256 .* differs .* corrupted"):
        bertsilicon.load(path)


def test_newer_format_version(int8_artifact, tmp_path):
    path = _copy(int8_artifact[0], tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] += 1
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"{MANIFEST} has format version 2.*reads format versions up to 1"):
        bertsilicon.load(path)


def test_plain_hf_checkpoint(tmp_path):
    _model("bert").save_pretrained(tmp_path / "hf")
    with pytest.raises(ArtifactError, match=r"is a plain Hugging Face checkpoint \(bertsilicon.json missing\).*"
                                            r"bertsilicon optimize"):
        bertsilicon.load(tmp_path / "hf")


def test_missing_tensor(int8_artifact, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(int8_artifact[0], tmp_path)
    tensors = load_file(path / TENSORS)
    del tensors["bert.encoder.layer.1.up.w_scale"]
    save_file(tensors, path / TENSORS)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["tensors"]["sha256"] = sha256(path / TENSORS)  # a consistent file that lacks one tensor
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"{TENSORS} lacks 1 tensor\(s\).*bert.encoder.layer.1.up.w_scale"):
        bertsilicon.load(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for a machine without a GPU")
def test_cuda_artifact_without_gpu(int8_artifact, tmp_path):
    path = _copy(int8_artifact[0], tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["prepared_on"] = {"device": "cuda", "arch": "sm_90", "name": "NVIDIA H100"}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"prepared on a GPU \(NVIDIA H100, sm_90\).*no CUDA device"):
        bertsilicon.load(path)


def test_save_refuses_a_model_not_optimized(tmp_path):
    with pytest.raises(ValueError, match="not optimized; call bertsilicon.optimize"):
        bertsilicon.save(_model("bert"), tmp_path / "a")


# ---------------------------------------------------------------------------------------------- #
# an artifact prepared with VNNI / BF16 loaded on a CPU without them                             #
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.skipif(not cpu_available() or not bertsilicon.backends.cpu.cpu_features().get("avx512_vnni"),
                    reason="needs the cpu backend on a CPU with AVX512_VNNI")
def test_loads_with_cpu_features_hidden(int8_artifact, tmp_path):
    path, saved = int8_artifact
    torch.save(_inputs(), tmp_path / "inputs.pt")
    code = textwrap.dedent(f"""
        import torch, bertsilicon
        m = bertsilicon.load({str(path)!r})
        with torch.no_grad():
            torch.save(m(**torch.load({str(tmp_path / 'inputs.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})
        print([n for n in m.bertsilicon_report.notes if 'loaded from' in n][0])
        print(m.bertsilicon_report.cpu_kernels)
    """)
    env = {**os.environ, "BERTSILICON_HIDE_CPU_FEATURES": "avx512_bf16,avx512_vnni",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    here = re.search(r"prepared on the avx512 path, runs on the (.*) path \(weights re-packed for this CPU", run.stdout)
    assert here and set(here.group(1).split()) == {"avx512", "-avx512_bf16", "-avx512_vnni"}, run.stdout
    assert "vpdpbusd" not in run.stdout  # the int8 GEMM of a CPU without VNNI
    got = torch.load(tmp_path / "out.pt")
    # same int8 weights and scales; other kernels (accumulation order, no bf16 attention): close, not equal
    fp32 = _logits(_model("bert"), _inputs())
    assert (got - saved).norm() <= 2 * (saved - fp32).norm() + 1e-4


# ---------------------------------------------------------------------------------------------- #
# the CLI                                                                                        #
# ---------------------------------------------------------------------------------------------- #
def test_cli_writes_a_loadable_artifact(tmp_path):
    from bertsilicon.cli import main

    model = _model("bert")
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "calib.txt").write_text("The quick brown fox.\n\nA second line of calibration text here.\n")
    assert main(["optimize", str(tmp_path / "hf"), "--precision", "int8", "--out", str(tmp_path / "art"),
                 "--calib", str(tmp_path / "calib.txt")]) == 0
    loaded = bertsilicon.load(tmp_path / "art")
    want = bertsilicon.optimize(model, "int8", calibration=["The quick brown fox.",
                                                             "A second line of calibration text here."])
    inputs = _inputs()
    assert torch.equal(_logits(loaded, inputs), _logits(want, inputs))
    assert json.loads((tmp_path / "art" / MANIFEST).read_text())["optimize_args"]["calibration"] == "2 given text(s)"


def test_cli_bad_inputs(tmp_path, capsys):
    from bertsilicon.cli import main

    assert main(["optimize", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is not a Hugging Face checkpoint directory (no config.json)" in capsys.readouterr().err
    _model("bert").save_pretrained(tmp_path / "hf")
    assert main(["optimize", str(tmp_path / "hf"), "--out", str(tmp_path / "o"),
                 "--calib", str(tmp_path / "missing.txt")]) == 2
    assert "--calib" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
