"""`bertsilicon demo` (what `make demo` runs): the real MiniLM, every provider's row, and the C++ kernels line."""
import re

import torch

from bertsilicon import cli
from bertsilicon.backends import registry, routing


def test_demo_prints_every_provider_and_the_cpu_kernels(capsys):
    threads = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--sentences", "8", "--batch", "4", "--seq-len", "32", "--repeats", "1",
                         "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    row = re.compile(r"^([^\d\n]+?)\s+(fp32|bf16|fp16|int8)\s+[\d.]+\s+[\d.]+x\s+([\d.]+)\s+[\d.]+\s+ok$", re.M)
    rows = {(m.group(1).strip(), m.group(2)): float(m.group(3)) for m in row.finditer(out)}  # -> mean cosine
    for precision in ("fp32", "bf16", "fp16", "int8"):
        assert ("bertsilicon", precision) in rows, out
    assert rows[("HF torch SDPA", "fp32")] == 1.0
    assert rows[("bertsilicon", "fp32")] > 0.99999 and rows[("bertsilicon", "int8")] > 0.995  # mean cosine
    if registry.load("cpu") is None:  # the C++ backend is built: each precision names its kernels
        from bertsilicon.backends import cpu as _cpu

        for precision in ("fp32", "bf16", "fp16", "int8"):
            assert re.search(rf"^  {precision}: {re.escape(_cpu.kernel_path())} path, ", out, re.M), out
