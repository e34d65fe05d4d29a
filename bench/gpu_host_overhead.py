"""Host time of the eager Triton path, measured without a GPU: the fused encoder on CPU tensors under the Triton
interpreter with every kernel launch replaced by a no-op, so what is left is the Python of the layers, the public
ops' validation and dispatch, the launchers and torch's own ops around them (allocations, reshapes, the gather /
scatter of the padding-free path). On a GPU the same code runs before each of the launches counted here, plus
Triton's launcher itself (not included: it is stubbed), so this is a floor for the eager path's host time per
forward — what CUDA graphs remove (bertsilicon/models/optimize.py, FusedEncoder).

    .venv/bin/python bench/gpu_host_overhead.py                       # MiniLM-L6 fp16, batch 32 of real text
    .venv/bin/python bench/gpu_host_overhead.py --batch 8 --precision int8

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
    bertsilicon.optimize(model, args.precision, backend="triton", calibration=calib)
    encoder = next(m for m in model.modules() if isinstance(m, FusedEncoder))
    with torch.no_grad():
        hidden = model.embeddings(enc["input_ids"]).to(encoder.compute_dtype)
        mask = enc["attention_mask"].bool()
        for _ in range(3):
            encoder.run(hidden, mask)
        launches[0] = 0
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            encoder.run(hidden, mask)
            times.append(time.perf_counter() - t0)
    real = int(mask.sum())
    print(f"{args.model} {args.precision} batch {args.batch} ({real} real tokens): encoder host time with every "
          f"launch stubbed, median {statistics.median(times) * 1e3:.3f} ms (min {min(times) * 1e3:.3f}) over "
          f"{args.rounds} forwards; {launches[0] / args.rounds:.0f} launches per forward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
