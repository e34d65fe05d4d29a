"""Build of bertsilicon: the pure-Python package, the Triton kernels folder shipped as
``bertsilicon.kernels`` and the C++ CPU extension ``bertsilicon._C``.

The extension is plain C++17 bound with pybind11: no torch headers, so it builds in seconds and
does not depend on the installed torch's ABI. Instruction sets are chosen at run time with
per-function ``target`` attributes, so the build never uses ``-march=native``.
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))

ext = Pybind11Extension(
    "bertsilicon._C",
    cpp_sources,
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"],
    extra_link_args=["-fopenmp"],
)

setup(
    packages=find_packages(include=["bertsilicon", "bertsilicon.*"]) + ["bertsilicon.kernels"],
    # kernels/ at the top of the repo is the subpackage bertsilicon.kernels: there must never be a
    # top-level module called `kernels` (a PyPI package of that name exists and transformers probes it).
    package_dir={"bertsilicon.kernels": "kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
