"""Compile every Triton kernel for a GPU target without a GPU and read its SASS.

    python -m bench.studies.gpu_sass [--arch 90] [--out bench/results/gpu/sass_sm90.md]

Kernels: the GEMM (fp16, bf16, fp32 ieee and tf32, int8) and attention (padded with a mask, packed
varlen; fp16 and fp32 ieee at head dims 32/64/128, bf16 and fp32 tf32 at 64) in every autotuning config
the launcher would use on the hardware class (``hopper`` for sm_90, ``ampere`` for sm_80, ``turing``
below; dots on the FMA units get the FMA lists: fp32 with ieee dots, and every dot on turing, where triton
has no matrix-unit dots and ``linear`` runs its product on cuBLAS: the turing GEMM rows show why), and the
row kernels (add_layernorm, bias_gelu, quantize, round_to) at the launch configs their launchers pick for
BERT widths.

Per kernel: registers per thread and stack frame (``cuobjdump -res-usage``; a nonzero stack is spill
space), shared memory (and whether it fits one block on the target: the autotuner drops configs that do
not), SASS instruction count, matrix instructions (HGMMA/IGMMA = Hopper wgmma; HMMA/IMMA = mma.sync),
local-memory traffic (LDL/STL: spills), async copies (LDGSTS = cp.async, all widths) and 16-byte global
loads/stores. Costs no device time: uses the ptxas and cuobjdump that ship with the installed triton.
Strides are specialised as a real launch would (last dim 1, the others divisible by 16).

``--out`` keeps one section per triton version in the file: running this under another triton adds or
replaces that version's section and leaves the others. The device's triton may differ from this
machine's: the figures are leads for a GPU run, not measurements.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SASS_OPS = ("HGMMA", "IGMMA", "HMMA", "IMMA", "LDL", "STL", "LDGSTS", "LDG.E.128", "STG.E.128")
# Largest dynamic shared memory one block may use (opt-in), bytes: sm_90 227 KB, sm_80 163 KB, sm_75 64 KB.
MAX_SHARED = {90: 232448, 80: 166912, 75: 65536}
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+\S", re.M)


@dataclass
class Case:
    """One kernel specialisation to compile: argument types, constexprs and ``tt.divisibility`` 16 args."""
    name: str
    fn: object                       # the JITFunction (not the Autotuner)
    types: dict
    consts: dict
    div16: list
    num_warps: int
    num_stages: int
    config: str = field(default="")  # shown in the table


def _torch_dtypes() -> dict:
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "i8": torch.int8}


def _hardware_class(arch: int) -> str:
    return "hopper" if arch >= 90 else ("ampere" if arch >= 80 else "turing")


def _describe(kwargs: dict, num_warps: int, num_stages: int) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items()) + f", w{num_warps} s{num_stages}"


def gemm_cases(kind: str):
    from bertsilicon.kernels import gemm as G
    from bertsilicon.kernels._common import fma_dots

    fn = G._gemm_kernel
    # (name, operand dtype, output dtype, DOT_PRECISION): fp32 as launched by default (torch's TF32 flag
    # off: ieee) and with TF32 allowed.
    variants = (("fp16", "fp16", "fp16", "tf32"), ("bf16", "bf16", "bf16", "tf32"), ("fp32 ieee", "fp32", "fp32", "ieee"),
                ("fp32 tf32", "fp32", "fp32", "tf32"), ("i8", "i8", "fp16", "ieee"))
    for label, dt, out, precision in variants:
        int8 = dt == "i8"
        for cfg in G._configs(int8, kind, fma=fma_dots(_torch_dtypes()[dt], precision, kind)):  # as the launcher picks
            types = dict(x_ptr=f"*{dt}", w_ptr=f"*{dt}", out_ptr=f"*{out}", bias_ptr=f"*{out}", xs_ptr="*fp32",
                         ws_ptr="*fp32", M="i32", N="i32", K="i32", stride_xm="i32", stride_wn="i32", stride_om="i32")
            consts = dict(stride_xk=1, stride_wk=1, M_BUCKET=4096, INT8=int8, HAS_BIAS=True, ACTIVATION=1,
                          X_SCALE_PER_ROW=True, W_SCALE_PER_COL=True, DOT_PRECISION=precision, UPCAST=False, **cfg.kwargs)
            yield Case(f"gemm {label} +bias+gelu", fn, types, consts,
                       ["x_ptr", "w_ptr", "out_ptr", "bias_ptr", "N", "K", "stride_xm", "stride_wn", "stride_om"],
                       cfg.num_warps, cfg.num_stages, _describe(cfg.kwargs, cfg.num_warps, cfg.num_stages))


def attention_cases(kind: str):
    from bertsilicon.kernels import attention as A
    from bertsilicon.kernels._common import fma_dots

    fn = A._attention_fwd_kernel
    # (dtype, DOT_PRECISION, head dim, varlen): every head dim in fp16 and in fp32 ieee (FMA dots: their own
    # configs) padded+masked (int64 HF mask), the packed path at the students' head dims, the rest at 64.
    variants = [("fp16", "tf32", D, False) for D in (32, 64, 128)] + [("fp16", "tf32", D, True) for D in (32, 64)]
    variants += [("bf16", "tf32", 64, False), ("fp32", "tf32", 64, False)]
    variants += [("fp32", "ieee", D, False) for D in (32, 64, 128)] + [("fp32", "ieee", 32, True)]
    for dt, precision, D, varlen in variants:
        for cfg in A._configs(kind, fma=fma_dots(_torch_dtypes()[dt], precision, kind)):  # as the launcher picks
            types = {n: "i32" for n in fn.arg_names if n.startswith("stride") or n in ("H", "Lq", "Lk", "D")}
            types.update(q_ptr=f"*{dt}", k_ptr=f"*{dt}", v_ptr=f"*{dt}", o_ptr=f"*{dt}",
                         mask_ptr="*i32" if varlen else "*i64", cu_ptr="*i32", qk_scale="fp32")
            consts = dict(L_BUCKET=128, HAS_MASK=not varlen, VARLEN=varlen, DOT_PRECISION=precision, UPCAST=False,
                          BLOCK_D=D, **cfg.kwargs)
            label = f"fp32 {precision}" if dt == "fp32" else dt
            yield Case(f"attention {label} D{D} {'varlen' if varlen else 'masked'}", fn, types, consts,
                       ["q_ptr", "k_ptr", "v_ptr", "o_ptr", "mask_ptr", "cu_ptr", "D"] + [n for n in types if n.startswith("stride")],
                       cfg.num_warps, cfg.num_stages, _describe(cfg.kwargs, cfg.num_warps, cfg.num_stages))


def row_kernel_cases():
    """The non-autotuned kernels at the launch configs their launchers choose (one stage: no K loop to pipeline)."""
    from bertsilicon import formats
    from bertsilicon.kernels import elementwise as E
    from bertsilicon.kernels import layernorm as LN

    for dt in ("fp16", "bf16", "fp32"):
        for N in (384, 768):
            rows, block_n, warps = LN.launch_config(N)
            types = dict(x_ptr=f"*{dt}", r_ptr=f"*{dt}", w_ptr=f"*{dt}", b_ptr=f"*{dt}", out_ptr=f"*{dt}", rows="i32",
                         N="i32", stride_x="i32", stride_r="i32", stride_out="i32", eps="fp32")
            consts = dict(ROWS=rows, BLOCK_N=block_n)
            yield Case(f"add_layernorm {dt} N{N}", LN._add_layernorm_kernel, types, consts,
                       ["x_ptr", "r_ptr", "w_ptr", "b_ptr", "out_ptr", "N", "stride_x", "stride_r", "stride_out"],
                       warps, 1, _describe(consts, warps, 1))
    for dt in ("fp16", "bf16", "fp32"):
        for N, act in ((3072, 1), (1536, 2)):
            block_r, block_n = E.bias_act_blocks(N)
            types = dict(x_ptr=f"*{dt}", bias_ptr=f"*{dt}", out_ptr=f"*{dt}", rows="i32", N="i32", stride_x="i32")
            consts = dict(ACTIVATION=act, BLOCK_R=block_r, BLOCK_N=block_n, HAS_BIAS=True)
            yield Case(f"bias_gelu {dt} N{N} {'erf' if act == 1 else 'tanh'}", E._bias_act_kernel, types, consts,
                       ["x_ptr", "bias_ptr", "out_ptr", "N", "stride_x"], 4, 1, _describe(consts, 4, 1))
    for dt in ("fp16", "bf16", "fp32"):
        for N in (768, 3072):
            block_n, warps = E.quantize_block(N)
            types = dict(x_ptr=f"*{dt}", inv_smooth_ptr="*fp32", q_ptr="*i8", scale_ptr="*fp32", rows="i32", N="i32",
                         stride_x="i32")
            consts = dict(BLOCK_N=block_n, SMOOTH=True)
            yield Case(f"quantize per_token {dt} N{N}", E._quantize_rows_kernel, types, consts,
                       ["x_ptr", "inv_smooth_ptr", "q_ptr", "scale_ptr", "N", "stride_x"], warps, 1,
                       _describe(consts, warps, 1))
    for fmt, dt, rounding in (("bf16", "fp32", "stochastic"), ("bf16", "fp32", "nearest"), ("e4m3", "bf16", "stochastic"),
                              ("e5m2", "fp16", "nearest"), ("q3.4", "fp32", "stochastic")):
        bf16 = dt == "bf16"
        consts = E.round_to_constexprs(formats.get_format(fmt), rounding, bf16)
        ptr = "*i16" if bf16 else f"*{dt}"
        types = dict(x_ptr=ptr, out_ptr=ptr, n="i32", seed="i64")
        yield Case(f"round_to {dt} -> {fmt} {rounding}", E._round_to_kernel, types, consts, ["x_ptr", "out_ptr"],
                   E.ROUND_TO_WARPS, 1, f"BLOCK={E.ROUND_TO_BLOCK}, w{E.ROUND_TO_WARPS} s1")


def compile_case(case: Case, target, cuobjdump: Path, max_shared: int) -> str:
    """One Markdown table row for ``case`` compiled for ``target``."""
    import triton
    from triton.compiler import ASTSource

    fn = case.fn
    sig = {n: ("constexpr" if n in case.consts else case.types[n]) for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.div16}
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=case.consts, attrs=attrs), target=target,
                           options=dict(num_warps=case.num_warps, num_stages=case.num_stages))
    except Exception as exc:  # e.g. int8 dot on Turing
        msg = " ".join(str(exc).split())[:120].replace("|", "/")
        return f"| {case.name} | {case.config} | compile failed: {type(exc).__name__}: {msg} |" + " |" * (len(SASS_OPS) + 3)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(k.asm["cubin"])
        fh.flush()
        sass = subprocess.run([str(cuobjdump), "-sass", fh.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([str(cuobjdump), "-res-usage", fh.name], capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    shared = k.metadata.shared
    fits = "" if shared <= max_shared else " (too big: dropped)"
    counts = [len(re.findall(re.escape(op) + r"\b", sass)) for op in SASS_OPS]
    return (f"| {case.name} | {case.config} | {regs.group(1) if regs else '?'} | {stack.group(1) if stack else '?'} | "
            f"{shared}{fits} | {len(_INSTRUCTION.findall(sass))} | " + " | ".join(map(str, counts)) + " |")


def _ptxas_version(ptxas: Path) -> str:
    try:
        out = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else "?"


def merge_section(path: Path, title: str, heading: str, section: str) -> str:
    """The text of ``path`` with the ``## <heading>`` section replaced by (or, if absent, extended with)
    ``section``; sections stay sorted by heading. A file without sections gets ``title`` on top."""
    old = path.read_text() if path.exists() else ""
    parts = re.split(r"(?m)^(?=## )", old)
    sections = {p.splitlines()[0][3:].strip(): p.rstrip() + "\n" for p in parts[1:]}
    sections[heading] = f"## {heading}\n\n{section.rstrip()}\n"
    top = parts[0].rstrip() if parts and parts[0].strip() else title
    return top + "\n\n" + "\n".join(sections[h] for h in sorted(sections))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--out", default=None, help="Markdown file; this triton version's section is replaced")
    p.add_argument("--only", default=None, help="comma-separated name prefixes, e.g. gemm,attention")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import triton
    from triton.backends.compiler import GPUTarget

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    target = GPUTarget("cuda", args.arch, 32)
    kind = _hardware_class(args.arch)
    max_shared = MAX_SHARED.get(args.arch, MAX_SHARED[75] if args.arch < 80 else MAX_SHARED[80])
    cases = [*gemm_cases(kind), *attention_cases(kind), *row_kernel_cases()]
    if args.only:
        prefixes = tuple(s.strip() for s in args.only.split(","))
        cases = [c for c in cases if c.name.startswith(prefixes)]
    heading = f"triton {triton.__version__} (ptxas {_ptxas_version(bin_dir / 'ptxas')})"
    cols = ("kernel", "config", "regs", "stack (B)", f"shared (B, max {max_shared})", "instr") + SASS_OPS
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    print(f"{heading}, sm_{args.arch} ({kind} configs): {len(cases)} kernels", flush=True)
    for case in cases:
        rows.append(compile_case(case, target, bin_dir / "cuobjdump", max_shared))
        print(rows[-1], flush=True)
    if args.out:
        title = (f"# SASS of the Triton kernels for sm_{args.arch} ({kind} configs)\n\n"
                 f"Generated by `python -m bench.studies.gpu_sass --arch {args.arch} --out <this file>`, one section per "
                 "triton version (see the module docstring for the columns).")
        if kind == "turing":
            title += ("\n\nTuring: triton compiles fp16 / bf16 dots to FFMA here (HMMA 0) and int8 dots not at all, so "
                      "`linear` runs its product on cuBLAS (tensor cores) with the bias + activation in the "
                      "element-wise kernel, `int8_linear` refuses the device, and attention runs the FMA configs "
                      "(`bertsilicon/kernels/_common.matrix_unit_dots`). The GEMM rows are what the kernel would compile.")
        path = Path(args.out)
        path.write_text(merge_section(path, title, heading, "\n".join(rows)))
        print(f"wrote {args.out} ({heading})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
