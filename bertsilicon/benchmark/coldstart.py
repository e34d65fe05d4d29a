"""Cold start and peak memory of one provider: fresh processes, import -> model ready -> first output.

Each process (``python -m bertsilicon.benchmark.coldstart SPEC START``) is timed from ``START``, the wall clock
of its parent just before it spawns it: the interpreter starts, imports torch and the benchmark, loads the Hugging
Face fp32 student from disk, builds the provider (its engine imported there) and embeds one sentence. Files an earlier build wrote to the run's scratch folder (ONNX exports, the
CTranslate2 model, NNCF and QDQ int8 models) are loaded, not made again: that is what a deployment loads. Work a
provider does in memory on every build (ORT ``quantize_dynamic``, ``bertsilicon.optimize``, torch dynamic
quantization) is part of its cold start. Reported: medians over ``repeats`` processes of ``import_s``,
``ready_s`` (model load + build), ``first_s`` (first call) and ``total_s``, and the peak RSS of the process
(``VmHWM``, MiB: the high-water mark of its own address space; ``ru_maxrss`` would carry the parent's across exec).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def _cacheable(cache: dict) -> dict:
    """The entries of a build cache another process can reuse: paths of files that exist, and plain data."""
    return {k: v for k, v in cache.items()
            if (isinstance(v, str) and os.path.exists(v)) or (isinstance(v, dict) and _is_json(v))}


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def measure(key: str, model_name: str, overrides: dict, workdir: str, cache: dict, threads: int, batch,
            repeats: int = 3, timeout_s: float = 600) -> dict:
    """Medians over ``repeats`` fresh processes of provider ``key`` (see the module docstring); ``batch`` is the
    one-sentence :class:`~bertsilicon.benchmark.providers.Batch` they embed. A process that fails gives
    ``{"error": ...}``."""
    import torch

    spec = os.path.join(workdir, f"coldstart-{key.replace(' ', '-')}.json")
    ids = spec[:-5] + ".pt"
    torch.save({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}, ids)
    with open(spec, "w") as f:
        json.dump({"key": key, "model": model_name, "overrides": overrides, "workdir": workdir,
                   "cache": _cacheable(cache), "threads": threads, "ids": ids}, f)
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-m", "bertsilicon.benchmark.coldstart", spec, repr(time.time())],
                              capture_output=True,
                              text=True, timeout=timeout_s, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"exit {proc.returncode}: {tail[:300]}"}
        runs.append(json.loads(lines[-1]))
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["processes"] = repeats
    return out


def peak_rss_mib(status: str = "/proc/self/status") -> float:
    """The process's peak resident set (``VmHWM``), MiB."""
    with open(status) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{status} has no VmHWM line")


def _child(spec_path: str, start: float) -> dict:
    import torch

    from bertsilicon.benchmark.catalog import provider
    from bertsilicon.benchmark.providers import Batch, BuildContext
    from bertsilicon.models.students import load_student

    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    ids = torch.load(spec["ids"])
    batch = Batch(ids["input_ids"], ids["attention_mask"])
    t_import = time.time()
    model = load_student(spec["model"], **spec["overrides"])
    ctx = BuildContext(model, spec["model"], batch, spec["threads"], spec["workdir"], dict(spec["cache"]))
    run = provider(spec["key"]).build(ctx)
    t_ready = time.time()
    with torch.inference_mode():
        out = run(batch)
    t_first = time.time()
    if not torch.isfinite(out).all():
        raise RuntimeError("the first output is not finite")
    return {"import_s": t_import - start, "ready_s": t_ready - t_import, "first_s": t_first - t_ready,
            "total_s": t_first - start, "peak_rss_mib": peak_rss_mib()}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], float(sys.argv[2]))))
