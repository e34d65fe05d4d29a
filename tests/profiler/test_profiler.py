"""Profiler: analytic counts against a traced count of the same HF model, the published reference figures,
real-token counts, roofline/energy arithmetic, reports, calibration, measurement, bad input."""
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bertsilicon as bs
from bertsilicon.profiler import calibration, get_hardware, profile
from bertsilicon.profiler.hardware import HARDWARE, PRECISIONS


def _meta_model(config):
    """The HF base model on the meta device (no weights materialised) with eager (traceable) attention."""
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config, attn_implementation="eager").eval()


def _traced(model, batch, seq):
    """FlopCounterMode's FLOPs: total and per module name (meta tensors: shapes only)."""
    ids = torch.ones(batch, seq, dtype=torch.long, device="meta")
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        model(input_ids=ids)
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    return fc.get_total_flops(), counts


def _layer_prefix(model):
    root = type(model).__name__
    return f"{root}.transformer.layer" if model.config.model_type == "distilbert" else f"{root}.encoder.layer"


def _odd_configs():
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, MobileBertConfig, RobertaConfig

    return [
        ("electra-small-like (embeddings 32 -> 64, no pooler)", ElectraConfig(
            vocab_size=700, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=96, max_position_embeddings=80), 2, 23),
        ("roberta odd", RobertaConfig(vocab_size=800, hidden_size=78, num_hidden_layers=2, num_attention_heads=3,
                                      intermediate_size=100, max_position_embeddings=90), 1, 41),
        ("tinybert4", bs.student_config("tinybert4"), 1, 128),
        ("minilm-l6", bs.student_config("minilm-l6"), 2, 77),
        ("distilbert", bs.student_config("distilbert"), 1, 128),
        ("mobilebert", bs.student_config("mobilebert"), 1, 128),
        ("bert head dim 26, seq 77", BertConfig(vocab_size=1000, hidden_size=78, num_hidden_layers=3,
                                                num_attention_heads=3, intermediate_size=130,
                                                max_position_embeddings=128, type_vocab_size=3), 3, 77),
        ("distilbert odd", DistilBertConfig(vocab_size=999, dim=96, n_layers=2, n_heads=4, hidden_dim=200,
                                            max_position_embeddings=64), 2, 37),
        ("mobilebert 2 ffn", MobileBertConfig(vocab_size=500, hidden_size=96, embedding_size=32,
                                                            intra_bottleneck_size=48, true_hidden_size=48,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            intermediate_size=80, num_feedforward_networks=2,
                                                            hidden_act="gelu"), 2, 19),
        ("mobilebert bottleneck attention", MobileBertConfig(vocab_size=500, hidden_size=64, embedding_size=64,
                                                             trigram_input=False, intra_bottleneck_size=32,
                                                             true_hidden_size=32, num_hidden_layers=1,
                                                             num_attention_heads=2, intermediate_size=48,
                                                             num_feedforward_networks=3,
                                                             use_bottleneck_attention=True), 1, 9),
        ("mobilebert no bottleneck, layernorm", MobileBertConfig(vocab_size=500, hidden_size=64, embedding_size=64,
                                                                 trigram_input=False, use_bottleneck=False,
                                                                 true_hidden_size=64, num_hidden_layers=2,
                                                                 num_attention_heads=4, intermediate_size=96,
                                                                 num_feedforward_networks=1,
                                                                 normalization_type="layer_norm"), 2, 11),
    ]


@pytest.mark.parametrize("label,config,batch,seq", _odd_configs(), ids=[c[0] for c in _odd_configs()])
def test_analytic_counts_equal_flop_counter(label, config, batch, seq):
    model = _meta_model(config)
    total, per_module = _traced(model, batch, seq)
    rep = profile(config, batch_size=batch, seq_len=seq, hardware="h100")
    assert rep.totals["matmul_flops"] == total
    assert rep.totals["macs"] * 2 == total
    # per layer too: each encoder layer's matmuls (projections and both attention products)
    per_layer = {}
    for r in rep.rows:
        per_layer[r["layer"]] = per_layer.get(r["layer"], 0) + r["matmul_flops"]
    prefix = _layer_prefix(model)
    for i in range(rep.arch.layers):
        assert per_layer[f"layer {i}"] == per_module[f"{prefix}.{i}"], f"layer {i}"
    # and every parameter of the HF model (MobileBERT: bottlenecks, NoNorm, 4 FFNs, trigram embedding)
    assert rep.totals["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,gflops,mparams", [
    ("bert-base", 22.35, 109.48), ("tinybert4", 1.247, 14.35), ("minilm-l6", 2.869, 22.71),
    ("distilbert", 11.17, 66.36)])
