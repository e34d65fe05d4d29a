"""bertsilicon.encode on the real MiniLM: accuracy against a float64 reference, bit-identical vectors whatever a
text is batched with (every precision, cpu backend), pooling / normalization from a sentence-transformers config,
long texts (truncate counted, chunk = mean of the windows)."""
import json
import random

import numpy as np
import pytest
import torch

import bertsilicon
from bertsilicon import data
from bertsilicon.encode.batching import encode_texts
from bertsilicon.encode.embedder import Embedder, ModelError, resolve
from bertsilicon.models.students import minilm_path


@pytest.fixture(scope="module")
def texts():
    # real paragraphs of varied length, a few over the 256-token limit of all-MiniLM-L6-v2, in random order
    c = data.corpus("pydoc").subset(64, seed=11).texts
    random.Random(5).shuffle(c)
    return c


@pytest.fixture(scope="module")
def embedders():
    return {}


def _embedder(embedders, precision, **options):
    key = (precision, tuple(sorted(options.items())))
    if key not in embedders:
        embedders[key] = Embedder(resolve(precision=precision, **options))
    return embedders[key]


@pytest.fixture(scope="module")
def checked(texts):
    """The texts checked against references: ten of them and the longest (over the 256-token limit)."""
    return texts[:10] + [max(texts, key=len)]


@pytest.fixture(scope="module")
def references(checked):
    """float64 and float32 references of the checked texts."""
    return {dtype: _reference(checked, dtype) for dtype in (torch.float64, torch.float32)}


def _reference(texts, dtype, max_length=256):
    """sentence-transformers' recipe (mean over real tokens, L2 normalize) on the HF model in ``dtype``."""
    tok = bertsilicon.load_tokenizer()
    model = bertsilicon.load_student("minilm-l6", dtype=dtype)
    out = []
    with torch.inference_mode():
        for t in texts:
            enc = tok([t], truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            v = h.sum(0) / h.shape[0]
            out.append((v / v.norm()).double().numpy())
    return np.stack(out)


def test_fp32_within_twice_torch_fp32_error_of_float64(checked, embedders, references):
    ref = references[torch.float64]
    torch_err = np.abs(references[torch.float32] - ref).max()
    got, counts = encode_texts(_embedder(embedders, "fp32"), checked, 2048)
    assert got.dtype == np.float32 and got.shape == (len(checked), 384)
    assert np.abs(got - ref).max() <= 2 * torch_err + 1e-6
    assert counts.texts == len(checked) and counts.truncated >= 1  # the longest is over 256 tokens


@pytest.mark.parametrize("precision,min_cos", [("bf16", 0.995), ("fp16", 0.999), ("int8", 0.995)])
def test_low_precision_cosine_against_float64(checked, embedders, references, precision, min_cos):
    ref = references[torch.float64]
    got, _ = encode_texts(_embedder(embedders, precision), checked, 2048)
    cos = (got.astype(np.float64) * ref).sum(1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= min_cos


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8"])
def test_vector_does_not_depend_on_batch_budget_or_padding(texts, embedders, precision):
    """Bit-identical alone, in a batch of 64, and under two token budgets (cpu backend)."""
    assert bertsilicon.ops.backend_status()["cpu"] is None  # the C++ kernels serve these layers
    emb = _embedder(embedders, precision)
    batch64, _ = encode_texts(emb, texts, 64 * 256)                      # one batch of 64
    budgets, _ = encode_texts(emb, texts[::-1], 700)                     # other neighbours, another budget
    alone = np.stack([encode_texts(emb, [t], 256)[0][0] for t in texts[:6]])
    assert np.array_equal(batch64, budgets[::-1])
    assert np.array_equal(batch64[:6], alone)


def test_api_matches_the_pipeline_and_checks_arguments(texts, embedders):
    got = bertsilicon.encode(texts[:5], precision="fp32", max_batch_tokens=300)
    assert np.array_equal(got, encode_texts(_embedder(embedders, "fp32"), texts[:5], 4096)[0])
    with pytest.raises(TypeError, match="sequence of strings"):
        bertsilicon.encode("one string")
    with pytest.raises(ValueError, match="texts is empty"):
        bertsilicon.encode([])
    with pytest.raises(ValueError, match="max_batch_tokens must be an int >= the model's max_length \\(256\\)"):
        bertsilicon.encode(["a"], max_batch_tokens=100)
    with pytest.raises(ModelError, match="precision='int4' is unknown"):
        resolve(precision="int4")
    with pytest.raises(ModelError, match="not a directory"):
        resolve(model="/nonexistent/model")


def _st_dir(tmp_path, pooling_flags, normalize, max_seq_length=128):
    """A sentence-transformers directory over the real MiniLM's files, with its own pooling config."""
    src = minilm_path()
    d = tmp_path / "st"
    (d / "1_Pooling").mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("modules.json", "sentence_bert_config.json"):
            (d / f.name).symlink_to(f)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling_flags}))
    return d


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len"])
def test_pooling_read_from_a_sentence_transformers_dir(tmp_path, texts, mode):
    """Against sentence-transformers itself (torch fp32) on the same directory: within 2x its float32 error."""
    from sentence_transformers import SentenceTransformer

    flag = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}[mode]
    d = _st_dir(tmp_path, {flag: True}, normalize=False)
    config = resolve(model=str(d), precision="fp32")
    assert (config.pooling, config.normalize, config.max_length) == (mode, False, 128)
    got, _ = encode_texts(Embedder(config), texts[:8], 4096)
    st = SentenceTransformer(str(d), device="cpu")
    want32 = st.encode(texts[:8], batch_size=4)
    want64 = st.double().encode(texts[:8], batch_size=4, convert_to_tensor=True).numpy()
    assert np.abs(got - want64).max() <= 2 * np.abs(want32 - want64).max() + 1e-6


