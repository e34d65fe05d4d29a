"""Run a C++ kernel test on every instruction-set path this CPU can execute (scalar, avx2, avx512, and
with ``cpu_isas(older_avx512=True)`` the AVX-512 CPUs without VNNI or BF16).

Use ``@pytest.mark.parametrize("isa", cpu_isas(), indirect=True)`` with the ``isa`` fixture imported
from here: the fixture forces the path with ``_cpu.set_isa`` (and ``_cpu.hide_cpu_features``) and
restores the previous one after.
"""
import pytest

from bertsilicon.backends import registry


def cpu_available() -> bool:
    return registry.load("cpu") is None


# Kernel paths for the AVX-512 CPUs that lack extensions this one may have: the path name, then the
# features hidden from the kernels (``_cpu.hide_cpu_features``) so this CPU runs their code.
OLDER_AVX512 = {
    "avx512-novnni": ("avx512_vnni", "avx512_bf16"),   # Skylake-SP / -X: AVX-512 F/BW/VL/DQ only
    "avx512-nobf16": ("avx512_bf16",),                 # Cascade Lake, Ice Lake: VNNI, no BF16
}


def cpu_isas(older_avx512: bool = False) -> list[str]:
    """The paths this CPU can run, narrowest first (empty when the extension is not built). With
    ``older_avx512`` also the AVX-512 CPUs without VNNI / BF16 (:data:`OLDER_AVX512`) where this CPU has
    what they lack: for the kernels whose code depends on those features (GEMM, attention, the layer)."""
    if not cpu_available():
        return []
    from bertsilicon import _C

    order = ["scalar", "avx2", "avx512"]
    paths = order[: order.index(_C.best_isa()) + 1]
    if older_avx512 and paths[-1] == "avx512":
        has = _C.cpu_features()
        older = [name for name, hidden in OLDER_AVX512.items() if any(has[f] for f in hidden)]
        paths[-1:-1] = older
    return paths


def use_path(path: str) -> None:
    """Make the kernels take ``path`` (a name of :func:`cpu_isas`)."""
    from bertsilicon.backends import cpu as _cpu

    _cpu.hide_cpu_features(OLDER_AVX512.get(path, ()))
    _cpu.set_isa(path.split("-")[0])


@pytest.fixture
def isa(request):
    from bertsilicon.backends import cpu as _cpu

    before = _cpu.runtime._C.active_isa()
    use_path(request.param)
    yield request.param
    _cpu.hide_cpu_features([])
    _cpu.set_isa(before)


needs_cpu = pytest.mark.skipif(not cpu_available(), reason="C++ extension bertsilicon._C not built")
