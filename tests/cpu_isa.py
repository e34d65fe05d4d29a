"""Run a C++ kernel test on every instruction-set path this CPU can execute (scalar, avx2, avx512).

Use ``@pytest.mark.parametrize("isa", cpu_isas(), indirect=True)`` with the ``isa`` fixture imported
from here: the fixture forces the path with ``_cpu.set_isa`` and restores the previous one after.
"""
import pytest

from bertsilicon.ops import _dispatch


def cpu_available() -> bool:
    return _dispatch._load("cpu") is None


def cpu_isas() -> list[str]:
    """The paths this CPU can run, narrowest first (empty when the extension is not built)."""
    if not cpu_available():
        return []
    from bertsilicon import _C

    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(_C.best_isa()) + 1]


@pytest.fixture
def isa(request):
    from bertsilicon.ops import _cpu

    before = _cpu._C.active_isa()
    _cpu.set_isa(request.param)
    yield request.param
    _cpu.set_isa(before)


needs_cpu = pytest.mark.skipif(not cpu_available(), reason="C++ extension bertsilicon._C not built")