def test_unsupported_st_modules_are_errors(tmp_path):
    d = _st_dir(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, normalize=True)
    with pytest.raises(ModelError, match="supports exactly one of"):
        resolve(model=str(d))
    modules = json.loads((d / "modules.json").read_text())
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    dense = {"path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (d / "modules.json").write_text(json.dumps(modules + [dense]))
    with pytest.raises(ModelError, match="module 'sentence_transformers.models.Dense'.*not supported"):
        resolve(model=str(d))


def test_a_saved_artifact_encodes_as_the_model_that_was_saved(tmp_path, texts):
    """A ``bertsilicon.save`` directory as the model: its own precision (asking for another is an error), the same
    vectors as the optimized model it was saved from, computed the same way."""
    model = bertsilicon.optimize(bertsilicon.load_student("minilm-l6"), "int8", smooth=0.5)
    bertsilicon.save(model, tmp_path / "art", tokenizer=bertsilicon.load_tokenizer())
    with pytest.raises(ModelError, match="leave precision unset"):
        resolve(model=str(tmp_path / "art"), precision="int8")
    config = resolve(model=str(tmp_path / "art"), max_length=128)
    assert config.precision == "artifact"
    got = encode_texts(Embedder(config), texts[:6], 4096)[0]
    tok = bertsilicon.load_tokenizer()
    with torch.no_grad():
        for text, vector in zip(texts[:6], got):
            enc = tok([text], truncation=True, max_length=128, return_tensors="pt")
            want = model(**enc).last_hidden_state[0].double().mean(0)  # mean pooling (no padding: one text)
            if config.normalize:
                want = torch.nn.functional.normalize(want, dim=0)
            assert torch.allclose(torch.as_tensor(vector, dtype=torch.float64), want, rtol=1e-6, atol=1e-7)


def test_long_texts_chunk_into_overlapping_windows_mean_pooled(texts, embedders):
    emb = _embedder(embedders, "fp32", max_length=32, long="chunk")
    long_text = max(texts, key=len)
    (windows,), n_long = emb.windows([long_text])
    body = bertsilicon.load_tokenizer()(long_text, add_special_tokens=False)["input_ids"]
    assert n_long == 1 and len(windows) >= 3
    assert all(len(w) <= 32 and w[0] == 101 and w[-1] == 102 for w in windows)
    assert sorted({t for w in windows for t in w[1:-1]}) == sorted(set(body))  # every token in some window
    got, counts = encode_texts(emb, [long_text], 4096)
    mean = emb.pool(windows).mean(0)
    assert np.array_equal(got[0], (mean / np.linalg.norm(mean)).astype(np.float32))
    assert (counts.chunked, counts.truncated) == (1, 0)
    truncated = _embedder(embedders, "fp32", max_length=32)
    got_t, counts_t = encode_texts(truncated, [long_text], 4096)
    assert (counts_t.chunked, counts_t.truncated) == (0, 1)
    first = truncated.pool([windows[0]])[0]
    assert np.array_equal(got_t[0], (first / np.linalg.norm(first)).astype(np.float32))