def test_reference_figures(name, gflops, mparams):
    """The reference table (docs/architecture.md), seq 128 batch 1: matmul FLOPs (2 x MACs, attention matmuls included), params."""
    rep = profile(name, batch_size=1, seq_len=128)
    digits = len(str(gflops).split(".")[1])
    assert round(rep.totals["matmul_flops"] / 1e9, digits) == gflops
    assert round(rep.totals["params"] / 1e6, 2) == mparams
    assert rep.totals["flops"] > rep.totals["matmul_flops"]  # element-wise work is reported on top


def test_paper_figures_are_worked_out():
    rep = profile("bert-base")
    pf = rep.notes["paper_figures"]
    conv = pf["conventions"]
    assert conv["matmul FLOPs incl. attention (ours)"]["bert-base"] == round(rep.totals["matmul_flops"] / 1e9, 4)
    assert "matmul FLOPs with the pooler on all 128 tokens" in pf["reproduces"]["bert-base"]
    assert "matmul FLOPs incl. attention (ours)" in pf["reproduces"]["tinybert4"]
    assert "matmul FLOPs incl. attention (ours)" not in pf["reproduces"]["bert-base"]
    md = rep.to_markdown()
    assert "22.5 G" in md and "1.2 G" in md and "What is not counted" in md


def test_rows_cover_every_op():
    assert bs.profile is profile and callable(bs.design.explore)  # the lazy top-level names
    rep = profile("minilm-l6")
    ops = {r["op"] for r in rep.rows if r["layer"] == "layer 0"}
    assert ops == {"qkv", "attention scores", "softmax", "context", "output projection", "add+layernorm (attention)",
                   "ffn up", "gelu", "ffn down", "add+layernorm (ffn)"}
    assert [r["layer"] for r in rep.rows][0] == "embeddings" and rep.rows[-1]["layer"] == "pooler"
    assert rep.arch.head_dim == 32


def test_attention_mask_counts_real_tokens():
    """Real-token counts equal a traced count of each sequence run alone, unpadded; padded ones are kept."""
    from numerics import ragged_mask

    cfg = bs.student_config("tinybert4", num_hidden_layers=2)
    mask = ragged_mask(5, 77, torch.Generator().manual_seed(3))  # row 0 full, last row fully padded
    lengths = mask.sum(1).tolist()
    rep = profile(cfg, attention_mask=mask, hardware="t4", precision="fp16")
    model = _meta_model(cfg)
    expected = 0
    for n in lengths:
        if n:
            expected += _traced(model, 1, n)[0]
        else:  # a fully padded sequence: no token survives the strip; the pooler still runs on its slot
            expected += 2 * cfg.hidden_size * cfg.hidden_size
    assert rep.totals["matmul_flops"] == expected
    assert rep.tokens == sum(lengths) and rep.padded_tokens == 5 * 77
    padded = profile(cfg, batch_size=5, seq_len=77, hardware="t4", precision="fp16")
    assert rep.padded_totals["matmul_flops"] == padded.totals["matmul_flops"] == _traced(model, 5, 77)[0]
    assert rep.totals["latency_s"] < padded.totals["latency_s"]
    assert "Real vs padded tokens" in rep.to_markdown()
    with pytest.raises(ValueError, match="attention_mask"):
        profile(cfg, attention_mask=mask, batch_size=4, seq_len=77)
    with pytest.raises(ValueError, match="2-D"):
        profile(cfg, attention_mask=mask[0])


