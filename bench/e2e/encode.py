"""Throughput of bulk embedding: ``bertsilicon encode`` int8 / bf16 / fp32 against sentence-transformers.

    python bench/e2e/encode.py --passages 20000 --threads 2 --out bench/results/cpu
    python bench/e2e/encode.py --quick               # 256 passages: OUT/encode-quick.*
    python bench/e2e/encode.py --estimate-only       # how long the full run takes here, then stop

Real passages: every text of the built-in corpora (CPython's documentation paragraphs and passages, standard-library
docstrings), taken in a fixed shuffled order and repeated if ``--passages`` asks for more than they hold. Providers,
each in its own process one after another (so each one's peak RSS is its own), all on ``--threads`` threads:

* ``bertsilicon <precision>``: the encode pipeline (token-budget batches, padding-free forward, pooling, normalize);
* ``sentence-transformers torch fp32``: ``SentenceTransformer(dir).encode(texts, batch_size=32)``;
* ``sentence-transformers onnx`` / ``openvino``: its ONNX and OpenVINO backends, exported locally (optimum) from a
  temporary copy of the same directory, ONNX Runtime's intra-op threads / OpenVINO's ``INFERENCE_NUM_THREADS`` set
  to ``--threads`` (checked on the loaded session), batch 32; ``-int8`` rows: the quantized variants its documentation
  gives, ``export_dynamic_quantized_onnx_model(model, "avx512_vnni", dir)`` and
  ``export_static_quantized_openvino_model`` (NNCF, calibrated on the first passages of the run). They need
  optimum-onnx / optimum-intel, which require an older transformers than the package's, so they run in a separate
  interpreter, ``--st-peer-python`` (default ``.venv-st-peers``, made by ``bash bench/e2e/st_peer_env.sh``);
* ``onnxruntime fp32``: the same model exported with torch.onnx, ONNX Runtime, batches of 32 sorted by length.

Before the run, each provider is loaded once and times one batch (exports made then are kept for the run), and the
run's duration is estimated from those rates (``--no-estimate`` skips this). Per provider: texts/s and tokens/s
over the encode call (the model already loaded; load seconds reported apart), peak RSS of its process, and the mean
/ min cosine of its vectors against sentence-transformers torch fp32. Results: ``OUT/encode.json`` and
``OUT/encode.md``, rewritten after every provider, so a killed run keeps the rows it finished.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PEER_VENV = REPO / ".venv-st-peers"
PEER_SETUP = "bash bench/e2e/st_peer_env.sh"
PROVIDERS = ("st-torch-fp32", "bertsilicon-int8", "bertsilicon-bf16", "bertsilicon-fp32", "st-onnx", "st-openvino",
             "st-onnx-int8", "st-openvino-int8", "ort-fp32")
PEERS = ("st-onnx", "st-openvino", "st-onnx-int8", "st-openvino-int8")  # run by the --st-peer-python interpreter
LABELS = {"st-torch-fp32": "sentence-transformers torch fp32 (batch 32)",
          "st-onnx": "sentence-transformers ONNX (optimum export, ONNX Runtime fp32)",
          "st-openvino": "sentence-transformers OpenVINO (optimum-intel export, fp32)",
          "st-onnx-int8": "sentence-transformers ONNX int8 (dynamic, avx512_vnni config)",
          "st-openvino-int8": "sentence-transformers OpenVINO int8 (static, NNCF)",
          "ort-fp32": "ONNX Runtime fp32 (torch.onnx export, batch 32)",
          **{f"bertsilicon-{p}": f"bertsilicon encode {p}" for p in ("int8", "bf16", "fp32")}}
BATCH = 32
FULL_RUN = 20000
# The files sentence-transformers' quantization helpers write into the model directory (its default names).
QUANTIZED_FILE = {"onnx": "onnx/model_qint8_avx512_vnni.onnx",
                  "openvino": "openvino/openvino_model_qint8_quantized.xml"}
PEER_LIBRARIES = ("torch", "transformers", "sentence-transformers", "optimum", "optimum-onnx", "optimum-intel",
                  "onnxruntime", "openvino", "nncf")


def passages(n: int) -> list[str]:
    import random

    from bertsilicon import data

    texts = [t for name in data.CORPORA for t in data.corpus(name).texts]
    random.Random(0).shuffle(texts)
    return [texts[i % len(texts)] for i in range(n)]


def _st_peer(provider: str, model_dir: str, threads: int, workdir: str, texts: list[str]):
    """sentence-transformers' ONNX or OpenVINO backend on ``threads`` threads, exported (and quantized, for the
    ``-int8`` rows) into ``workdir/<backend>``, a copy of ``model_dir`` that later processes of the run reuse."""
    from sentence_transformers import SentenceTransformer

    backend = "onnx" if provider.startswith("st-onnx") else "openvino"
    copy = os.path.join(workdir, backend)
    if not os.path.isdir(copy):
        shutil.copytree(model_dir, copy)
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        kwargs = {"provider": "CPUExecutionProvider", "session_options": options}
    else:
        kwargs = {"ov_config": {"INFERENCE_NUM_THREADS": threads}}
    exported = os.path.isdir(os.path.join(copy, backend))
    st = SentenceTransformer(copy, device="cpu", backend=backend, model_kwargs=kwargs)
    if not exported:
        st.save_pretrained(copy)
    if provider.endswith("-int8"):
        if not os.path.exists(os.path.join(copy, QUANTIZED_FILE[backend])):
            _quantize(st, backend, copy, texts, workdir)
        st = SentenceTransformer(copy, device="cpu", backend=backend,
                                 model_kwargs={**kwargs, "file_name": QUANTIZED_FILE[backend]})
    engine = st[0].auto_model
    engine_threads = (engine.session.get_session_options().intra_op_num_threads if backend == "onnx"
                      else int(engine.request.get_property("INFERENCE_NUM_THREADS")))
    if engine_threads != threads:
        raise RuntimeError(f"{provider}: the {backend} engine runs {engine_threads} threads, not --threads {threads}")
    return lambda xs: st.encode(xs, batch_size=BATCH, convert_to_numpy=True)


def _quantize(st, backend: str, copy: str, texts: list[str], workdir: str) -> None:
    """sentence-transformers' documented int8 exports: dynamic ONNX with the avx512_vnni config, static OpenVINO
    (NNCF post-training quantization) calibrated on the run's first passages, read from a local JSON-lines file."""
    from sentence_transformers import export_dynamic_quantized_onnx_model, export_static_quantized_openvino_model

    if backend == "onnx":
        export_dynamic_quantized_onnx_model(st, "avx512_vnni", copy)
        return
    calibration = os.path.join(workdir, "calibration")
    os.makedirs(calibration, exist_ok=True)
    with open(os.path.join(calibration, "train.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts[:300])
    export_static_quantized_openvino_model(st, None, copy, dataset_name=calibration, dataset_config_name="default",
                                           dataset_split="train", column_name="text")


def _ort_encoder(threads: int, workdir: str):
    import torch

    from bertsilicon.benchmark.providers import Batch, BuildContext, _ort_fp32  # the end-to-end suite's ORT peer
    from bertsilicon.models.students import load_student, load_tokenizer

    tok = load_tokenizer()
    example = tok(["a ragged example batch", "short"], padding=True, return_tensors="pt")
    ctx = BuildContext(load_student("minilm-l6"), "minilm-l6", Batch(example["input_ids"], example["attention_mask"]),
                       threads, workdir)
    run = _ort_fp32(ctx)

    def encode(texts):
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), 384), dtype=np.float32)
        for s in range(0, len(texts), BATCH):
            idx = order[s:s + BATCH]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = run(Batch(enc["input_ids"], enc["attention_mask"])).numpy()
            m = enc["attention_mask"].numpy()[..., None].astype(np.float32)
            v = (h * m).sum(1) / m.sum(1)
            out[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out
    torch.set_num_threads(threads)
    return encode


def _encoder(provider: str, model_dir: str, threads: int, workdir: str, texts: list[str]):
    if provider in PEERS:
        return _st_peer(provider, model_dir, threads, workdir, texts)
    if provider.startswith("bertsilicon-"):
        from bertsilicon.encode import Embedder, encode_texts, resolve

        embedder = Embedder(resolve(precision=provider.split("-")[1]))
        return lambda xs: encode_texts(embedder, xs)[0]
    if provider == "st-torch-fp32":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_dir, device="cpu")
        return lambda xs: st.encode(xs, batch_size=BATCH, convert_to_numpy=True)
    ort_dir = os.path.join(workdir, provider)
    os.makedirs(ort_dir, exist_ok=True)
    return _ort_encoder(threads, ort_dir)


