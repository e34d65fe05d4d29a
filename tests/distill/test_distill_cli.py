"""`bertsilicon distill` end to end on the real MiniLM (a 1-layer student, 2 steps, a few texts) with a
checkpoint and a resume; the demo's retrieval metric against a loop."""
from __future__ import annotations

import json

import pytest
import torch

from bertsilicon.cli import build_parser, main
from bertsilicon.distill.demo import retrieval_overlap
from test_distill_losses import one_thread  # noqa: F401  (autouse: small models run on one thread)


def test_distill_subcommand_is_registered():
    args = build_parser().parse_args(["distill", "--teacher", "minilm-l6", "--student", "bert-L3-H384", "--steps", "7",
                                      "--losses", "hidden_mse=2,attention_kl", "--layer-map", "0,2,4"])
    assert (args.steps, args.student, args.losses, args.layer_map) == (7, "bert-L3-H384",
                                                                       {"hidden_mse": 2.0, "attention_kl": 1.0}, [0, 2, 4])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--losses", "hidden_mse=x"])


def test_distill_cli_trains_checkpoints_and_resumes(tmp_path, capsys):
    common = ["distill", "--teacher", "minilm-l6", "--student", "minilm-l6:num_hidden_layers=1", "--batch-size", "4",
              "--max-length", "24", "--max-texts", "8", "--eval-texts", "30", "--threads", "1",
              "--checkpoint-dir", str(tmp_path), "--lr", "1e-4", "--freeze-embeddings"]
    assert main([*common, "--steps", "2", "--json", str(tmp_path / "a.json"), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    _check_student_folder(tmp_path / "s")
    assert "student layers learn from teacher layers [5]" in out and "step      2: top-10 overlap" in out
    hist = json.loads((tmp_path / "a.json").read_text())["history"]
    assert len(hist["loss"]) == 2 and hist["eval"][-1]["step"] == 2
    assert 0 <= hist["eval"][-1]["knn_accuracy"] <= 1
    ckpt = tmp_path / "step-000002.safetensors"
    assert ckpt.is_file()
    assert main([*common, "--steps", "3", "--resume", str(ckpt), "--json", str(tmp_path / "b.json")]) == 0
    hist_b = json.loads((tmp_path / "b.json").read_text())["history"]
    assert hist_b["step"] == [1, 2, 3] and hist_b["loss"][:2] == hist["loss"]
    assert (tmp_path / "step-000003.safetensors").is_file()


def _check_student_folder(folder):
    """A folder that from_pretrained and SentenceTransformer load: the model's own weight names only, and the
    sentence-transformers pipeline (mean pooling over real tokens, L2 norm) on the same weights."""
    from safetensors import safe_open
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith(("student.", "projections.", "optimizer"))
                         or "exp_avg" in k or "rng" in k]
    model, tok = AutoModel.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))
    assert model.config.num_hidden_layers == 1
    texts = ["Return a new sorted list.", "Open the file and return a corresponding file object, or raise."]
    b = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**b).last_hidden_state.double()
    m = b["attention_mask"][..., None].double()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    got = torch.from_numpy(SentenceTransformer(str(folder), device="cpu").encode(texts)).double()
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-5


def test_retrieval_overlap_against_loops():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(23, 5, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(a + 0.4 * torch.randn(23, 5, generator=g, dtype=torch.float64), dim=-1)
    k = 4

    def top(e, i):
        sims = [(float(e[i] @ e[j]), j) for j in range(len(e)) if j != i]
        return {j for _, j in sorted(sims, reverse=True)[:k]}

    want = sum(len(top(a, i) & top(b, i)) for i in range(23)) / (23 * k)
    assert retrieval_overlap(a, b, k) == pytest.approx(want, abs=1e-12)
    assert 0 < want < 1
    assert retrieval_overlap(a, a, k) == 1.0
