"""Every instruction in bertsilicon._C is one the CPUs that may run its function have (no SIGILL anywhere).

One build runs on every x86-64 CPU (no ``-march=native``): each kernel is compiled once per path with a
per-function target (csrc/isa_instances.h) and chosen at run time. This reads the disassembly of the built
extension and checks, function by function, that

* VEX/EVEX code (any ``v...`` mnemonic) is only in the avx2 / avx512 paths' functions, never in the scalar
  path or in the dispatch, packing and binding code every CPU runs;
* EVEX code (zmm or opmask registers, xmm/ymm 16-31, embedded broadcast) is only in the avx512 path;
* AVX512_BF16 instructions are only in the bf16 dot policies (``DotBf16``, ``MacBf16``) and AVX512-VNNI ones
  only in the u8 x s8 GEMM policy (``MacU8S8``): the only code the run-time checks of ``avx512_bf16`` /
  ``avx512_vnni`` guard. That the guards hold (those policies never run when the feature is missing) is
  tested by running every kernel with the features hidden (``cpu_isas(older_avx512=True)``).

A new kernel, or a compiler that vectorises a float -> bf16 cast with ``vcvtneps2bf16`` in shared code,
fails here on this machine rather than with SIGILL on a user's Skylake or Haswell server.
"""
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from cpu_isa import needs_cpu

OBJDUMP = shutil.which("objdump")
pytestmark = [needs_cpu, pytest.mark.skipif(OBJDUMP is None, reason="needs objdump (binutils)")]

AVX512_FUNCTIONS = re.compile(r"bs::avx512::|bs::gemm512::|_avx512\(")
AVX2_FUNCTIONS = re.compile(r"bs::avx2::|bs::gemm256::|_avx2\(")
EVEX_OPERAND = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|\{1to\d+\}")
BF16_INSTRUCTIONS = {"vdpbf16ps", "vcvtne2ps2bf16", "vcvtneps2bf16"}
VNNI_INSTRUCTIONS = {"vpdpbusd", "vpdpbusds", "vpdpwssd", "vpdpwssds"}


def _instructions():
    """{function (demangled): [(mnemonic, operands), ...]} for the text of bertsilicon._C."""
    from bertsilicon import _C

    text = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", "-C", _C.__file__], check=True,
                          capture_output=True, text=True).stdout
    functions, current = defaultdict(list), None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            current = head.group(1)
            continue
        body = re.match(r"^\s+[0-9a-f]+:\s+(\S+)\s*(.*)$", line)
        if body and current is not None:
            functions[current].append((body.group(1), body.group(2)))
    return functions


@pytest.fixture(scope="module")
def functions():
    found = _instructions()
    assert sum(1 for name in found if AVX512_FUNCTIONS.search(name)) > 20, "no avx512 path in the disassembly?"
    return found


def _offenders(functions, allowed, instruction):
    bad = {name: next(f"{m} {ops}" for m, ops in body if instruction(m, ops))
           for name, body in functions.items() if not allowed(name) and any(instruction(m, ops) for m, ops in body)}
    return dict(list(bad.items())[:10])


def test_vector_code_only_in_the_vector_paths(functions):
    bad = _offenders(functions, lambda n: AVX512_FUNCTIONS.search(n) or AVX2_FUNCTIONS.search(n),
                     lambda m, ops: m.startswith("v"))
    assert not bad, f"AVX instructions in code every x86-64 CPU runs: {bad}"


def test_evex_code_only_in_the_avx512_path(functions):
    bad = _offenders(functions, lambda n: AVX512_FUNCTIONS.search(n), lambda m, ops: bool(EVEX_OPERAND.search(ops)))
    assert not bad, f"AVX-512 (EVEX) instructions outside the avx512 path: {bad}"


@pytest.mark.parametrize("feature,mnemonics,policy", [("avx512_bf16", BF16_INSTRUCTIONS, r"DotBf16|MacBf16"),
                                                      ("avx512_vnni", VNNI_INSTRUCTIONS, r"MacU8S8")])
def test_extension_code_only_in_its_guarded_policy(functions, feature, mnemonics, policy):
    allowed = lambda n: AVX512_FUNCTIONS.search(n) and re.search(policy, n)  # noqa: E731
    bad = _offenders(functions, allowed, lambda m, ops: m in mnemonics)
    assert not bad, f"{feature} instructions outside the {policy} code its run-time check guards: {bad}"
    assert any(m in mnemonics for name, body in functions.items() if allowed(name) for m, _ in body), \
        f"no {feature} instruction found at all: has the {policy} kernel been renamed?"
