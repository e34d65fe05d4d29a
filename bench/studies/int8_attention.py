"""int8 layers attending on bf16 q, k, v (``vdpbf16ps``) vs in fp32: latency and accuracy, same process.

    .venv/bin/python bench/studies/int8_attention.py [--threads 2] [--rounds 12] [--lengths 128,256,512] [--out bench/results/cpu]

The real MiniLM-L6 optimized once in int8 (``smooth=0.5``, calibrated on ``corpus("docstrings-train")[:64]``),
then timed on one real batch per max length (the first 8 passages of ``corpus("pydoc-passages")``, ~550-700
tokens each, truncated) with every layer's ``bf16_attention`` on and off, in interleaved rounds
(``layer_overhead.time_modes``). Accuracy of both: the min and mean over the batch of the mean-pooled cosine
against the same model in HF fp32. What changes (``FusedEncoderLayer.attention_dtype``): the qkv GEMM's output is
rounded to bf16 and attention runs the bf16 kernel; GEMMs, softmax math and LayerNorms are the same.
Needs AVX512_BF16 on the avx512 path (elsewhere int8 layers always attend in fp32: nothing to compare).
Writes ``int8_attention.json`` and ``int8_attention.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path

import torch

import bertsilicon
from bertsilicon import data
from bertsilicon.benchmark.machine import load_average, machine_info
from bertsilicon.benchmark.runner import tokenize
from bertsilicon.backends import cpu as _cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_overhead import provenance, time_modes  # noqa: E402

MODES = ("bf16", "fp32")  # the attention dtype of the int8 layers


def _pooled_cosines(out: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].double()
    pool = lambda h: (h.double() * m).sum(1) / m.sum(1)  # noqa: E731
    return torch.nn.functional.cosine_similarity(pool(out), pool(want))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--min-sample-s", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lengths", default="128,256,512")
    p.add_argument("--out", default="bench/results/cpu")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    if not _cpu.native_bf16_attention():
        print("this CPU has no AVX512_BF16 on the avx512 path: int8 layers attend in fp32, nothing to compare")
        return 1
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    tok = bertsilicon.load_tokenizer()
    texts = list(data.corpus("pydoc-passages"))[:args.batch]
    base = bertsilicon.load_student("minilm-l6")
    model = bertsilicon.optimize(copy.deepcopy(base), "int8", smooth=0.5,
                                 calibration=list(data.corpus("docstrings-train")[:64]))
    layers = list(model.encoder.layer)

    def set_attention(dtype: str):
        def apply():
            for layer in layers:
                layer.bf16_attention = dtype == "bf16"
        return apply

    rows = []
    for length in map(int, args.lengths.split(",")):
        batch = tokenize(tok, texts, length, "longest")
        ids, mask = batch.input_ids, batch.attention_mask

        def run():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

        res, outs = time_modes(run, {m: set_attention(m) for m in MODES}, args.rounds, args.min_sample_s)
        with torch.inference_mode():
            want = base(input_ids=ids, attention_mask=mask).last_hidden_state
        cos = {m: _pooled_cosines(outs[m], want, mask.bool()) for m in MODES}
        row = {"length": length, "shape": list(ids.shape), "real_tokens": batch.real_tokens, **res,
               "ratio_median": res["bf16"]["median_ms"] / res["fp32"]["median_ms"],
               **{f"cos_min_{m}": float(cos[m].min()) for m in MODES},
               **{f"cos_mean_{m}": float(cos[m].mean()) for m in MODES}}
        rows.append(row)
        print(f"L {length} {tuple(ids.shape)}: bf16 attention {res['bf16']['median_ms']:.1f} ms, fp32 "
              f"{res['fp32']['median_ms']:.1f} ms ({row['ratio_median']:.3f}x); min cosine "
              f"{row['cos_min_bf16']:.5f} / {row['cos_min_fp32']:.5f}", flush=True)
    machine["load_average_end"] = load_average()
    cmd = shlex.join(["python", "bench/studies/int8_attention.py", *(argv if argv is not None else sys.argv[1:])])
    result = {"command": cmd, "note": args.note, "machine": machine, "cpu_kernels":
              model.bertsilicon_report.cpu_kernels, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_attention.json").write_text(json.dumps(result, indent=1))
    (out / "int8_attention.md").write_text(markdown(result))
    print(f"wrote {out / 'int8_attention.json'} and {out / 'int8_attention.md'}")
    return 0


def markdown(result: dict) -> str:
    lines = ["# int8 layers: attention on bf16 q, k, v (vdpbf16ps) vs fp32 (cpu backend)", "", provenance(result), "",
             f"MiniLM-L6 (real weights) in int8, `smooth=0.5`; cpu kernels: {result['cpu_kernels']}.", "",
             "Latency per forward (ms): median and min of interleaved rounds in one process, every layer's "
             "`bf16_attention` on (bf16) and off (fp32). Accuracy: mean-pooled cosine vs HF fp32 over the batch.", "",
             "| max len | shape (real tokens) | bf16 median | fp32 median | bf16 / fp32 | bf16 min | fp32 min "
             "| cos min bf16 | cos min fp32 | cos mean bf16 | cos mean fp32 |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        b, f = r["bf16"], r["fp32"]
        lines.append(f"| {r['length']} | {'x'.join(map(str, r['shape']))} ({r['real_tokens']}) | {b['median_ms']:.1f} "
                     f"| {f['median_ms']:.1f} | {r['ratio_median']:.3f} | {b['min_ms']:.1f} | {f['min_ms']:.1f} "
                     f"| {r['cos_min_bf16']:.5f} | {r['cos_min_fp32']:.5f} | {r['cos_mean_bf16']:.5f} "
                     f"| {r['cos_mean_fp32']:.5f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
