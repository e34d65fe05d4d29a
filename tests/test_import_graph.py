"""No import circles in the package (tools/check_imports.py), and the layering holds: data flows
model -> encoder -> layer -> ops / routing -> backend -> kernel, never back."""
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from check_imports import circles, import_graph  # noqa: E402


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_circles_are_found(tmp_path):
    """The checker itself: a planted circle (a -> b -> a, through a function-level import) is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_backends_import_nothing_above_them():
    """A backend imports neither the public ops nor the models; the kernels import no backend."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("bertsilicon.backends", "bertsilicon.kernels")):
            above = {d for d in deps if d.startswith(("bertsilicon.ops", "bertsilicon.models"))}
            assert not above, f"{name} imports {sorted(above)}"
        if name.startswith("bertsilicon.kernels"):
            assert not {d for d in deps if d.startswith("bertsilicon.backends")}, name


def test_import_leaves_the_compiler_unloaded():
    """``import bertsilicon`` must not import torch._dynamo (a second or more of every process start)."""
    code = "import sys, torch, bertsilicon; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_trace_time_constant_mark_is_torchs():
    """routing's mark without importing torch._dynamo sets exactly what torch.compiler's own API sets."""
    from bertsilicon.backends import routing

    def ours():
        return True

    def theirs():
        return True

    routing.assume_constant_when_traced(ours)
    torch.compiler.assume_constant_result(theirs)
    assert ours.__dict__ == theirs.__dict__ and theirs.__dict__