def child(provider: str, texts_path: str, model_dir: str, threads: int, workdir: str, vectors_out: str | None) -> dict:
    """Run one provider in this process on the texts of ``texts_path``. With ``vectors_out``: the timed encode of
    every text (vectors saved there); without: the estimate probe, one warm-up batch and one timed batch."""
    import torch

    torch.set_num_threads(threads)
    texts = json.loads(Path(texts_path).read_text())
    t0 = time.perf_counter()
    encode = _encoder(provider, model_dir, threads, workdir, texts)
    measured = {"load_s": time.perf_counter() - t0, "peer_versions": _versions() if provider in PEERS else None}
    encode(texts[:BATCH])  # warm-up
    timed = texts if vectors_out else (texts[BATCH:2 * BATCH] or texts[:BATCH])
    t0 = time.perf_counter()
    vectors = encode(timed)
    measured.update(seconds=time.perf_counter() - t0, texts=len(timed))
    if vectors_out:
        np.save(vectors_out, np.asarray(vectors, dtype=np.float32))
    measured["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return measured


def _versions() -> dict:
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return {name: version(name) for name in PEER_LIBRARIES}


def tokens_of(texts: list[str]) -> int:
    from bertsilicon.models.students import load_tokenizer

    enc = load_tokenizer()(texts, truncation=True, max_length=256)
    return sum(len(ids) for ids in enc["input_ids"])


class Runner:
    """Starts each provider's process: the peers under the sentence-transformers peer interpreter, the others under
    this one; all offline, sharing one texts file and one work directory (exports made once, reused)."""

    def __init__(self, tmp: str, texts: list[str], threads: int, peer_python: str | None):
        from bertsilicon.models.students import minilm_path

        self.tmp, self.threads, self.peer_python = tmp, threads, peer_python
        self.texts_path = os.path.join(tmp, "texts.json")
        Path(self.texts_path).write_text(json.dumps(texts))
        self.model_dir = str(minilm_path())
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def __call__(self, provider: str, vectors_out: str | None = None) -> tuple[dict | None, str]:
        """(measurements, "ok") or (None, "unavailable: why")."""
        python = sys.executable
        if provider in PEERS:
            if not self.peer_python:
                return None, f"unavailable: run `{PEER_SETUP}` (makes .venv-st-peers) or pass --st-peer-python"
            python = self.peer_python
        cmd = [python, __file__, "--child", provider, "--texts", self.texts_path, "--model-dir", self.model_dir,
               "--workdir", self.tmp, "--threads", str(self.threads)] + (["--vectors", vectors_out] if vectors_out
                                                                         else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["failed"])[-1]
            return None, f"unavailable: {why[:200]}"
        return json.loads(done.stdout.strip().splitlines()[-1]), "ok"


def estimate(run: Runner, providers: list[str], n: int) -> dict:
    """Load each provider once and time one batch; print the run's estimated duration (and the full run's)."""
    per_text, load = {}, {}
    for provider in providers:
        m, status = run(provider)
        if m is None:
            print(f"  {provider}: {status}", file=sys.stderr, flush=True)
            continue
        per_text[provider], load[provider] = m["seconds"] / m["texts"], m["load_s"]
        print(f"  {provider}: {m['texts'] / m['seconds']:.1f} texts/s on its first timed batch (load {m['load_s']:.0f} "
              f"s)", file=sys.stderr, flush=True)

    def total(count):  # every provider: process start and load, warm-up batch, the timed encode
        return sum(load[p] + (count + BATCH) * per_text[p] for p in per_text)
    sizes = sorted({n, FULL_RUN})
    for count in sizes:
        print(f"estimated duration for {count} passages: ~{total(count) / 60:.0f} min ({len(per_text)} providers)",
              file=sys.stderr, flush=True)
    return {"first_batch_texts_per_s": {p: 1 / s for p, s in per_text.items()},
            "estimated_s": {str(count): round(total(count)) for count in sizes}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=FULL_RUN)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated subset of: " + ",".join(PROVIDERS))
    p.add_argument("--out", default="bertsilicon-results/encode",
                   help="output folder (the recorded run: bench/results/cpu)")
    p.add_argument("--quick", action="store_true", help="256 passages, results in OUT/encode-quick.*")
    p.add_argument("--st-peer-python", default=None,
                   help=f"the interpreter of the sentence-transformers ONNX / OpenVINO rows (default: {PEER_VENV.name}"
                        f"/bin/python when it exists; make it with `{PEER_SETUP}`)")
    p.add_argument("--no-estimate", action="store_true", help="skip the one-batch probe that estimates the duration")
    p.add_argument("--estimate-only", action="store_true", help="print the estimated duration and stop")
    p.add_argument("--note", default="", help="what the run should be read with (e.g. a shared, loaded machine)")
    for hidden in ("--child", "--texts", "--model-dir", "--workdir", "--vectors"):
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.texts, args.model_dir, args.threads, args.workdir, args.vectors)))
        return 0
    providers = args.providers.split(",")
    unknown = [x for x in providers if x not in PROVIDERS]
    if unknown:
        p.error(f"--providers: unknown {', '.join(unknown)}; expected a comma-separated subset of "
                f"{', '.join(PROVIDERS)}")
    peer_python = args.st_peer_python or (str(PEER_VENV / "bin" / "python") if PEER_VENV.exists() else None)
    if args.st_peer_python and not os.access(args.st_peer_python, os.X_OK):
        p.error(f"--st-peer-python: {args.st_peer_python} is not an executable interpreter")
    n = 256 if args.quick else args.passages
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the temporary exports

    from bertsilicon.benchmark.machine import machine_info

    info = machine_info(args.threads)
    texts = passages(n)
    result = {"passages": n, "unique_passages": len(set(texts)), "tokens": tokens_of(texts), "threads": args.threads,
              "note": args.note, "machine": info, "st_peer_python": peer_python, "rows": []}
    out = Path(args.out) / ("encode-quick" if args.quick else "encode")
    with tempfile.TemporaryDirectory() as tmp:
        run = Runner(tmp, texts, args.threads, peer_python)
        if not args.no_estimate:
            print("estimate: each provider loaded once, one warm-up and one timed batch", file=sys.stderr, flush=True)
            result["estimate"] = estimate(run, providers, n)
            if args.estimate_only:
                return 0
        vectors = {}
        for provider in providers:
            print(f"{provider} ...", file=sys.stderr, flush=True)
            vec_path = os.path.join(tmp, f"{provider}.npy")
            m, status = run(provider, vec_path)
            row = {"provider": provider, "status": status}
            if m is not None:
                vectors[provider] = np.load(vec_path)
                row.update(m, texts_per_s=n / m["seconds"], tokens_per_s=result["tokens"] / m["seconds"])
            result["rows"].append(row)
            write_results(out, result, vectors)
    print(markdown(result))
    return 0


