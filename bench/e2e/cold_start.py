"""Cold start and memory of a saved MiniLM-L6 (all-MiniLM-L6-v2) int8 artifact against its peers' artifacts.

``python bench/e2e/cold_start.py [--repeats 5] [--threads 2]``. Preparation (not timed as cold start): the
model is optimized to int8 (``optimize`` timed, with its breakdown) and saved (``bertsilicon.save``); the same
model exported to ONNX and quantized by ONNX Runtime (``quantize_dynamic``, QInt8 weights); an fp32 HF
checkpoint of it; ``torch.export`` of the optimized model (saved with ``torch.export.save``), and an attempt at
AOTInductor packaging of that program.

Each cold start runs in a fresh process, ``--repeats`` times (medians, min-max): after ``import torch`` (the
same for every engine) and with the token ids already in memory, the clock runs from before the engine's own
import to the first embedding of one sentence:

* ``bertsilicon.load`` (+ ``import bertsilicon``) -> first call;
* ONNX Runtime ``InferenceSession`` of the int8 ONNX file -> first run;
* OpenVINO ``compile_model`` of the same int8 ONNX file -> first inference (when ``openvino`` is installed);
* ``torch.export.load`` of the exported program -> first call;
* ``torch._inductor.aoti_load_package`` of the AOTInductor package -> first call (when packaging worked);
* HF ``from_pretrained`` of the fp32 checkpoint -> first call (the reference for memory).

Memory: RSS (``/proc/self/status``) after the first embedding minus RSS after ``import torch`` and the
engine's import (this includes code the engine imports on first use), and the RSS a second copy of the model adds
in the same process, loaded and called once (the model's own memory).
Results: ``bench/results/cpu/cold-start.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "bench" / "results" / "cpu"
SENTENCE = "The quick brown fox jumps over the lazy dog, as every typing test since 1885 has shown."

# The child: argv = engine, artifact path, ids file, threads. Prints one JSON line.
CHILD = r'''
import json, sys, time
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
import torch
engine, path, ids_file, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
ids = torch.load(ids_file)
t0 = time.perf_counter()
if engine == "bertsilicon":
    import bertsilicon, bertsilicon.models.artifact  # the HF modeling code load builds the model class from
    def load():
        return bertsilicon.load(path)
    def call(model):
        with torch.no_grad():
            return model(**ids).last_hidden_state
elif engine == "hf-fp32":
    import transformers
    BertModel = transformers.BertModel  # the modeling code (transformers imports it lazily)
    def load():
        return BertModel.from_pretrained(path, local_files_only=True).eval()
    def call(model):
        with torch.no_grad():
            return model(**ids).last_hidden_state
elif engine in ("torch.export", "aotinductor"):
    import bertsilicon.ops.library, transformers.modeling_outputs  # the custom ops, HF's output classes
    def load():
        return torch.export.load(path).module() if engine == "torch.export" else torch._inductor.aoti_load_package(path)
    def call(model):
        with torch.no_grad():
            out = model(**ids)
        return out[0] if isinstance(out, (list, tuple)) else out.last_hidden_state
elif engine == "onnxruntime":
    import onnxruntime as ort
    def load():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    def call(session):
        return session.run(None, {k: v.numpy() for k, v in ids.items()})[0]
elif engine == "openvino":
    import openvino as ov
    def load():
        return ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
    def call(compiled):
        return compiled({k: v.numpy() for k, v in ids.items()})[0]
t_import, rss0 = time.perf_counter(), rss_kib()
model = load()
t_load = time.perf_counter()
out = call(model)
t_first = time.perf_counter()
rss1 = rss_kib()
again = load()  # a second copy in the same process: the model's own memory, no code imported on first use
call(again)
rss2 = rss_kib()  # before torch.save (its pickling machinery is not the model's memory)
torch.save(torch.as_tensor(out), sys.argv[5])
print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import, "first_call_s": t_first - t_load,
                  "total_s": t_first - t0, "rss_model_mib": (rss1 - rss0) / 1024,
                  "rss_second_copy_mib": (rss2 - rss1) / 1024}))
'''


ENGINES = ("bertsilicon", "onnxruntime", "openvino", "torch.export", "aotinductor", "hf-fp32")


def _prepare(work: Path, threads: int, engines: tuple) -> dict:
    """Every artifact the cold starts read, and what preparing them cost."""
    import torch

    import bertsilicon

    torch.set_num_threads(threads)
    tok = bertsilicon.load_tokenizer()
    ids = dict(tok([SENTENCE], return_tensors="pt"))
    ids = {k: ids[k] for k in ("input_ids", "attention_mask")}
    torch.save(ids, work / "ids.pt")
    two = dict(tok([SENTENCE, "short"], padding=True, return_tensors="pt"))  # ragged, batch 2: nothing specialized
    two = {k: two[k] for k in ("input_ids", "attention_mask")}
    prep: dict = {"paths": {}, "notes": []}

    model = bertsilicon.load_student("minilm-l6").eval()
    model.save_pretrained(work / "hf-fp32")
    prep["paths"]["hf-fp32"] = str(work / "hf-fp32")
    t = time.perf_counter()
    bertsilicon.optimize(model, "int8")
    prep["optimize_int8_s"] = time.perf_counter() - t
    t = time.perf_counter()
    bertsilicon.save(model, work / "artifact")
    prep["save_s"] = time.perf_counter() - t
    prep["paths"]["bertsilicon"] = str(work / "artifact")
    prep["artifact_mib"] = sum(f.stat().st_size for f in (work / "artifact").iterdir()) / 2 ** 20

    if "torch.export" not in engines and "aotinductor" not in engines:
        return _prepare_onnx(work, two, prep)
    from torch.export import Dim

    batch, length = Dim("batch", min=1, max=1024), Dim("length", min=2, max=512)
    t = time.perf_counter()
    program = torch.export.export(model, (), kwargs=two, dynamic_shapes={
        "input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}})
    prep["torch_export_s"] = time.perf_counter() - t
    torch.export.save(program, work / "minilm-int8.pt2")
    prep["paths"]["torch.export"] = str(work / "minilm-int8.pt2")
    if "aotinductor" in engines:
        prep["aoti"] = _try_aoti(program, work)
        if prep["aoti"]["status"] == "ok":
            prep["paths"]["aotinductor"] = prep["aoti"]["path"]
    return _prepare_onnx(work, two, prep)


def _prepare_onnx(work: Path, two: dict, prep: dict) -> dict:
    """The ONNX Runtime int8 file (also what OpenVINO compiles), added to ``prep``."""
    import torch

    import bertsilicon

    fp32 = bertsilicon.load_student("minilm-l6").eval()
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from bertsilicon.benchmark.providers import _LastHidden  # (input_ids, attention_mask) -> last hidden state

        axes = {0: "batch", 1: "length"}
        torch.onnx.export(_LastHidden(fp32).eval(), (two["input_ids"], two["attention_mask"]), work / "fp32.onnx",
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes}, opset_version=17, dynamo=False)
        quantize_dynamic(str(work / "fp32.onnx"), str(work / "int8.onnx"), weight_type=QuantType.QInt8)
        prep["paths"]["onnxruntime"] = prep["paths"]["openvino"] = str(work / "int8.onnx")
    except ImportError as exc:
        prep["notes"].append(f"ONNX Runtime not measured: {exc}")
    try:
        import openvino  # noqa: F401
    except ImportError:
        prep["paths"].pop("openvino", None)
        prep["notes"].append("OpenVINO not measured: openvino is not installed (pip install -e '.[openvino]')")
    return prep


def _try_aoti(program, work: Path) -> dict:
    """AOTInductor packaging of the exported program: its compile time, or why it does not work."""
    import torch

    t = time.perf_counter()
    try:
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(work / "minilm-int8-aoti.pt2"))
        return {"status": "ok", "compile_s": time.perf_counter() - t, "path": str(path)}
    except Exception as exc:  # report what AOTInductor says, whatever it raises
        return {"status": "failed", "compile_s": time.perf_counter() - t,
                "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}


def _cold(engine: str, path: str, ids: Path, threads: int, repeats: int) -> dict:
    runs = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", CHILD, engine, path, str(ids), str(threads),
                               str(ids.parent / f"out-{engine}.pt")],
                              capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return {"status": "failed", "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = {"status": "ok", "runs": runs}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def _cosine(work: Path, engine: str) -> float:
    """Mean-pooled cosine of ``engine``'s first embedding against the fp32 HF model's (one sentence, no padding)."""
    import torch

    import bertsilicon

    if not (work / "ref.pt").exists():
        model = bertsilicon.load_student("minilm-l6").eval()
        with torch.no_grad():
            torch.save(model(**torch.load(work / "ids.pt")).last_hidden_state, work / "ref.pt")
    got, ref = (torch.load(p).float().mean(1) for p in (work / f"out-{engine}.pt", work / "ref.pt"))
    return float(torch.nn.functional.cosine_similarity(got, ref).min())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated, of {', '.join(ENGINES)} (AOTInductor packaging takes minutes)")
    args = p.parse_args(argv)
    engines = tuple(e for e in args.engines.split(",") if e)
    if not set(engines) <= set(ENGINES):
        p.error(f"--engines: unknown {sorted(set(engines) - set(ENGINES))}; expected some of {', '.join(ENGINES)}")
    from bertsilicon.benchmark.machine import describe, load_average, machine_info

    info = machine_info(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep = _prepare(work, args.threads, engines)
        results = {}
        for engine in ENGINES:
            if engine in engines and engine in prep["paths"]:
                print(f"cold start: {engine}", file=sys.stderr)
                results[engine] = _cold(engine, prep["paths"][engine], work / "ids.pt", args.threads, args.repeats)
                if results[engine]["status"] == "ok":  # its first embedding against the fp32 model's
                    results[engine]["cosine_vs_hf_fp32"] = _cosine(work, engine)
    info["load_average_end"] = load_average()
    prep.pop("paths")
    doc = {"machine": info, "prepare": prep, "cold_start": results, "repeats": args.repeats}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold-start.json").write_text(json.dumps(doc, indent=1))
    (args.out / "cold-start.md").write_text(_markdown(doc, describe(info)))
    print(_markdown(doc, describe(info)))
    return 0


def _markdown(doc: dict, provenance: str) -> str:
    res, prep = doc["cold_start"], doc["prepare"]
    ref = {key: res.get("hf-fp32", {}).get(key, {}).get("median") for key in ("rss_model_mib", "rss_second_copy_mib")}
    lines = ["# Cold start: MiniLM-L6 int8, one sentence, fresh process after `import torch`", "", provenance, "",
             f"Medians of {doc['repeats']} fresh processes (min-max). RSS: after the first embedding minus after the "
             "engine's import (the modeling code included); second copy: what loading and calling the model again in "
             "the same process adds; ratios against the fp32 HF model. Cosine: the first embedding (mean-pooled) "
             "against the fp32 HF model's.", "",
             "| engine | import s | load / session s | first call s | total s | RSS MiB (x HF fp32) | "
             "second copy MiB (x HF fp32) | cosine vs fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for engine, r in res.items():
        if r["status"] != "ok":
            lines.append(f"| {engine} | failed: {r['error']} | | | | | | |")
            continue

        def cell(key):
            v = r[key]
            return f"{v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})"
        def mib(key):
            v = r[key]["median"]
            return f"{v:.1f} ({v / ref[key]:.2f}x)" if ref[key] else f"{v:.1f}"
        lines.append(f"| {engine} | {cell('import_s')} | {cell('load_s')} | {cell('first_call_s')} | "
                     f"{cell('total_s')} | {mib('rss_model_mib')} | {mib('rss_second_copy_mib')} | "
                     f"{r['cosine_vs_hf_fp32']:.5f} |")
    aoti = prep.get("aoti")
    export = f", `torch.export` {prep['torch_export_s']:.2f} s" if "torch_export_s" in prep else ""
    packaging = "" if aoti is None else "; AOTInductor packaging: " + (
        f"ok ({aoti['compile_s']:.1f} s)" if aoti["status"] == "ok" else
        f"failed after {aoti['compile_s']:.1f} s: {aoti['error']}")
    lines += ["", f"Preparation: `optimize(minilm, 'int8')` {prep['optimize_int8_s']:.2f} s, `bertsilicon.save` "
              f"{prep['save_s']:.2f} s (artifact {prep['artifact_mib']:.1f} MiB){export}{packaging}"]
    lines += [f"- {n}" for n in prep["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
