"""The package's import names: everything importable lives under ``bertsilicon``, so nothing in the repository
shadows an installed distribution (the PyPI ``kernels`` package, which transformers imports, above all) when
Python runs from the repository root, and the Triton kernels ship as ``bertsilicon.kernels`` in an editable
and in a wheel install."""
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, cwd: Path, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_no_top_level_name_of_the_repository_is_an_installed_module():
    """Run from the root, Python puts the root first on sys.path: a folder or module there named like an
    installed distribution's top-level module would be imported in its place."""
    installed = set(importlib.metadata.packages_distributions())
    here = {p.stem if p.suffix == ".py" else p.name for p in ROOT.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert here & installed <= {"bertsilicon"}, here & installed
    assert not (ROOT / "kernels").exists()


def test_kernels_from_the_repository_root_is_the_installed_package():
    origin = _python("import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else '')", ROOT)
    assert not origin or "site-packages" in Path(origin).parts, origin  # installed, or absent: never ours
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return  # older transformers: no `kernels` dependency, and nothing of ours answers to the name
    code = ("import transformers.integrations.hub_kernels, kernels, bertsilicon.kernels as k;"
            "print(kernels.__file__); print(k.__file__)")
    theirs, ours = _python(code, ROOT).splitlines()
    assert "site-packages" in theirs and ours == str(ROOT / "bertsilicon" / "kernels" / "__init__.py")


def test_the_wheel_ships_the_kernels_under_the_package(tmp_path):
    """A regular install: the wheel's files (built without the C++ extension, pure Python) and an import of
    ``bertsilicon.kernels`` from it, outside the repository."""
    pytest.importorskip("setuptools")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)], capture_output=True,
                           text=True, env={**os.environ, "BERTSILICON_BUILD_EXT": "0"}, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel, = tmp_path.glob("bertsilicon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"bertsilicon", wheel.name.split("-")[0] + "-" +
                                                wheel.name.split("-")[1] + ".dist-info"}
    assert {"bertsilicon/kernels/__init__.py", "bertsilicon/kernels/gemm.py",
            "bertsilicon/kernels/attention.py"} <= set(names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    where = _python("import bertsilicon.kernels as k; print(k.__file__)", tmp_path, PYTHONPATH=str(target))
    assert where == str(target / "bertsilicon" / "kernels" / "__init__.py")