@pytest.mark.parametrize("hw,precision", [("t4", "int8"), ("h100", "bf16"), ("xeon-8380", "fp32"), ("l4", "fp16")])
def test_roofline_and_energy_arithmetic(hw, precision):
    """Every row: latency = max(FLOPs/peak, bytes/bandwidth) + kernels x overhead (datasheet device), and
    energy = MACs x E_mac + other FLOPs x E_flop + bytes x E_dram + static W x latency (Horowitz 45 nm)."""
    from bertsilicon.profiler.energy import HOROWITZ_45NM_PJ as H

    rep = profile("tinybert4", batch_size=3, seq_len=77, precision=precision, hardware=hw)
    h = HARDWARE[hw]
    fp = h.int8_float if precision == "int8" else precision
    mac = {"fp32": H["fp32 mult"] + H["fp32 add"], "bf16": H["fp16 mult"] + H["fp16 add"],
           "fp16": H["fp16 mult"] + H["fp16 add"], "int8": H["int8 mult"] + H["int32 add"]}
    flop = {"fp32": (H["fp32 mult"] + H["fp32 add"]) / 2, "fp16": (H["fp16 mult"] + H["fp16 add"]) / 2,
            "bf16": (H["fp16 mult"] + H["fp16 add"]) / 2}
    dram = (H["DRAM 64b read (low)"] + H["DRAM 64b read (high)"]) / 16
    static = 0.3 * h.tdp_w
    for r in rep.rows:
        other = r["flops"] - r["matmul_flops"]
        if r["kind"] == "gemm":
            t_c = r["matmul_flops"] / h.peak[precision]
        elif r["kind"] == "attention":
            t_c = r["matmul_flops"] / h.peak[fp] + other / h.vector_flops
        else:
            t_c = other / h.vector_flops
        lat = max(t_c, r["bytes"] / h.bandwidth) + r["kernels"] * h.launch_overhead_s
        assert math.isclose(r["latency_s"], lat, rel_tol=1e-12)
        e_mac = mac[precision] if r["kind"] == "gemm" else mac[fp]
        e = (r["macs"] * e_mac + other * flop[fp] + r["bytes"] * dram) * 1e-12 + static * lat
        assert math.isclose(r["energy_j"], e, rel_tol=1e-12)
        if r["bytes"]:
            assert math.isclose(r["intensity"], r["flops"] / r["bytes"], rel_tol=1e-12)
        else:  # fused into a neighbour (SDPA's softmax): work but no traffic of its own
            assert r["op"] == "softmax" and r["kernels"] == 0 and r["intensity"] == math.inf
    t = rep.totals
    assert math.isclose(t["latency_s"], sum(r["latency_s"] for r in rep.rows), rel_tol=1e-12)


def test_attention_implementation_changes_traffic_not_flops():
    eager = profile("minilm-l6", batch_size=4, hardware="l4", attn_implementation="eager")
    sdpa = profile("minilm-l6", batch_size=4, hardware="l4")  # HF's default for a config
    assert "sdpa" in " ".join(sdpa.notes["model"]) and "'eager'" in " ".join(eager.notes["model"])
    assert eager.totals["flops"] == sdpa.totals["flops"]
    score_bytes = 3 * 4 * 12 * 128 * 128 * 4  # eager writes the [B, A, S, S] fp32 scores 3 times per layer
    s_e = next(r for r in eager.rows if r["op"] == "attention scores")
    s_f = next(r for r in sdpa.rows if r["op"] == "attention scores")
    assert s_e["bytes"] - s_f["bytes"] == score_bytes + 2 * score_bytes // 3  # (+ reads of scale and mask)
    assert eager.totals["kernels"] - sdpa.totals["kernels"] == 6 * (3 + 1 + 2 - 1)
    model = _meta_model(bs.student_config("minilm-l6"))  # built with eager attention: read from its config
    assert profile(model, batch_size=4, hardware="l4").totals["bytes"] == eager.totals["bytes"]


def test_precision_prices_bytes():
    """Same counts, fewer bytes at lower precision: GEMM weights 4 -> 2 -> 1 bytes."""
    reps = {p: profile("minilm-l6", batch_size=2, precision=p, hardware="a100") for p in ("fp32", "bf16", "int8")}
    gemm_w = {p: sum(r["weight_bytes"] for r in rep.rows if r["kind"] == "gemm") for p, rep in reps.items()}
    assert gemm_w["fp32"] == 2 * gemm_w["bf16"]
    assert gemm_w["bf16"] > gemm_w["int8"] > gemm_w["fp32"] / 4  # int8 weights + fp16 biases
    assert reps["fp32"].totals["bytes"] > reps["bf16"].totals["bytes"] > reps["int8"].totals["bytes"]
    assert len({rep.totals["matmul_flops"] for rep in reps.values()}) == 1
    assert reps["fp32"].totals["energy_compute_j"] > reps["bf16"].totals["energy_compute_j"] > \
        reps["int8"].totals["energy_compute_j"]