def write_results(out: Path, result: dict, vectors: dict) -> None:
    """``out``.json and ``out``.md from the rows so far, cosines against sentence-transformers torch fp32."""
    from bertsilicon.benchmark.machine import load_average

    ref = vectors.get("st-torch-fp32")
    for r in result["rows"]:
        if r["status"] == "ok" and ref is not None:
            v, w = vectors[r["provider"]].astype(np.float64), ref.astype(np.float64)
            cos = (v * w).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(w, axis=1))
            r["cos_mean"], r["cos_min"] = float(cos.mean()), float(cos.min())
    result["machine"]["load_average_end"] = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))


def _fastest_others(rows: list[dict], min_cosine: float = 0.998) -> dict:
    """The fastest measured row that is not bertsilicon, and the fastest at mean cosine >= ``min_cosine``."""
    others = [r for r in rows if r["status"] == "ok" and not r["provider"].startswith("bertsilicon-")]
    accurate = [r for r in others if r.get("cos_mean", 0) >= min_cosine]
    picks = {"the fastest other backend": others, f"the fastest other at cosine >= {min_cosine}": accurate}
    return {what: max(rs, key=lambda r: r["texts_per_s"])["provider"] for what, rs in picks.items() if rs}


def markdown(result: dict) -> str:
    from bertsilicon.benchmark.machine import describe

    rows = result["rows"]
    rate = {r["provider"]: r["texts_per_s"] for r in rows if r["status"] == "ok"}
    torch_rate = rate.get("st-torch-fp32")
    lines = ["# Bulk embedding throughput (`bench/e2e/encode.py`)\n",
             f"{result['passages']} real passages ({result['unique_passages']} distinct texts of the built-in "
             "corpora), "
             f"{result['tokens']} tokens (max length 256), {result['threads']} threads; all-MiniLM-L6-v2. "
             f"{result['note']}\n", describe(result["machine"]) + "\n"]
    peer_versions = next((r["peer_versions"] for r in rows if r.get("peer_versions")), None)
    if peer_versions:
        lines.append("sentence-transformers ONNX / OpenVINO rows: a separate environment "
                     "(`bench/e2e/st_peer_env.sh`): "
                     + ", ".join(f"{k} {v}" for k, v in peer_versions.items() if v) + ".\n")
    if result.get("estimate"):
        lines.append("Estimated beforehand from one timed batch per provider: "
                     + ", ".join(f"{k} passages ~{s / 60:.0f} min"
                                 for k, s in result["estimate"]["estimated_s"].items()) + ".\n")
    lines += ["| provider | texts/s | tokens/s | x ST torch fp32 | peak RSS MiB | cos mean | cos min | status |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {LABELS.get(r['provider'], r['provider'])} | - | - | - | - | - | - | {r['status']} |")
            continue
        speedup = f"{r['texts_per_s'] / torch_rate:.2f}x" if torch_rate else "-"
        lines.append(f"| {LABELS.get(r['provider'], r['provider'])} | {r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} "
                     f"| {speedup} | {r['peak_rss_mib']:.0f} | {r.get('cos_mean', float('nan')):.5f} | "
                     f"{r.get('cos_min', float('nan')):.5f} | ok |")
    if "bertsilicon-int8" in rate and torch_rate:
        lines.append(f"\nbertsilicon encode int8: {rate['bertsilicon-int8'] / torch_rate:.2f}x sentence-transformers "
                     "torch fp32 (target >= 4x)" + "".join(
                         f"; {rate['bertsilicon-int8'] / rate[p]:.2f}x {what}, {LABELS[p]} (target >= 1.5x)"
                         for what, p in _fastest_others(rows).items()) + ".")
    lines.append("\ncosine: against sentence-transformers torch fp32 on the same texts; texts/s over the encode call "
                 "(model loaded, one warm-up batch first); peak RSS: the provider's own process.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
