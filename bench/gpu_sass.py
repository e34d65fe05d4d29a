"""Compile the Triton GEMM and attention kernels for a GPU target without a GPU and read their SASS.

    python -m bench.gpu_sass [--arch 90] [--out bench/results/sass_sm90.md]

For every autotuning config of the hardware class (``hopper`` for sm_90, ``ampere`` for sm_80): shared
memory, matrix instructions (HGMMA/IGMMA = Hopper wgmma; HMMA/IMMA = mma.sync), register spills
(LDL/STL: local-memory traffic) and the async copies (LDGSTS = cp.async). Costs no device time: uses the
ptxas and cuobjdump that ship with triton. Strides are specialised as a real launch would (last dim 1,
the others divisible by 16). The device runs triton 3.6, this machine maybe another: the figures are
leads for the device session, not measurements.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SASS_OPS = ("HGMMA", "IGMMA", "HMMA", "IMMA", "LDL", "STL", "LDGSTS", "LDG.E.128", "STG.E.128")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bertsilicon.kernels import attention as A
    from bertsilicon.kernels import gemm as G

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    target = GPUTarget("cuda", args.arch, 32)
    kind = "hopper" if args.arch >= 90 else ("ampere" if args.arch >= 80 else "turing")
    rows = [f"# SASS of the Triton kernels for sm_{args.arch} ({kind} configs), triton {triton.__version__}", "",
            "| kernel | config | shared (B) | " + " | ".join(SASS_OPS) + " |", "|---|---|---|" + "---|" * len(SASS_OPS)]

    def build(name, cfg, fn, types, consts, div16):
        sig = {n: ("constexpr" if n in consts else types[n]) for n in fn.arg_names}
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
        try:
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=target,
                               options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        except Exception as exc:  # e.g. int8 dot on Turing
            rows.append(f"| {name} | {cfg.kwargs} | compile failed: {type(exc).__name__} |" + " |" * len(SASS_OPS))
            return
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(k.asm["cubin"])
            fh.flush()
            sass = subprocess.run([str(cuobjdump), "-sass", fh.name], capture_output=True, text=True).stdout
        counts = [len(re.findall(re.escape(op) + r"\b", sass)) for op in SASS_OPS]
        desc = ", ".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f", w{cfg.num_warps} s{cfg.num_stages}"
        rows.append(f"| {name} | {desc} | {k.metadata.shared} | " + " | ".join(map(str, counts)) + " |")
        print(rows[-1], flush=True)

    g = G._gemm_kernel
    for dt, int8 in (("fp16", False), ("i8", True)):
        for cfg in G._configs(int8, kind):
            types = dict(x_ptr=f"*{dt}", w_ptr=f"*{dt}", out_ptr="*fp16", bias_ptr="*fp16", xs_ptr="*fp32", ws_ptr="*fp32",
                         M="i32", N="i32", K="i32", stride_xm="i32", stride_wn="i32", stride_om="i32")
            consts = dict(stride_xk=1, stride_wk=1, M_BUCKET=4096, INT8=int8, HAS_BIAS=True, ACTIVATION=1,
                          X_SCALE_PER_ROW=True, W_SCALE_PER_COL=True, DOT_PRECISION="tf32", UPCAST=False, **cfg.kwargs)
            build(f"gemm {dt} +bias+gelu", cfg, g, types, consts,
                  ["x_ptr", "w_ptr", "out_ptr", "bias_ptr", "N", "K", "stride_xm", "stride_wn", "stride_om"])
    f = A._attention_fwd_kernel.fn
    for D in (32, 64, 128):
        for cfg in A._configs(kind):
            types = {n: "i32" for n in f.arg_names if n.startswith("stride") or n in ("H", "Lq", "Lk", "D")}
            types.update(q_ptr="*fp16", k_ptr="*fp16", v_ptr="*fp16", o_ptr="*fp16", mask_ptr="*i64", cu_ptr="*i32",
                         qk_scale="fp32")
            consts = dict(L_BUCKET=128, HAS_MASK=True, VARLEN=False, DOT_PRECISION="tf32", UPCAST=False, BLOCK_D=D,
                          **cfg.kwargs)
            build(f"attention fp16 D{D} masked", cfg, f, types, consts,
                  ["q_ptr", "k_ptr", "v_ptr", "o_ptr", "mask_ptr", "D"] + [n for n in types if n.startswith("stride")])
    text = "\n".join(rows) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
