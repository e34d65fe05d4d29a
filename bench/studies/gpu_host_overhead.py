"""Host time of the eager Triton path, measured without a GPU: the fused encoder on CPU tensors under the Triton
interpreter with every kernel launch replaced by a no-op, so what is left is the Python of the layers, the public
ops' validation and dispatch, the launchers and torch's own ops around them (allocations, reshapes, the gather /
scatter of the padding-free path). On a GPU the same code runs before each of the launches counted here, plus
Triton's launcher itself (not included: it is stubbed), so this is a floor for the eager path's host time per
forward — what CUDA graphs remove (bertsilicon/models/optimize.py, FusedEncoder).

    .venv/bin/python bench/studies/gpu_host_overhead.py                       # MiniLM-L6 fp16, batch 32 of real text
    .venv/bin/python bench/studies/gpu_host_overhead.py --batch 8 --precision int8

Two rows, measured interleaved in one process (round-robin, so machine noise hits both alike): the layers
launching the triton kernels directly (the default, bertsilicon/backends/triton/layer.py) and through the public
ops (validation + dispatch per op, ``layer.direct_launch = False``).

Prints the median over ``--rounds`` forwards and the launches per forward. CPU tensors make the torch ops do real
work that on a GPU is a launch (``new_zeros`` and ``index_copy_`` of the padded output: ~0.8 ms at batch 32 here),
so read the figure with that in mind.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--precision", default="fp16", choices=("fp32", "bf16", "fp16", "int8"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)

    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: CPU tensors, interpreted kernels
    import torch
    from triton.runtime import autotuner, interpreter

    import bertsilicon
    from bertsilicon.models.optimize import FusedEncoder

    launches = [0]

    def no_launch(self, *a, **k):
        launches[0] += 1

    autotuner.Autotuner.run = no_launch          # autotuned kernels (GEMM, attention)
    interpreter.InterpretedFunction.run = no_launch  # the others (layernorm, elementwise)

    model = bertsilicon.load_student(args.model)
    tok = bertsilicon.load_tokenizer()
    texts = bertsilicon.data.corpus("pydoc").subset(args.batch, seed=0).texts
    enc = tok(texts, padding=True, truncation=True, max_length=args.seq, return_tensors="pt")
    calib = {k: enc[k][:2] for k in ("input_ids", "attention_mask")}  # tiny: the kernels are stubbed anyway
    # the stubbed kernels compute nothing, so the error measured at optimize time is meaningless: an unbounded
    # int8 budget keeps every GEMM in int8 (the launches counted are then those of a real int8 model)
    bertsilicon.optimize(model, args.precision, backend="triton", calibration=calib, error_budget=float("inf"))
    encoder = next(m for m in model.modules() if isinstance(m, FusedEncoder))
    layers = list(encoder.layer)

    def use_direct(flag: bool):
        for layer in layers:
            layer.direct_launch = flag

    with torch.no_grad():
        hidden = model.embeddings(enc["input_ids"]).to(encoder.compute_dtype)
        mask = enc["attention_mask"].bool()
        times = {"direct launches": [], "public ops": []}
        counts = dict.fromkeys(times, 0)
        for _ in range(3):
            for direct in (True, False):
                use_direct(direct)
                encoder.run(hidden, mask)
        for _ in range(args.rounds):
            for name, direct in (("direct launches", True), ("public ops", False)):
                use_direct(direct)
                launches[0] = 0
                t0 = time.perf_counter()
                encoder.run(hidden, mask)
                times[name].append(time.perf_counter() - t0)
                counts[name] = launches[0]
    real = int(mask.sum())
    gemms = sorted({p for layer in layers for p in layer.gemm_precision.values()})
    print(f"{args.model} {args.precision} (GEMMs: {', '.join(gemms)}) batch {args.batch} ({real} real tokens): encoder "
          f"host time with every launch stubbed, over {args.rounds} forwards each")
    for name, ts in times.items():
        print(f"  {name:16s} median {statistics.median(ts) * 1e3:.3f} ms (min {min(ts) * 1e3:.3f}), "
              f"{counts[name]} launches per forward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
