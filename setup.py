"""Build of bertsilicon: the pure-Python package (Triton kernels in ``bertsilicon.kernels``) and the C++
CPU extension ``bertsilicon._C``.

The extension is plain C++17 bound with pybind11: no torch headers, so it builds in seconds and
does not depend on the installed torch's ABI. Instruction sets are chosen at run time with
per-function ``target`` attributes, so the build never uses ``-march=native``.

The C++ files compile in parallel (pybind11's ``ParallelCompile``): one job per CPU by default, or
``NPY_NUM_BUILD_JOBS`` jobs. Serially the nine files take ~30 s of CPU (gemm.cpp alone ~12 s), so on a
16-core machine the build is bound by gemm.cpp instead of the sum. ``BERTSILICON_BUILD_EXT=0`` installs the
package without the extension (the ``cpu`` backend is then unavailable, with that reason): for a machine
that cannot build it, so the Triton checks still run.
"""
import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ParallelCompile("NPY_NUM_BUILD_JOBS", default=0).install()  # default 0: os.cpu_count() jobs

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
    # Every importable module lives under bertsilicon/: a top-level `kernels` would shadow the PyPI package
    # of that name, which transformers imports (tests/test_packaging.py holds it).
    packages=find_packages(include=["bertsilicon", "bertsilicon.*"]),
    ext_modules=[] if os.environ.get("BERTSILICON_BUILD_EXT", "1") == "0" else [ext],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