def test_real_and_optimized_models():
    """A real model profiles like its config; an 'optimized' model (bertsilicon_report set, encoder layers
    replaced by custom modules) is profiled from its config with fused kernels and its precision."""
    cfg = bs.student_config("minilm-l6")
    model = _meta_model(cfg)
    by_model, by_config = profile(model), profile(cfg)
    assert by_model.totals["matmul_flops"] == by_config.totals["matmul_flops"]
    assert by_model.totals["params"] == by_config.totals["params"]

    class FusedLayer(torch.nn.Module):  # stands in for an optimize() layer: no HF submodules
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    opt = _meta_model(cfg)
    for i in range(len(opt.encoder.layer)):
        opt.encoder.layer[i] = FusedLayer()
    opt.bertsilicon_report = {"precision": "int8", "fused": ["attention", "linear"]}
    rep = profile(opt, hardware="t4")
    assert rep.fused and rep.precision == "int8"
    assert rep.totals["matmul_flops"] == by_config.totals["matmul_flops"]
    eager = profile(cfg, hardware="t4", precision="int8")
    assert rep.totals["kernels"] < eager.totals["kernels"] and rep.totals["bytes"] < eager.totals["bytes"]
    assert profile(opt, hardware="t4", precision="fp16").precision == "fp16"  # an explicit precision wins


def test_sequence_classification_head_is_counted():
    from transformers import AutoModelForSequenceClassification

    cfg = bs.student_config("distilbert", n_layers=1)
    cfg.num_labels = 3
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").eval()
    total, _ = _traced(model, 2, 16)
    rep = profile(model, batch_size=2, seq_len=16)
    assert rep.totals["matmul_flops"] == total
    assert {r["op"] for r in rep.rows if r["layer"] == "head"} == {"pre_classifier", "classifier"}
    assert rep.totals["params"] == sum(p.numel() for p in model.parameters())


