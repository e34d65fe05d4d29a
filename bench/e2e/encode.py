"""Throughput of bulk embedding: ``bertsilicon encode`` int8 / bf16 / fp32 against sentence-transformers.

    python bench/e2e/encode.py --passages 20000 --threads 2 --out bench/results/cpu

Real passages: every text of the built-in corpora (CPython's documentation paragraphs and passages, standard-library
docstrings), taken in a fixed shuffled order and repeated if ``--passages`` asks for more than they hold. Providers,
each in its own process one after another (so each one's peak RSS is its own), all on ``--threads`` threads:

* ``bertsilicon <precision>``: the encode pipeline (token-budget batches, padding-free forward, pooling, normalize);
* ``sentence-transformers torch fp32``: ``SentenceTransformer(dir).encode(texts, batch_size=32)``;
* ``sentence-transformers onnx`` / ``openvino``: its ONNX and OpenVINO backends, exported locally from the same
  directory (they need optimum / optimum-intel; where those do not install, the row says why);
* ``onnxruntime fp32``: the same model exported with torch.onnx, ONNX Runtime, batches of 32 sorted by length.

Per provider: texts/s and tokens/s over the encode call (the model already loaded; load seconds reported apart),
peak RSS of its process, and the mean / min cosine of its vectors against sentence-transformers torch fp32.
Results: ``OUT/encode.json`` and ``OUT/encode.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROVIDERS = ("st-torch-fp32", "bertsilicon-int8", "bertsilicon-bf16", "bertsilicon-fp32", "st-onnx", "st-openvino",
             "ort-fp32")
LABELS = {"st-torch-fp32": "sentence-transformers torch fp32 (batch 32)", "st-onnx": "sentence-transformers ONNX",
          "st-openvino": "sentence-transformers OpenVINO",
          "ort-fp32": "ONNX Runtime fp32 (torch.onnx export, batch 32)",
          **{f"bertsilicon-{p}": f"bertsilicon encode {p}" for p in ("int8", "bf16", "fp32")}}
BATCH = 32


def passages(n: int) -> list[str]:
    from bertsilicon import data

    texts = [t for name in data.CORPORA for t in data.corpus(name).texts]
    random.Random(0).shuffle(texts)
    return [texts[i % len(texts)] for i in range(n)]


def _st_encoder(model_dir: str, backend: str, threads: int):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device="cpu", backend=backend)
    return lambda texts: st.encode(texts, batch_size=BATCH, convert_to_numpy=True)


def _ort_encoder(model_dir: str, threads: int, workdir: str):
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


def child(provider: str, n: int, threads: int, vectors_out: str) -> dict:
    """Run one provider in this process; returns its measurements (vectors saved to ``vectors_out``)."""
    import torch

    from bertsilicon.models.students import minilm_path

    torch.set_num_threads(threads)
    texts = passages(n)
    model_dir = str(minilm_path())
    t0 = time.perf_counter()
    if provider.startswith("bertsilicon-"):
        from bertsilicon.encode import Embedder, encode_texts, resolve

        embedder = Embedder(resolve(precision=provider.split("-")[1]))
        encode = lambda xs: encode_texts(embedder, xs)[0]  # noqa: E731
    elif provider.startswith("st-"):
        encode = _st_encoder(model_dir, {"st-torch-fp32": "torch", "st-onnx": "onnx",
                                         "st-openvino": "openvino"}[provider], threads)
    else:
        encode = _ort_encoder(model_dir, threads, tempfile.mkdtemp())
    load_s = time.perf_counter() - t0
    encode(texts[:BATCH])  # warm-up
    t0 = time.perf_counter()
    vectors = encode(texts)
    seconds = time.perf_counter() - t0
    np.save(vectors_out, np.asarray(vectors, dtype=np.float32))
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"seconds": seconds, "load_s": load_s, "peak_rss_mib": peak_rss_mib}


def tokens_of(texts: list[str]) -> int:
    from bertsilicon.models.students import load_tokenizer

    enc = load_tokenizer()(texts, truncation=True, max_length=256)
    return sum(len(ids) for ids in enc["input_ids"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--out", default="bench/results/cpu")
    p.add_argument("--note", default="", help="what the run should be read with (e.g. a shared, loaded machine)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vectors", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.passages, args.threads, args.vectors)))
        return 0

    from bertsilicon.benchmark.machine import describe, load_average, machine_info

    info = machine_info(args.threads)
    texts = passages(args.passages)
    n_tokens = tokens_of(texts)
    rows, vectors = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for provider in args.providers.split(","):
            vec_path = os.path.join(tmp, f"{provider}.npy")
            cmd = [sys.executable, __file__, "--child", provider, "--passages", str(args.passages), "--threads",
                   str(args.threads), "--vectors", vec_path]
            print(f"{provider} ...", file=sys.stderr, flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append({"provider": provider, "status": f"unavailable: {why[:200]}"})
                continue
            m = json.loads(done.stdout.strip().splitlines()[-1])
            vectors[provider] = np.load(vec_path).astype(np.float64)
            rows.append({"provider": provider, "status": "ok", **m, "texts_per_s": len(texts) / m["seconds"],
                         "tokens_per_s": n_tokens / m["seconds"]})
    ref = vectors.get("st-torch-fp32")
    for r in rows:
        if r["status"] == "ok" and ref is not None:
            v = vectors[r["provider"]]
            cos = (v * ref).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1))
            r["cos_mean"], r["cos_min"] = float(cos.mean()), float(cos.min())
    info["load_average_end"] = load_average()
    result = {"passages": len(texts), "unique_passages": len(set(texts)), "tokens": n_tokens,
              "threads": args.threads, "note": args.note, "machine": info, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode.json").write_text(json.dumps(result, indent=1))
    (out / "encode.md").write_text(markdown(result, describe(info)))
    print(markdown(result, describe(info)))
    return 0


def markdown(result: dict, provenance: str) -> str:
    rows = result["rows"]
    base = {r["provider"]: r.get("texts_per_s") for r in rows}
    torch_rate = base.get("st-torch-fp32")
    lines = ["# Bulk embedding throughput (`bench/e2e/encode.py`)\n",
             f"{result['passages']} real passages ({result['unique_passages']} distinct texts of the built-in "
             "corpora), "
             f"{result['tokens']} tokens (max length 256), {result['threads']} threads; all-MiniLM-L6-v2. "
             f"{result['note']}\n", provenance + "\n",
             "| provider | texts/s | tokens/s | x ST torch fp32 | peak RSS MiB | cos mean | cos min | status |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {LABELS.get(r['provider'], r['provider'])} | - | - | - | - | - | - | {r['status']} |")
            continue
        speedup = f"{r['texts_per_s'] / torch_rate:.2f}x" if torch_rate else "-"
        lines.append(f"| {LABELS.get(r['provider'], r['provider'])} | {r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} "
                     f"| {speedup} | {r['peak_rss_mib']:.0f} | {r.get('cos_mean', float('nan')):.5f} | "
                     f"{r.get('cos_min', float('nan')):.5f} | ok |")
    lines.append("\ncosine: against sentence-transformers torch fp32 on the same texts; texts/s over the encode call "
                 "(model loaded, one warm-up batch first); peak RSS: the provider's own process.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
