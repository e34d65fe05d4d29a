"""hardware="local" prices an optimized model on bertsilicon's own kernels: the calibration record holds
their rates, and an optimized model's rows take them (each GEMM at the precision the optimize report gives
it, attention at the layer's dtype, add+LayerNorm, one layer-call overhead per layer); a plain model's rows
take torch's. Pricing checks use a hand-made Hardware with distinct rates: no timing is asserted."""
import math

import pytest
import torch

from bertsilicon.profiler import calibration, profile
from bertsilicon.profiler.hardware import Hardware
from bertsilicon.profiler.kernel_plan import GEMM_NAMES

pytestmark = pytest.mark.skipif(calibration._kernel_path() == "none", reason="C++ extension not built")

KERNEL_RATES = {"gemm:fp32": 1e9, "gemm:bf16": 2e9, "gemm:int8": 4e9, "attention:fp32": 3e9,
                "attention:bf16": 5e9, "add_layernorm": 7e8}
TORCH_GEMM = 1e8
LAYER_CALL_S, FORWARD_S, LAUNCH_S = 1e-3, 2e-3, 1e-5


def fake_local() -> Hardware:
    """Compute-bound everywhere (huge bandwidth, free element-wise work), one rate per kernel."""
    return Hardware(
        name="local", kind="cpu", peak={"fp32": TORCH_GEMM, "bf16": TORCH_GEMM, "int8": TORCH_GEMM, "fp16": 0.0},
        vector_flops=1e30, bandwidth=1e30, launch_overhead_s=LAUNCH_S, tdp_w=None, process="n/a", source="test",
        int8_float="fp32", static_w=0.0, gemm_curve={p: [(1.0, TORCH_GEMM)] for p in ("fp32", "bf16", "int8")},
        kernel_curves={k: [(1.0, r)] for k, r in KERNEL_RATES.items()}, layer_call_s=LAYER_CALL_S,
        forward_s=FORWARD_S)


def tiny_model(seed=0):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(cfg).eval()


def optimized(precision):
    import bertsilicon

    ids = torch.randint(5, 1000, (3, 24), generator=torch.Generator().manual_seed(1))
    return bertsilicon.optimize(tiny_model(), precision, calibration={"input_ids": ids,
                                                                       "attention_mask": torch.ones_like(ids)})


def rows_of(report, layer):
    return {r["op"]: r for r in report.rows if r["layer"] == layer}


@pytest.fixture
def record(tmp_path, monkeypatch):
    monkeypatch.setenv(calibration.ENV, str(tmp_path / "cal.json"))
    return calibration.calibrate(quick=True, progress=False)


def test_gemms_are_timed_over_weights_beyond_the_caches():
    """A forward reads each weight once: a GEMM is timed round-robin over distinct weights filling
    COLD_WEIGHT_BYTES (bounded), each called in turn."""
    from bertsilicon.profiler.kernel_rates import COLD_WEIGHT_BYTES, MAX_WEIGHT_COPIES, round_robin, weight_copies

    for n_bytes in (4 * 1536 * 384, 4 * 3072 * 768, 7 * 1000 * 1000 + 1):
        n = weight_copies(n_bytes)
        assert n * n_bytes >= COLD_WEIGHT_BYTES and (n - 1) * n_bytes < COLD_WEIGHT_BYTES
    assert weight_copies(COLD_WEIGHT_BYTES * 3) == 2 and weight_copies(64) == MAX_WEIGHT_COPIES
    seen = []
    call = round_robin([lambda i=i: seen.append(i) for i in range(3)])
    for _ in range(7):
        call()
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_record_holds_our_kernels(record):
    assert record["version"] == calibration.VERSION == 4 and record["kernel_path"] == calibration._kernel_path()
    kernels = record["kernels"]
    assert set(kernels["curves"]) == set(KERNEL_RATES)
    for name, curve in kernels["curves"].items():
        assert len(curve) >= 2 and all(f > 0 and r > 0 for f, r in curve), name
        assert [f for f, _ in curve] == sorted(f for f, _ in curve), name
    assert kernels["layer_call_s"] >= 0 and kernels["forward_s"] > 0
    assert record["gemm_curve"]["int8"] == kernels["curves"]["gemm:int8"]  # HF has no int8 GEMM: ours
    hw = calibration.hardware_from_record(record)
    assert hw.layer_call_s == kernels["layer_call_s"] and hw.forward_s == kernels["forward_s"]
    f_lo, r_lo = kernels["curves"]["gemm:int8"][0]
    assert hw.kernel_rate("gemm:int8", f_lo / 10) == r_lo and hw.kernel_rate("nope", 1.0) is None
    assert calibration.load_calibration() == calibration.load_calibration(path=calibration.calibration_path())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_optimized_model_priced_on_our_kernels(precision):
    hw = fake_local()
    model = optimized(precision)
    report = model.bertsilicon_report
    if precision == "int8":  # one GEMM moved up the ladder: its own precision must be priced
        report.layers[1].gemms["up"] = "fp32"
    fused_layers = [m for m in model.modules() if hasattr(m, "gemm_precision") and hasattr(m, "attention_dtype")]
    rep = profile(model, batch_size=2, seq_len=16, hardware=hw)
    assert rep.precision == precision and rep.fused
    for layer_report, module in zip(report.layers, fused_layers):
        layer = f"layer {layer_report.index}"
        rows = rows_of(rep, layer)
        for op, gemm in GEMM_NAMES.items():
            r = rows[op]
            rate = KERNEL_RATES[f"gemm:{layer_report.gemms[gemm]}"]
            assert math.isclose(r["t_compute_s"], r["matmul_flops"] / rate, rel_tol=1e-12), (layer, op)
        att = "bf16" if module.attention_dtype(torch.device("cpu")) == torch.bfloat16 else "fp32"
        scores = rows["attention scores"]
        both = 2 * scores["matmul_flops"]
        assert math.isclose(scores["t_compute_s"], both / KERNEL_RATES[f"attention:{att}"], rel_tol=1e-12)
        assert rows["context"]["t_compute_s"] == rows["softmax"]["t_compute_s"] == 0.0
        for op in ("add+layernorm (attention)", "add+layernorm (ffn)"):
            flops = rows[op]["flops"]  # element-wise only: no matmul
            assert math.isclose(rows[op]["t_compute_s"], flops / KERNEL_RATES["add_layernorm"], rel_tol=1e-12)
        overheads = [r["t_overhead_s"] for r in rows.values()]
        assert sorted(overheads)[-1] == LAYER_CALL_S and sum(overheads) == LAYER_CALL_S  # one call per layer
    assert rows_of(rep, "embeddings")["embeddings (gather + add + norm)"]["t_overhead_s"] == FORWARD_S
    assert "measured rates" in " ".join(rep.notes["model"])


def test_plain_model_priced_on_torch():
    hw = fake_local()
    rep = profile(tiny_model(), batch_size=2, seq_len=16, hardware=hw)
    rows = rows_of(rep, "layer 0")
    for op in GEMM_NAMES:
        r = rows[op]
        assert math.isclose(r["t_compute_s"], r["matmul_flops"] / TORCH_GEMM, rel_tol=1e-12)
        assert r["t_overhead_s"] == r["kernels"] * LAUNCH_S
    assert rows["add+layernorm (ffn)"]["t_overhead_s"] == 2 * LAUNCH_S