def test_report_outputs(tmp_path):
    rep = profile("mobilebert", batch_size=2, seq_len=64, precision="int8", hardware="jetson-agx-orin")
    d = json.loads(rep.to_json(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == d
    assert d["totals"]["matmul_flops"] == rep.totals["matmul_flops"] and d["precision"] == "int8"
    assert d["hardware"]["source"] and d["notes"]["not_counted"] and len(d["rows"]) == len(rep.rows)
    assert set(d["per_layer"]) == {"embeddings", *(f"layer {i}" for i in range(24)), "pooler"}
    md = rep.to_markdown(tmp_path / "r.md")
    assert md.count("| layer 23 |") >= 2 and "Horowitz" in md and "45 nm" in md
    png = rep.plot(tmp_path / "r.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_bad_input():
    with pytest.raises(ValueError, match="known: h100.*t4.*local"):
        profile("minilm-l6", hardware="tpu-v9")
    with pytest.raises(ValueError, match="known: fp32, bf16, fp16, int8"):
        profile("minilm-l6", precision="fp8")
    with pytest.raises(ValueError, match="t4.*supports: fp32, fp16, int8"):
        profile("minilm-l6", precision="bf16", hardware="t4")
    with pytest.raises(ValueError, match="not divisible by num_attention_heads=5"):
        profile(bs.student_config("minilm-l6", num_attention_heads=5))
    with pytest.raises(ValueError, match="batch_size"):
        profile("minilm-l6", batch_size=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        profile("minilm-l6", seq_len=513)
    with pytest.raises(ValueError, match="student 'bert-huge' is unknown"):
        profile("bert-huge")
    with pytest.raises(TypeError, match="model_or_config"):
        profile(3.5)
    with pytest.raises(TypeError, match="hardware"):
        profile("minilm-l6", hardware=7)


def test_hardware_table():
    assert {"h100", "h200", "a100-40gb", "a100-80gb", "l4", "t4", "rtx4090", "jetson-agx-orin", "xeon-8380",
            "epyc-7763"} <= set(HARDWARE)
    for h in HARDWARE.values():
        assert h.source and h.bandwidth > 0 and h.precisions and set(h.precisions) <= set(PRECISIONS)
    assert get_hardware("H100-SXM") is HARDWARE["h100"] and get_hardware("avx2") is HARDWARE["epyc-7763"]
    assert HARDWARE["h100"].peak["fp16"] == 989.4e12 and HARDWARE["t4"].peak["int8"] == 130e12


@pytest.fixture
def calibrated(tmp_path, monkeypatch):
    monkeypatch.setenv(calibration.ENV, str(tmp_path / "cal.json"))
    return calibration.calibrate(quick=True, progress=False)


def test_calibration_drives_local_predictions(calibrated, tmp_path):
    stored = json.loads((tmp_path / "cal.json").read_text())
    assert list(stored["records"]) == [f"cpu:{torch.get_num_threads()}:{calibration._kernel_path()}"]
    assert calibration.load_calibration() == json.loads(json.dumps(calibrated))
    hw = get_hardware("local")
    assert hw.name == "local" and "measured" in hw.source
    for p in ("fp32", "bf16", "int8"):
        curve = calibrated["gemm_curve"][p]
        assert len(curve) == 3 and all(r > 0 for _, r in curve)
        (f0, r0), (f1, r1) = curve[0], curve[-1]
        assert hw.gemm_rate(p, f0 / 10) == r0 and hw.gemm_rate(p, f1 * 10) == r1  # clamped at the ends
        mid = math.sqrt(f0 * f1)
        assert min(r0, r1, curve[1][1]) <= hw.gemm_rate(p, mid) <= max(r0, r1, curve[1][1])
    rep = profile("tinybert4", hardware="local", precision="int8")
    gemm = next(r for r in rep.rows if r["op"] == "ffn up")
    per_kernel = gemm["matmul_flops"]
    assert math.isclose(gemm["t_compute_s"], per_kernel / hw.gemm_rate("int8", per_kernel), rel_tol=1e-12)
    gelu = next(r for r in rep.rows if r["op"] == "gelu")
    assert math.isclose(gelu["t_compute_s"], gelu["flops"] / hw.elementwise_rate("gelu", gelu["flops"]),
                        rel_tol=1e-12)
    assert len(calibrated["elementwise_curve"]["softmax"]) == 2
    # SDPA attention (HF's default) is one kernel priced at the measured fused-attention rate
    att = [r for r in rep.rows if r["layer"] == "layer 0" and r["op"] in ("attention scores", "softmax", "context")]
    both = 2 * att[0]["matmul_flops"]
    assert math.isclose(att[0]["t_compute_s"], both / hw.fused_attention_rate(both), rel_tol=1e-12)
    assert att[1]["t_compute_s"] == att[2]["t_compute_s"] == 0.0 and att[1]["bound"] == "fused"
    eager = profile("tinybert4", hardware="local", precision="int8", attn_implementation="eager")
    att_e = next(r for r in eager.rows if r["op"] == "attention scores")
    assert math.isclose(att_e["t_compute_s"], att_e["matmul_flops"] / hw.attention_rate("fp32", att_e["matmul_flops"])
                        + 2 * 12 * 128 * 128 / hw.elementwise_rate("add", 2 * 12 * 128 * 128), rel_tol=1e-12)
    assert hw.launch_overhead_s == calibrated["launch_overhead_s"] and hw.bandwidth == calibrated["bandwidth"]
    with pytest.raises(ValueError, match="local.*supports"):
        profile("tinybert4", hardware="local", precision="fp16")


def test_measure_times_every_layer(calibrated):
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    rep = profile(cfg, batch_size=2, seq_len=16, hardware="local", measure=True, repeats=2)
    m = rep.measured
    assert [r["layer"] for r in m["layers"]] == ["embeddings", "layer 0", "layer 1", "pooler"]
    for r in m["layers"]:
        assert r["measured_s"] > 0 and math.isclose(r["error"], (r["predicted_s"] - r["measured_s"]) / r["measured_s"])
    assert m["measured_s"] > 0 and m["energy_j"] is None  # no NVML on a CPU
    assert "Measured on" in rep.to_markdown()
    with pytest.raises(ValueError, match="precision='int8' needs a model"):
        profile(cfg, seq_len=16, hardware="local", precision="int8", measure=True)


def test_cli_profile(tmp_path, capsys):
    from bertsilicon.cli import main

    out = tmp_path / "out.json"
    assert main(["profile", "minilm-l6", "--hardware", "t4", "--precision", "int8", "--seq-len", "128",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["precision"] == "int8" and d["hardware"]["name"] == "t4" and d["seq_len"] == 128
    assert "2,869,198,848" in capsys.readouterr().out
    assert main(["profile", "minilm-l6", "--hardware", "nope"]) == 2
    assert "known: h100" in capsys.readouterr().err
    assert main(["profile", "--list-hardware"]) == 0
    assert "NVIDIA T4" in capsys.readouterr().out
