"""The BiLSTM student's folder round trip, and the demo's seed-spread claim (none with one seed)."""
import pytest
import torch

import bertsilicon as bs
from bertsilicon.distill import load_bilstm, save_student
from bertsilicon.distill.bilstm import BiLSTMClassifier, BiLSTMConfig
from bertsilicon.distill.demo import _mean_spread, beats_beyond_spread, claim_line


def test_bilstm_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BiLSTMClassifier(BiLSTMConfig(num_labels=5, embedding_dim=16, hidden_size=8, mlp_hidden=12)).eval()
    save_student(model, bs.load_tokenizer(), tmp_path / "b")
    back = load_bilstm(tmp_path / "b")
    ids = torch.randint(1000, 30522, (3, 11))
    mask = (torch.arange(11)[None] < torch.tensor([[11], [4], [7]])).long()
    assert torch.equal(back(ids, mask).logits, model(ids, mask).logits)
    with pytest.raises(ValueError, match="sentence-transformers"):
        save_student(model, bs.load_tokenizer(), tmp_path / "c", embedding=True)
    with pytest.raises(FileNotFoundError, match="bilstm_config.json"):
        load_bilstm(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        save_student(model, bs.load_tokenizer(), tmp_path / "file")


def test_spread_claim_needs_two_seeds():
    one = {"knn": _mean_spread([0.70])}
    assert beats_beyond_spread(one, {"knn": _mean_spread([0.60])}) is None
    assert "One seed" in claim_line(None, [0]) and "beats" not in claim_line(None, [0]).split("about")[0]
    dist, base = {"knn": _mean_spread([0.70, 0.71, 0.72])}, {"knn": _mean_spread([0.60, 0.62, 0.69])}
    assert beats_beyond_spread(dist, base) == {"knn": False}  # gain 0.04 < the baseline's spread 0.09
    assert beats_beyond_spread(dist, {"knn": _mean_spread([0.60, 0.61, 0.62])}) == {"knn": True}
    assert beats_beyond_spread(dist, {"knn": 0.70}) == {"knn": False}  # a number has spread 0; gain 0.01 < 0.02
    assert "knn NO" in claim_line({"knn": False}, [0, 1, 2])
