"""Shared pieces of the Triton kernels: epilogue activations, shape buckets, autotuning settings and
the fp32 matrix-unit precision.

Autotuning rule: every autotuned kernel is keyed on a *bucketed* token count
(:func:`token_bucket`, the next power of two) instead of the exact length, and its length arguments are
``do_not_specialize``, so a new sequence length neither re-tunes nor recompiles. Config lists come from
:func:`hardware_class`: ``"hopper"`` (compute capability 9.x and newer), ``"ampere"`` (8.x: A100 class),
``"turing"`` (7.x: T4 class, 64 KB shared memory; triton has no matrix-unit dots there,
:func:`matrix_unit_dots`) and ``"interpreter"`` (``TRITON_INTERPRET=1``: one small config, no tuning, so
CI is fast). The lists are checked against the SASS each config compiles to (``python -m bench.studies.gpu_sass
--arch 90|80|75``, bench/results/gpu/sass_sm*.md) and leave out configs that spill, except Hopper's 128x256
GEMM tile (55-211 LDL/STL, in its GELU epilogue).

Autotuning switch: ``BERTSILICON_AUTOTUNE=on | off`` (default ``on``), read once when the kernels are
imported (set it before anything imports ``bertsilicon.kernels``). ``off`` gives every autotuned kernel only
the *first* config of its hardware class's list (:func:`autotune_configs`), so Triton neither benchmarks
nor compiles the others: one compile per key instead of one per config. The results are the same function
(every config computes the same thing; only the tiling differs), so correctness tests use ``off`` on a GPU
(``python -m bench.gpu``, tests stage); benchmarks keep ``on``. Any other value is a ``ValueError``.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

# Epilogue activation codes (a constexpr in every kernel that applies one).
ACT_NONE, ACT_GELU, ACT_GELU_TANH, ACT_RELU = 0, 1, 2, 3
ACTIVATION_CODE = {None: ACT_NONE, "gelu": ACT_GELU, "gelu_tanh": ACT_GELU_TANH, "relu": ACT_RELU}


def interpreting() -> bool:
    """True when kernels run under the Triton interpreter (CPU tensors, no GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def hardware_class() -> str:
    """``"interpreter" | "hopper" | "ampere" | "turing"``: which autotuning config list to use."""
    if interpreting() or not torch.cuda.is_available():
        return "interpreter"
    major, _ = torch.cuda.get_device_capability()
    if major >= 9:
        return "hopper"
    return "ampere" if major == 8 else "turing"


AUTOTUNE_ENV = "BERTSILICON_AUTOTUNE"


def autotune_configs(configs: list) -> list:
    """The config list an autotuned kernel is given: ``configs`` whole (``BERTSILICON_AUTOTUNE`` unset or
    ``on``), or ``configs[:1]`` (``off``: a single config, which Triton's autotuner runs without
    benchmarking). See the module docstring."""
    value = os.environ.get(AUTOTUNE_ENV, "on").strip().lower()
    if value == "on":
        return list(configs)
    if value == "off":
        return list(configs[:1])
    raise ValueError(f"{AUTOTUNE_ENV}={os.environ[AUTOTUNE_ENV]!r} is unknown; expected 'on' (autotune over the "
                     "hardware class's configs) or 'off' (first config only, no tuning)")


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for launchers on the host. ``triton.next_power_of_2``
    gives the same, but in triton 3.9 it is a ``constexpr_function`` whose wrapper costs ~2 us a call from
    Python; launchers call this and ``cdiv`` ~60 times a forward."""
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative ints, on the host (``triton.cdiv`` without its wrapper; see next_pow2)."""
    return -(-a // b)


def token_bucket(n: int) -> int:
    """The autotuning key for a token / row count: the next power of two (at least 16)."""
    return max(16, next_pow2(n))


def fp32_dot_precision() -> str:
    """``input_precision`` of ``tl.dot`` on float32 operands.

    Under the interpreter: ``"ieee"`` (numpy float32). On a GPU: ``"tf32"`` exactly when torch's own
    float32 matmuls use TF32 (``torch.backends.cuda.matmul.allow_tf32``, False by default), so the
    kernels and the torch they are compared with are in the same precision class; the environment
    variable ``BERTSILICON_TF32=1|0`` overrides it. fp16/bf16/int8 operands ignore it.
    """
    if interpreting():
        return "ieee"
    env = os.environ.get("BERTSILICON_TF32")
    if env is not None:
        return "tf32" if env == "1" else "ieee"
    try:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    except RuntimeError:  # a torch that refuses the legacy flag after the new fp32_precision API was used
        return "tf32" if torch.backends.cuda.matmul.fp32_precision == "tf32" else "ieee"


def matrix_unit_dots(kind: Optional[str] = None) -> bool:
    """Whether triton lowers ``tl.dot`` on fp16 / bf16 / tf32 / int8 operands to the matrix units on GPU class
    ``kind`` (default: this machine's, :func:`hardware_class`). Not on ``"turing"`` (compute capability 7.x: T4):
    triton 3.6 and 3.9 compile fp16 and bf16 dots for sm_75 to FFMA (no HMMA in the SASS) and fail to compile
    int8 dots at all (bench/results/gpu/sass_sm75.md); their mma lowering starts at Ampere. There the GEMM launcher
    hands the product to cuBLAS (bertsilicon/kernels/gemm.py) and attention runs its FMA configs. The interpreter counts
    as having them: it runs the kernels the GPUs with matrix units run."""
    return (kind or hardware_class()) != "turing"


def fma_dots(dtype: torch.dtype, dot_precision: str, kind: Optional[str] = None) -> bool:
    """Whether ``tl.dot`` runs on the FMA units rather than the matrix units: fp32 operands with
    ``input_precision="ieee"`` (the GPU default: torch's TF32 flag is off), and every dot on a GPU class
    without matrix-unit dots (:func:`matrix_unit_dots`: Turing). Such kernels get their own autotuning
    configs (``fma=True`` in the kernels' ``_configs``): the FMA dot keeps a whole BLOCK_K slice of both
    operands per thread, so the matrix-unit tiles (BLOCK_K 64, 128-row attention tiles) spill thousands of
    LDL/STL on sm_90 (worst with triton 3.6; bench/results/gpu/sass_sm90.md) and sm_75 (sass_sm75.md)."""
    return (dtype == torch.float32 and dot_precision == "ieee") or not matrix_unit_dots(kind)


@triton.jit
def gelu_erf(x):
    """0.5 x (1 + erf(x / sqrt 2)) in fp32; gelu(-inf) = 0 (the formula alone gives -inf * 0 = NaN)."""
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return tl.where(x == float("-inf"), 0.0, y)


@triton.jit
def gelu_tanh(x):
    """0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as x * sigmoid(2u)
    (1 + tanh(u) = 2 sigmoid(2u)): no cancellation for negative x, and no tanh in triton.language."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    t = -2.0 * u
    y = x / (1.0 + tl.exp(tl.minimum(t, 80.0)))
    return tl.where((t > 80.0) | (x == float("-inf")), 0.0, y)  # |gelu| < |x| e^-80 there: 0 in fp32


@triton.jit
def activate(y, ACTIVATION: tl.constexpr):
    """The epilogue activation selected by the constexpr code (ACT_*); y is fp32."""
    if ACTIVATION == 1:
        y = gelu_erf(y)
    elif ACTIVATION == 2:
        y = gelu_tanh(y)
    elif ACTIVATION == 3:
        y = tl.where(y < 0, 0.0, y)  # relu; NaN stays NaN (NaN < 0 is False)
    return y


def _interpreter_scalar_index_broken(patch_lang_tensor) -> bool:
    """Whether the interpreter's ``tensor.__index__`` (installed by ``patch_lang_tensor`` at each launch)
    fails on a scalar: the interpreter holds scalars as 1-element 1-d numpy arrays, and triton 3.6
    converts them with ``int(array)``, which numpy >= 2.4 refuses (``TypeError: only 0-dimensional
    arrays can be converted to Python scalars``) — so ``range(0, N, BLOCK)`` over a runtime ``N`` fails.
    Checked on a throw-away class, so nothing of triton's is touched."""
    import numpy as np

    class _Scope:
        @staticmethod
        def set_attr(obj, name, value):
            setattr(obj, name, value)

    class _Tensor:
        pass

    class _Handle:
        data = np.array([3], dtype=np.int32)

    try:
        patch_lang_tensor(_Tensor, _Scope())
        probe = _Tensor()
        probe.handle = _Handle()
        return _Tensor.__index__(probe) != 3
    except TypeError:
        return True
    except Exception:  # an interpreter whose internals differ: leave it alone
        return False


def _fix_interpreter_scalar_index() -> None:
    """Interpreter only (``TRITON_INTERPRET=1``; compiled GPU kernels never see this): where the
    interpreter's scalar ``__index__`` is broken (triton 3.6 with numpy >= 2.4, see
    :func:`_interpreter_scalar_index_broken`), wrap its per-launch tensor patch so ``__index__`` reads
    the one element with ``.item()``, as triton 3.9's interpreter does. No-op everywhere else."""
    if not interpreting():
        return
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_bertsilicon_fixed", False):
        return
    if not _interpreter_scalar_index_broken(original):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor._bertsilicon_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


_fix_interpreter_scalar_index()


def upcast_bf16_dots(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` on bf16 operands must be widened to fp32 first: only under the interpreter,
    whose ``create_dot`` (triton 3.6 and 3.9) multiplies the raw uint16 storage of bf16 tensors. Widening bf16
    to fp32 is exact and the products of bf16 values are exact in fp32, so the result is the same
    bf16 x bf16 -> fp32 product a GPU computes."""
    return interpreting() and dtype == torch.bfloat16


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b on the matrix units (fp32 accumulator); UPCAST: see :func:`upcast_bf16_dots`."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc
