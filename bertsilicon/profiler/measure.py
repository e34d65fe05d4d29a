"""``measure=True``: time each layer of the model on the current device with forward hooks and compare
with the report's prediction; on a CUDA GPU with NVML (``pynvml``) also read the energy counter."""
from __future__ import annotations

import statistics
import time
from typing import Dict, List, Optional, Tuple


def _layer_modules(model) -> List[Tuple[str, object]]:
    """(report layer name, module) for embeddings, each encoder layer and the pooler."""
    base = getattr(model, "base_model", model)
    mods = []
    if getattr(base, "embeddings", None) is not None:
        mods.append(("embeddings", base.embeddings))
    stack = getattr(getattr(base, "encoder", None), "layer", None)
    if stack is None:
        stack = getattr(getattr(base, "transformer", None), "layer", None)  # DistilBERT
    for i, layer in enumerate(stack or []):
        mods.append((f"layer {i}", layer))
    if getattr(base, "pooler", None) is not None:
        mods.append(("pooler", base.pooler))
    return mods


def _build(model_or_config, precision: str):
    """A model to time: the given model, or a random-weight one built from a name/config."""
    import torch

    if hasattr(model_or_config, "named_modules"):
        return model_or_config
    if precision == "int8":
        raise ValueError("measure=True with precision='int8' needs a model: pass "
                         "bertsilicon.optimize(model, precision='int8') (a plain HF model has no int8 path)")
    from transformers import AutoModel

    from ..models.students import student_config

    cfg = student_config(model_or_config) if isinstance(model_or_config, str) else model_or_config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(cfg, dtype=dtype)
    return model.to(device).eval()


def _nvml_energy_j(device) -> Optional[float]:
    """Total energy counter of the GPU in joules (NVML, Volta+), or None without pynvml."""
    try:
        import pynvml  # optional: not a dependency
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # mJ -> J
    except Exception:  # pragma: no cover - depends on driver permissions
        return None


def measure_report(report, model_or_config, attention_mask, repeats: int = 5) -> Dict:
    import torch

    model = _build(model_or_config, report.precision)
    param = next(model.parameters())
    device = param.device
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    B, S = report.batch_size, report.seq_len
    gen = torch.Generator().manual_seed(0)
    vocab = report.arch.vocab
    ids = torch.randint(min(1000, vocab - 1), vocab, (B, S), generator=gen).to(device)
    mask = (torch.as_tensor(attention_mask).to(device) if attention_mask is not None
            else torch.ones(B, S, dtype=torch.long, device=device))
    mods = _layer_modules(model)
    times: Dict[str, List[float]] = {name: [] for name, _ in mods}
    starts: Dict[str, float] = {}
    handles = []
    for name, mod in mods:
        def pre(_m, _a, name=name):
            sync()
            starts[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            sync()
            times[name].append(time.perf_counter() - starts[name])
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    totals = []
    e0 = e1 = None
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)  # warm-up
            for v in times.values():
                v.clear()
            e0 = _nvml_energy_j(device) if cuda else None
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                sync()
                totals.append(time.perf_counter() - t0)
            e1 = _nvml_energy_j(device) if cuda else None
    finally:
        for h in handles:
            h.remove()
    predicted = {layer: d["latency_s"] for layer, d in report.per_layer().items()}
    layers = []
    for name, _ in mods:
        if times[name] and name in predicted:
            meas = statistics.median(times[name][-repeats:])
            layers.append({"layer": name, "predicted_s": predicted[name], "measured_s": meas,
                           "error": (predicted[name] - meas) / meas})
    total_meas = statistics.median(totals)
    notes = []
    if report.hardware.name != "local" and not cuda:
        notes.append(f"Predictions are for {report.hardware.name}; the measurements are on this machine's CPU. "
                     "Use hardware='local' to compare like with like.")
    if len(layers) < len(mods):
        notes.append("Some layers did not run through their modules (replaced or fused): only the total compares.")
    energy = (e1 - e0) / repeats if e0 is not None and e1 is not None else None
    if cuda and energy is None:
        notes.append("No NVML energy reading (pynvml not installed or counter unavailable).")
    return {"device": str(device) if not cuda else torch.cuda.get_device_name(device), "repeats": repeats,
            "layers": layers, "predicted_s": report.totals["latency_s"], "measured_s": total_meas,
            "error": (report.totals["latency_s"] - total_meas) / total_meas, "energy_j": energy, "notes": notes}
