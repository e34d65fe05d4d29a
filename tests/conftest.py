"""Test configuration. Triton kernels run under the interpreter on CPU tensors unless a GPU is present:
TRITON_INTERPRET must be set before anything imports triton, so it is set here, first."""
import os
import sys
from pathlib import Path

import pytest

# The shared helpers (numerics, cpu_isa, hf_parity) live here; the tests sit in folders mirroring the package and
# import a few of each other's fixtures and peers by module name (the names are unique), whatever subset runs.
_HERE = Path(__file__).resolve().parent
for _folder in [_HERE, *sorted(p for p in _HERE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
    sys.path.insert(0, str(_folder))

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def triton_device():
    """Where Triton tests put their tensors: CUDA when present, else CPU under the interpreter."""
    return "cuda" if _HAS_CUDA else "cpu"
