"""int8 on the AVX2 path (forced on wider CPUs): the real MiniLM with SmoothQuant 0.5, its GEMMs on 7-bit
weights (the vpmaddubsw kernel) where the layer stays within the error budget, 8-bit weights (the exact
int16-pair kernel) where calibration needs them, never bf16 / fp32: every one of the 24 GEMMs stays int8,
every sentence's mean-pooled cosine vs HF fp32 >= 0.995, kNN module accuracy within 1 point of fp32."""
import pytest
import torch

import bertsilicon
from bertsilicon.models.eval import embed, knn_accuracy, pooled_cosines
from cpu_isa import cpu_isas

pytestmark = pytest.mark.skipif("avx2" not in cpu_isas(), reason="needs the C++ extension on an AVX2 CPU")


@pytest.fixture(scope="module")
def avx2_path():
    from bertsilicon.backends import cpu as _cpu

    before = _cpu.runtime._C.active_isa()
    _cpu.set_isa("avx2")
    yield
    _cpu.set_isa(before)


@pytest.fixture(scope="module")
def tok():
    return bertsilicon.load_tokenizer()


@pytest.fixture(scope="module")
def int8_model(avx2_path):
    calib = bertsilicon.data.corpus("pydoc").subset(8, seed=11).texts
    return bertsilicon.optimize(bertsilicon.load_student("minilm-l6"), "int8", smooth=0.5, calibration=calib)


def _int8_gemms(model):
    return [m for m in model.modules() if type(m).__name__ == "PreparedLinear" and m.precision == "int8"]


def test_avx2_int8_stays_int8_and_uses_the_7bit_kernel(int8_model, tok, avx2_path):
    texts = (bertsilicon.data.corpus("docstrings").subset(12, seed=7).texts
             + bertsilicon.data.corpus("pydoc").subset(12, seed=7).texts)
    cos = pooled_cosines(embed(int8_model, tok, texts), embed(bertsilicon.load_student("minilm-l6"), tok, texts))
    assert float(cos.min()) >= 0.995, f"worst sentence cosine {float(cos.min()):.5f}"
    report = int8_model.bertsilicon_report
    assert [dict(r.gemms) for r in report.layers] == [dict.fromkeys(("qkv", "o", "up", "down"), "int8")] * 6
    assert all(not r.fallbacks for r in report.layers)
    gemms = _int8_gemms(int8_model)
    assert len(gemms) == 24
    narrow = [g for g in gemms if g.weight_max == 63]
    assert narrow, "no GEMM runs the 7-bit kernel"
    for g in gemms:  # the weights are in the range the GEMM was built for, and the pack follows it
        assert int(g.w_q.abs().max()) <= g.weight_max
        from bertsilicon.backends.cpu import gemm as _cpu_gemm

        assert _cpu_gemm.cached_pack(g.w_q).layout == ("u8s7x16" if g.weight_max == 63 else "s16x16")
    # each 8-bit GEMM is reported with why
    assert sum(len(r.wider_int8) for r in report.layers) == len(gemms) - len(narrow)
    assert "vpmaddubsw" in report.cpu_kernels


def test_avx2_int8_knn_accuracy_within_one_point(int8_model, tok, avx2_path):
    docs = bertsilicon.data.corpus("docstrings").subset(120, seed=3)
    acc32 = knn_accuracy(embed(bertsilicon.load_student("minilm-l6"), tok, docs.texts, batch_size=32, max_length=64),
                         docs.labels)
    acc8 = knn_accuracy(embed(int8_model, tok, docs.texts, batch_size=32, max_length=64), docs.labels)
    assert acc32 > 0.3
    assert acc8 >= acc32 - 0.01, f"int8 kNN accuracy {acc8:.3f} vs fp32 {acc32:.3f}"
