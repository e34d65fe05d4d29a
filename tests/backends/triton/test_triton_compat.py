"""Compatibility shims for the triton versions we run on (3.9, and 3.6 on older GPU stacks), and the
per-version sections of the SASS report. No kernel is compiled here."""
import operator

import numpy as np
import pytest

pytest.importorskip("triton")

from bertsilicon.kernels import _common  # noqa: E402


def _patcher(index):
    """A stand-in for triton's ``interpreter._patch_lang_tensor`` that installs ``index`` as ``__index__``."""
    def patch_lang_tensor(tensor, scope):
        scope.set_attr(tensor, "__index__", index)
    return patch_lang_tensor


def test_scalar_index_probe_tells_broken_from_working_interpreters():
    # triton 3.6 with numpy >= 2.4: int() of a 1-element 1-d array raises; operator.index always does
    assert _common._interpreter_scalar_index_broken(_patcher(lambda self: operator.index(self.handle.data)))
    assert _common._interpreter_scalar_index_broken(_patcher(lambda self: 0))              # wrong value
    assert not _common._interpreter_scalar_index_broken(_patcher(lambda self: int(self.handle.data.squeeze())))
    # an interpreter whose internals changed shape is left alone, not "fixed"
    assert not _common._interpreter_scalar_index_broken(lambda tensor, scope: 1 / 0)


@pytest.mark.skipif(not _common.interpreting(), reason="the shim is installed under TRITON_INTERPRET=1 only")
def test_installed_interpreter_indexes_scalars():
    """Whatever triton is installed, a runtime scalar (a 1-element 1-d array in the interpreter) works as
    ``range()`` bound after bertsilicon.kernels is imported; a block still refuses."""
    from triton.runtime import interpreter

    class Scope:
        @staticmethod
        def set_attr(obj, name, value):
            setattr(obj, name, value)

    class Tensor:
        def __init__(self, data):
            self.handle = type("Handle", (), {"data": data})()

    interpreter._patch_lang_tensor(Tensor, Scope())
    assert list(range(0, Tensor(np.array([70], dtype=np.int32)), 32)) == [0, 32, 64]
    with pytest.raises((TypeError, ValueError)):
        operator.index(Tensor(np.array([1, 2], dtype=np.int32)))


def test_sass_report_keeps_one_section_per_triton_version(tmp_path):
    from bench.studies.gpu_sass import merge_section

    path = tmp_path / "sass.md"
    path.write_text(merge_section(path, "# SASS\n\nintro", "triton 3.9.0", "| a |\n|---|\n| 39 |"))
    path.write_text(merge_section(path, "# ignored: the file has a top already", "triton 3.6.0", "| a |\n|---|\n| 36 |"))
    path.write_text(merge_section(path, "# x", "triton 3.9.0", "| a |\n|---|\n| 39 again |"))
    text = path.read_text()
    assert text.startswith("# SASS\n\nintro\n\n## triton 3.6.0\n")
    assert text.index("| 36 |") < text.index("## triton 3.9.0") < text.index("| 39 again |")
    assert "| 39 |" not in text and text.count("## triton") == 2


def test_host_side_pow2_and_cdiv_equal_tritons():
    """The launchers' plain-Python next_pow2 / cdiv (triton 3.9 wraps its own in a costly constexpr_function):
    the same values as triton's for every size a launcher sees (and 1, not 0, for 0)."""
    import triton

    assert [_common.next_pow2(n) for n in range(1, 1 << 17)] == [triton.next_power_of_2(n) for n in range(1, 1 << 17)]
    assert _common.next_pow2(0) == 1
    assert all(_common.cdiv(a, b) == triton.cdiv(a, b) for a in range(0, 5000, 7) for b in (1, 3, 16, 64, 128, 256))
    assert [_common.token_bucket(n) for n in (0, 1, 16, 17, 1919, 2048, 2049)] == [16, 16, 16, 32, 2048, 2048, 4096]
