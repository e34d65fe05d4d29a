"""Student configurations, the real MiniLM (offline), and the real-text corpus."""
import pytest
import torch

import bertsilicon
from bertsilicon import data


@pytest.mark.parametrize("name, params_m", [("bert-base", 109.48), ("distilbert", 66.36), ("tinybert4", 14.35),
                                             ("minilm-l6", 22.71)])
def test_published_parameter_counts(name, params_m):
    cfg = bertsilicon.student_config(name)
    from transformers import AutoModel

    with torch.device("meta"):
        m = AutoModel.from_config(cfg)
    n = sum(p.numel() for p in m.parameters())
    assert round(n / 1e6, 2) == params_m, f"{name}: {n / 1e6:.3f}M parameters"


def test_compact_berts_and_overrides():
    names = [s for s in bertsilicon.STUDENTS if s.startswith("bert-L")]
    assert len(names) == 24
    cfg = bertsilicon.student_config("bert-L4-H256")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (4, 256, 4, 1024)
    assert bertsilicon.student_config("minilm-l6", num_hidden_layers=3).num_hidden_layers == 3
    mb = bertsilicon.student_config("mobilebert")
    assert (mb.hidden_size, mb.num_hidden_layers, mb.true_hidden_size) == (512, 24, 128)
    with pytest.raises(ValueError, match="unknown; expected one of"):
        bertsilicon.student_config("bert-huge")
    with pytest.raises(ValueError, match="no field"):
        bertsilicon.student_config("tinybert4", hidden_sz=3)


def test_real_minilm_loads_offline_and_embeds():
    tok = bertsilicon.load_tokenizer()
    model = bertsilicon.load_student("minilm-l6")
    assert type(model).__name__ == "BertModel"
    texts = data.corpus("pydoc").subset(4, seed=1).texts
    batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        h = model(**batch).last_hidden_state
    assert h.shape[-1] == 384 and bool(torch.isfinite(h).all())
    # real weights: not the random init of the same config
    rnd = bertsilicon.load_student("minilm-l6", pretrained=False)
    assert not torch.equal(rnd.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="only 'minilm-l6' ships real weights"):
        bertsilicon.load_student("tinybert4", pretrained=True)


def test_corpora_are_real_and_labelled():
    p = data.corpus("pydoc")
    assert len(p) > 1000 and len(set(p.labels)) > 50 and sum(map(len, p.texts)) > 200_000
    d = data.corpus("docstrings")
    assert len(d) > 500 and {"json", "re", "collections"} <= set(d.labels)
    assert all(len(t) >= 60 for t in d.texts)
    tr = data.corpus("docstrings-train")  # in-domain training text, held apart from the evaluation's
    assert len(tr) > 500 and not set(tr.labels) & set(d.labels) and not set(tr.texts) & set(d.texts)
    s = d.subset(10, seed=3)
    assert len(s) == 10 and s.texts == d.subset(10, seed=3).texts
    with pytest.raises(ValueError, match="corpus name"):
        data.corpus("wikipedia")


def test_passages_are_the_paragraphs_of_one_topic_joined_in_order():
    p, passages = data.corpus("pydoc"), data.corpus("pydoc-passages")
    by_topic: dict = {}
    for text, topic in zip(p.texts, p.labels):
        by_topic.setdefault(topic, []).append(text)
    joined: dict = {}
    for text, topic in zip(passages.texts, passages.labels):
        joined.setdefault(topic, []).append(text)
    assert joined.keys() == by_topic.keys()
    for topic, texts in joined.items():  # nothing lost, nothing added, order kept, topics not mixed
        assert " ".join(texts) == " ".join(by_topic[topic])
        assert all(len(t) >= data.PASSAGE_CHARS for t in texts[:-1])
        assert len(texts) == 1 or len(texts[-1]) >= data.PASSAGE_CHARS  # a short remainder joined the last one
    long = sum(len(t) >= data.PASSAGE_CHARS for t in passages.texts)
    assert len(passages) > 120 and long > 100  # enough passages of ~512 tokens for batches of 8 at seq 512


def test_minilm_path_override(monkeypatch, tmp_path):
    """BERTSILICON_MINILM_PATH (e.g. an fp16 copy of the model folder) replaces the package's folder; a folder without the
    model's files is an error naming the variable."""
    from bertsilicon.models import students

    real = students.minilm_path()
    monkeypatch.setenv("BERTSILICON_MINILM_PATH", str(real))
    assert students.minilm_path() == real
    monkeypatch.setenv("BERTSILICON_MINILM_PATH", str(tmp_path))
    with pytest.raises(ValueError, match="BERTSILICON_MINILM_PATH=.*not a model folder"):
        students.minilm_path()
