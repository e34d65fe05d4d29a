"""Special values at every block boundary of every fused op, on every backend that runs here.

A kernel can handle NaN, +-inf, -0.0, values near overflow and subnormals inside one block (a SIMD
vector, a Triton tile) and still lose them in a later block, in the tail or across the K loop of a GEMM
(the Triton per-token quantize dropped a NaN from the first 4096 columns of a longer row: ca5a13e).
These tests put each special value in the first block, a middle block, the last full block and the tail
of rows (of K for the GEMMs, of the keys for attention, and a padded key), at sizes past every block:

==================  ==================================================  ===================================
op                  C++ (avx512 / avx2 / scalar)                        Triton (interpreter; GPU configs)
==================  ==================================================  ===================================
bias_gelu           vectors of 16 / 8 / 1, masked tail                  1024-column blocks
add_layernorm       sums over 4 vectors (64 / 32 / 4), then the tail    the whole row (one block)
quantize            rows by vectors + tail; per_tensor 65536-chunks     4096-column blocks, looped per row
linear              k-blocks of 64 steps (fp32 64 k, bf16 pairs 128 k),  32 x 32 x 32 (up to 128 x 256 x 64)
                    6-row x 64 / 16-column tiles
int8_linear         k-blocks of 256 k (VNNI) / 128 k (int16 pairs)      32 x 32 x 32 (up to 128 x 256 x 128)
attention           32 query rows x 128 (real) keys                     32 x 32 (up to 128 x 128)
round_to            blocks of 256, thread chunks >= 4096                1024-element blocks
==================  ==================================================  ===================================

Rows of 3 * 4096 + 77 columns, K = 461 / 462 (3 bf16 k-blocks + a tail, odd and even), keys 77 / 300 and
packed sequences 77 / 0 / 300 / 200. The expected result is the reference's documented semantics: NaN,
+inf and -inf exactly where the float64 reference rounded to the output dtype has them, the finite
elements by the numerics rule (``numerics.assert_numerics``), quantize and round_to bit for bit.
Every C++ test runs on each instruction-set path this CPU has.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from bertsilicon import formats, ops
from bertsilicon import reference as R
from bertsilicon.backends import registry
from cpu_isa import cpu_isas
from numerics import assert_numerics, poison_allocator
from test_triton_attention import torch_attention
from test_triton_gemm import _torch_int8_linear

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the interpreter) warns on inf arithmetic

NAN, INF = float("nan"), float("inf")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = [None, "gelu", "gelu_tanh", "relu"]
N_ROW = 3 * 4096 + 77  # past every row block: three 4096-blocks (Triton quantize) and a 77-element tail
# the cpu backend has no fp16 kernel for these (backend="cpu" refuses fp16 with a ValueError)
CPU_NO_FP16 = {"bias_gelu", "add_layernorm", "quantize", "linear", "attention"}
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------- #
# backends                                                                                        #
# ---------------------------------------------------------------------------------------------- #
class Backend:
    def __init__(self, name: str, isa=None):
        self.name, self.isa = name, isa
        self.device = "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"

    def __repr__(self):
        return self.name + (f"-{self.isa}" if self.isa else "")


def _backend_params():
    params = [pytest.param(Backend("reference"), id="reference")]
    params += [pytest.param(Backend("cpu", isa), id=f"cpu-{isa}") for isa in cpu_isas()]
    return params + [pytest.param(Backend("triton"), id="triton")]


@pytest.fixture(params=_backend_params())
def backend(request):
    be = request.param
    reason = registry.load(be.name)
    if reason is not None:
        pytest.skip(f"the {be.name} backend is not available: {reason}")
    if be.name != "cpu":
        yield be
        return
    from bertsilicon.backends import cpu as _cpu

    before = _cpu.runtime._C.active_isa()
    _cpu.set_isa(be.isa)
    yield be
    _cpu.set_isa(before)


def _skip_unserved(be: Backend, op: str, dtype: torch.dtype) -> None:
    if be.name == "cpu" and dtype == torch.float16 and op in CPU_NO_FP16:
        pytest.skip(f"the cpu backend has no fp16 {op} kernel (backend='cpu' refuses it)")


# ---------------------------------------------------------------------------------------------- #
# special values and where they go                                                                #
# ---------------------------------------------------------------------------------------------- #
def special_value(kind: str, dtype: torch.dtype, g: torch.Generator, huge=None) -> float:
    """One value of ``kind``, exactly representable in ``dtype``: ``huge`` = a magnitude in
    [0.5, 0.9] x the dtype's largest (or ``huge``), ``subnormal`` = a subnormal of the dtype."""
    fi = torch.finfo(dtype)
    u = float(torch.rand((), generator=g))
    if kind == "nan":
        return NAN
    if kind in ("+inf", "-inf"):
        return INF if kind == "+inf" else -INF
    if kind == "-0":
        return -0.0
    if kind in ("+huge", "-huge"):
        v = (huge or fi.max) * (0.5 + 0.4 * u)
        return float(torch.tensor(v if kind == "+huge" else -v).to(dtype))
    if kind == "subnormal":
        v = float(torch.tensor(fi.smallest_normal * (0.05 + 0.9 * u) * (1 if u < 0.5 else -1)).to(dtype))
        assert 0 < abs(v) < fi.smallest_normal
        return v
    raise ValueError(kind)


def row_regions(n: int) -> dict[str, tuple[int, int]]:
    """Column ranges of a row of ``n`` > 12296 values: the first, a middle and the last full 4096-block,
    the tail block, the tail after the last whole 8- and 16-lane vector, and the last element."""
    vec_tail = n - n % 8 if n % 8 else n - 8
    return {"first block": (0, 4096), "middle block": (4096, 8192), "last full block": (8192, 12288),
            "tail block": (12288, vec_tail), "vector tail": (vec_tail, n), "last element": (n - 1, n)}


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def rows_with_specials(kinds, n, dtype, g, scale=2.0, huge=None):
    """x ``[1 + len(kinds) * 6, n]`` of ``randn * scale`` in ``dtype``: row 0 clean, every other row one
    special value of one kind at a random column of one region (:func:`row_regions`).
    Returns ``(x, [(row, kind, region, column)])``."""
    regions = row_regions(n)
    x = (torch.randn(1 + len(kinds) * len(regions), n, generator=g) * scale).to(dtype)
    placed = []
    for i, (kind, region) in enumerate((k, r) for k in kinds for r in regions):
        col = _randint(*regions[region], g)
        x[1 + i, col] = special_value(kind, dtype, g, huge)
        placed.append((1 + i, kind, region, col))
    return x, placed


# ---------------------------------------------------------------------------------------------- #
# checks                                                                                          #
# ---------------------------------------------------------------------------------------------- #
def assert_specials(out, ref64, peer, what="", huge=None):
    """NaN, +inf and -inf exactly where the float64 reference rounded to out's dtype has them; the finite
    elements by the numerics rule, the peer (plain torch at out's dtype) measured where it is finite.
    ``huge`` (a bool mask broadcastable to out): those elements are judged apart from the others, so the
    error allowed at 1e37 does not excuse the rest."""
    out, ref64, peer = out.cpu(), ref64.cpu(), peer.cpu()
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    want = ref64.to(out.dtype)
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = test(out) != test(want)
        if bool(differ.any()):
            at = differ.nonzero()[:4].tolist()
            got, ref = [float(out[tuple(i)]) for i in at], [float(ref64[tuple(i)]) for i in at]
            raise AssertionError(f"{what}: {name} pattern differs in {int(differ.sum())} elements, first at {at}: "
                                 f"out {got} vs reference {ref}")
    finite = torch.isfinite(want)
    peer = torch.where(torch.isfinite(peer), peer, want.to(peer.dtype))  # torch's own overflow is no licence
    parts = [finite] if huge is None else [finite & huge.cpu(), finite & ~huge.cpu()]
    for part in parts:
        assert_numerics(out[part], ref64[part], peer[part], what)


def assert_bits_equal(out, want, what=""):
    """Bit for bit (so -0.0 and +0.0 differ), NaN where ``want`` has NaN (any payload)."""
    out, want = out.cpu(), want.cpu()
    assert out.dtype == want.dtype and out.shape == want.shape, f"{what}: {out.dtype} {tuple(out.shape)}"
    nan = torch.isnan(want) if want.is_floating_point() else torch.zeros_like(want, dtype=torch.bool)
    assert torch.equal(torch.isnan(out) if out.is_floating_point() else nan, nan), f"{what}: NaN pattern differs"
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32}[out.element_size()]
    differ = (out.view(ints) != want.view(ints)) & ~nan
    if bool(differ.any()):
        at = differ.nonzero()[:4].tolist()
        raise AssertionError(f"{what}: {int(differ.sum())} elements differ, first at {at}: "
                             f"{[float(out[tuple(i)]) for i in at]} vs {[float(want[tuple(i)]) for i in at]}")


def _run(op: str, be: Backend, *args):
    poison_allocator(args[0] if args[0].is_floating_point() else torch.empty(args[0].shape))
    return getattr(ops, op)(*args, backend=be.name)


# ---------------------------------------------------------------------------------------------- #
# bias_gelu                                                                                       #
# ---------------------------------------------------------------------------------------------- #
GELU_KINDS = ("nan", "+inf", "-inf", "-0", "+huge", "-huge", "subnormal")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu(backend, dtype, approximate):
    """gelu(+inf) = +inf, gelu(-inf) = 0, NaN propagates, gelu(+-huge) = huge / 0, in every block."""
    _skip_unserved(backend, "bias_gelu", dtype)
    g = torch.Generator().manual_seed(11)
    x, placed = rows_with_specials(GELU_KINDS, N_ROW, dtype, g)
    bias = (torch.randn(N_ROW, generator=g) * 0.5).to(dtype)
    bias[[col for *_, col in placed]] = 0.0  # the special value itself reaches gelu
    x, bias = x.to(backend.device), bias.to(backend.device)
    out = _run("bias_gelu", backend, x, bias, approximate)
    ref64 = R.bias_gelu(x.double(), bias.double(), approximate)
    for row, kind, region, col in placed:  # the stated limits, and the test's own premise
        want = {"nan": NAN, "+inf": INF, "-inf": 0.0}.get(kind)
        if want is not None:
            got = float(out[row, col])
            assert got == want or (want != want and got != got), f"gelu({kind}) in the {region} gave {got}"
    assert_specials(out, ref64, R.gelu(x + bias, approximate), f"bias_gelu[{backend}] {dtype} {approximate}",
                    huge=ref64.abs() > 1e4)


# ---------------------------------------------------------------------------------------------- #
# add_layernorm                                                                                   #
# ---------------------------------------------------------------------------------------------- #
LN_KINDS = ("nan", "+inf", "-inf", "-0", "+huge", "-huge", "subnormal")
LN_HUGE = 1e18  # |x| >~ 1.8e19 squares past fp32's range: fp32 statistics (torch's too) overflow there


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layernorm(backend, dtype):
    """NaN or inf anywhere in a row (in x or in the residual) makes that whole output row NaN; -0.0, huge
    and subnormal values leave it finite."""
    _skip_unserved(backend, "add_layernorm", dtype)
    g = torch.Generator().manual_seed(12)
    h, placed = rows_with_specials(LN_KINDS, N_ROW, dtype, g, huge=min(LN_HUGE, torch.finfo(dtype).max))
    r = (torch.randn(h.shape, generator=g)).to(dtype)
    x = h.clone()
    for row, kind, region, col in placed:  # the special value in x on even rows, in the residual on odd
        r[row, col] = 0.0
        if row % 2:
            x[row, col], r[row, col] = r[row, col], h[row, col]
    w = torch.randn(N_ROW, generator=g) * 0.5 + 1.0
    b = torch.randn(N_ROW, generator=g) * 0.5
    x, r, w, b = (t.to(backend.device) for t in (x, r, w, b))
    out = _run("add_layernorm", backend, x, r, w, b, 1e-12)
    ref64 = R.add_layernorm(x.double(), r.double(), w.double(), b.double(), 1e-12)
    nan_rows = {row for row, kind, _, _ in placed if kind in ("nan", "+inf", "-inf")}
    assert {int(i) for i in torch.isnan(ref64).all(-1).nonzero()} == nan_rows  # the documented semantics
    assert_specials(out, ref64, torch.nn.functional.layer_norm(x + r, (N_ROW,), w.to(dtype), b.to(dtype), 1e-12),
                    f"add_layernorm[{backend}] {dtype}")


# ---------------------------------------------------------------------------------------------- #
# quantize                                                                                        #
# ---------------------------------------------------------------------------------------------- #
Q_KINDS = ("nan", "+inf", "-inf", "-0", "+huge", "-huge")


def _whole_rows(x, g, dtype):
    """Extra rows of x (in place, the last five): zeros, -0.0, NaN then +inf later, +inf then NaN later,
    every value near overflow."""
    n, fi = x.shape[-1], torch.finfo(dtype)
    x[-5] = 0.0
    x[-4] = -0.0
    x[-3, _randint(0, 4096, g)], x[-3, _randint(8192, n, g)] = NAN, INF
    x[-2, _randint(0, 4096, g)], x[-2, _randint(8192, n, g)] = INF, NAN
    x[-1] = (torch.rand(n, generator=g) * 0.4 + 0.5) * fi.max * torch.sign(torch.randn(n, generator=g))


def _check_quantize(be, x, granularity, what):
    q, s = _run("quantize", be, x, "int8", granularity)
    q_ref, s_ref = R.quantize(x.cpu(), "int8", granularity)  # its own definition: fp32 division, bit exact
    assert_bits_equal(s, s_ref, f"{what}: scales")
    assert_bits_equal(q, q_ref, f"{what}: q")
    return q_ref, s_ref


@pytest.mark.parametrize("granularity", ["per_token", "per_channel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_rows(backend, dtype, granularity):
    """Bit for bit the reference: a NaN group has scale NaN and q 0, an inf group scale inf and q 0,
    wherever in the group the value sits; per_channel groups are the flattened dims after the first."""
    _skip_unserved(backend, "quantize", dtype)
    g = torch.Generator().manual_seed(13)
    n = N_ROW + 1 if granularity == "per_channel" else N_ROW  # 12366 = 3 x 4122: x [rows, 3, 4122]
    x, placed = rows_with_specials(Q_KINDS, n, dtype, g)
    x = torch.cat([x, torch.zeros(5, n, dtype=dtype)])
    _whole_rows(x, g, dtype)
    if granularity == "per_channel":
        x = x.view(x.shape[0], 3, n // 3)
    q_ref, s_ref = _check_quantize(backend, x.to(backend.device), granularity,
                                   f"quantize[{backend}] {dtype} {granularity}")
    s_ref = s_ref.flatten()
    for row, kind, region, col in placed:  # the premise: the special value decides the group's scale
        if kind == "nan":
            assert s_ref[row].isnan() and not q_ref[row].any(), region
        elif kind in ("+inf", "-inf"):
            assert s_ref[row] == INF and not q_ref[row].any(), region
    assert s_ref[-5] == 1 and s_ref[-4] == 1 and s_ref[-3].isnan() and s_ref[-2].isnan()


PER_TENSOR_N = 2 * 65536 + 85  # two whole C++ chunks and a tail (whose last 5 values are a vector tail)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_per_tensor(backend, dtype):
    """One group of 131157 values: NaN, +-inf or a huge value in the first chunk, the last whole chunk,
    the tail chunk or the vector tail decides the one scale."""
    _skip_unserved(backend, "quantize", dtype)
    g = torch.Generator().manual_seed(14)
    n = PER_TENSOR_N
    base = (torch.randn(n, generator=g) * 2).to(dtype)
    regions = {"first chunk": (0, 65536), "last whole chunk": (65536, 131072), "tail chunk": (131072, n - 5),
               "vector tail": (n - 5, n)}
    cases = [("clean", None)] + [(k, r) for k in ("nan", "+inf", "-inf", "+huge") for r in regions]
    for kind, region in cases:
        x = base.clone()
        if region is not None:
            x[_randint(*regions[region], g)] = special_value(kind, dtype, g)
        _, s_ref = _check_quantize(backend, x.view(19, n // 19).to(backend.device), "per_tensor",
                                   f"quantize[{backend}] {dtype} per_tensor {kind} in the {region}")
        assert s_ref.isnan() if kind == "nan" else (s_ref == INF if "inf" in kind else s_ref.isfinite()).all()


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_subnormals(backend, dtype, granularity):
    """Groups of subnormals of the dtype (scales of 0 and of fp32 subnormals: the C++ divide path below
    2^-125; fp16 subnormals are normal in fp32), and single subnormals in ordinary rows."""
    _skip_unserved(backend, "quantize", dtype)
    if backend.name == "triton" and INTERPRETER and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter's bf16 -> fp32 cast mangles subnormals (triton's "
                    "interpreter._convert_float); a GPU widens bf16 exactly: runs there")
    g = torch.Generator().manual_seed(15)
    fi = torch.finfo(dtype)
    tiny = [fi.smallest_normal * fi.eps * k for k in (1, 7, 63, 64, 300, 2 ** 10)]  # 63 x 2^-149 / 127 rounds to 0
    x = torch.stack([(torch.randn(N_ROW, generator=g) * t).to(dtype) for t in tiny])  # subnormals and zeros
    if granularity == "per_token":
        x = torch.cat([x, rows_with_specials(("subnormal",), N_ROW, dtype, g)[0]])
    x = x.to(backend.device)
    _check_quantize(backend, x, granularity, f"quantize[{backend}] {dtype} {granularity} subnormals")


# ---------------------------------------------------------------------------------------------- #
# linear                                                                                          #
# ---------------------------------------------------------------------------------------------- #
X_KINDS = ("nan", "+inf", "-inf", "+huge", "-0", "subnormal")


def k_regions(K: int) -> dict[str, tuple[int, int]]:
    """Positions along K: the first block of every kernel, a middle one, the last whole bf16 k-block of the
    C++ kernel (128 k), and the tail of every K loop (C++ fp32 blocks of 64, bf16 of 128, Triton of 32)."""
    return {"first k-block": (0, 32), "middle k-block": (128, 256), "last full k-block": (256, 384),
            "k tail": (448, K)}


@pytest.mark.parametrize("K", [461, 462])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(backend, dtype, activation, K):
    """Across the K loop: a NaN in x[m, k] makes row m NaN, +-inf makes it +-inf (sign of w[n, k]) before
    the activation; NaN / inf in w[n, k] do the same to column n; NaN / +-inf in the bias to column n.
    gelu(-inf) = relu(-inf) = 0. Rows and columns in every tile and the tails (M 31, N 141)."""
    _skip_unserved(backend, "linear", dtype)
    g = torch.Generator().manual_seed(16 + K)
    M, N = 31, 141  # 5 whole 6-row tiles + 1; 2 whole 64-column panels + 13
    kreg = k_regions(K)
    x = torch.randn(M, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) * 0.05).to(dtype)  # |x w| stays finite at x = 0.9 x max
    rows, huge = torch.randperm(M, generator=g).tolist(), torch.zeros(M, 1, dtype=torch.bool)
    for (kind, region), m in zip(((k, r) for k in X_KINDS for r in kreg), rows):
        x[m, _randint(*kreg[region], g)] = special_value(kind, dtype, g)
        huge[m] = kind == "+huge"
    for n, kind, region in ((3, "nan", "k tail"), (70, "+inf", "first k-block"), (140, "-inf", "last full k-block"),
                            (100, "nan", "middle k-block"), (63, "subnormal", "k tail")):
        w[n, _randint(*kreg[region], g)] = special_value(kind, dtype, g)
    bias = torch.randn(N, generator=g).to(dtype)
    bias[[5, 64, 127]] = torch.tensor([NAN, INF, -INF]).to(dtype)
    x, w, bias = x.to(backend.device), w.to(backend.device), bias.to(backend.device)
    out = _run("linear", backend, x, w, bias, activation)
    ref64 = R.linear(x.double(), w.double(), bias.double(), activation)
    peer = R.activate(torch.nn.functional.linear(x, w, bias), activation)
    assert_specials(out, ref64, peer, f"linear[{backend}] {dtype} {activation} K={K}", huge=huge)


# ---------------------------------------------------------------------------------------------- #
# int8_linear                                                                                     #
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_int8_linear(backend, out_dtype, activation):
    """The dequant epilogue at special scales, as quantize makes them: a NaN row (scale NaN, q 0) and an
    inf row (scale inf, q 0) give NaN rows; NaN / inf weight channels NaN / +-inf columns; activations
    near fp32's largest value (x_scale ~ 1e35 with ordinary weights: acc * x_scale alone overflows, the
    result does not); NaN / +-inf bias. M 40 (6-row tiles + 4), K 845 (3 VNNI k-blocks + 77), N 141."""
    g = torch.Generator().manual_seed(17)
    M, K, N = 40, 845, 141
    x = torch.randn(M, K, generator=g)
    x[[3, 17]] *= 3e36  # amax ~ 1e37 (fp32 range 3.4e38)
    x[7, _randint(0, K, g)], x[20, _randint(0, K, g)], x[39, _randint(0, K, g)] = NAN, INF, -INF
    x[33] = 0.0
    w = torch.randn(N, K, generator=g) * 0.05
    w[2, _randint(0, K, g)], w[66, _randint(0, K, g)], w[140, _randint(0, K, g)] = NAN, INF, -INF
    x_q, x_s = R.quantize(x, "int8", "per_token")
    w_q, w_s = R.quantize(w, "int8", "per_channel")
    bias = torch.randn(N, generator=g)
    bias[[5, 64, 130]] = torch.tensor([NAN, INF, -INF])
    args = [t.to(backend.device) for t in (x_q, x_s, w_q, w_s.flatten(), bias)]
    out = _run("int8_linear", backend, *args, activation, out_dtype)
    ref64 = R.int8_linear(*args, activation, torch.float64)
    assert bool(torch.isfinite(ref64[[3, 17]][:, [0, 70, 139]]).all())  # the premise: huge rows stay finite
    huge = torch.zeros(M, 1, dtype=torch.bool)
    huge[[3, 17]] = True
    assert_specials(out, ref64, _torch_int8_linear(*args, activation, out_dtype),
                    f"int8_linear[{backend}] -> {out_dtype} {activation}", huge=huge)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_scale_product_overflow(backend, out_dtype):
    """x_scale * w_scale past fp32's range (one huge per-tensor activation scale, large weight scales): an
    all-zero row of q is 0 * x_scale * w_scale = 0 (+ bias), as the float64 reference; other rows +-inf."""
    g = torch.Generator().manual_seed(18)
    M, K, N = 13, 300, 70
    x_q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    x_q[[0, 6, 12]] = 0
    w_q = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    x_s = torch.tensor([2.5e36])
    w_s = torch.rand(N, generator=g) + 0.5
    w_s[[1, 40, 69]] = 1e3  # 2.5e39 > 3.4e38
    bias = torch.randn(N, generator=g)
    args = [t.to(backend.device) for t in (x_q, x_s, w_q, w_s, bias)]
    out = _run("int8_linear", backend, *args, None, out_dtype)
    ref64 = R.int8_linear(*args, None, torch.float64)
    assert_specials(out, ref64, _torch_int8_linear(*args, None, out_dtype), f"int8_linear[{backend}] scale overflow")
    if out_dtype == torch.float32:  # (the interpreter's bf16 cast truncates: exact only in fp32)
        assert torch.equal(out[0].cpu(), bias.cpu()), "an all-zero row must give the bias exactly"


# ---------------------------------------------------------------------------------------------- #
# attention                                                                                       #
# ---------------------------------------------------------------------------------------------- #
D_HEAD = 26  # not a multiple of any vector width; Triton pads it to 32


def _attention_inputs(L, dtype, g):
    """q, k, v ``[5, 1, L, 26]`` and a mask ``[5, L]``, one sequence per case:

    0  full length; NaN in q at a row of the last query tile; v NaN at a key of the first key block
       (column 3), +inf at a key of the last key block (column 7), -inf at a middle key (column 11)
    1  ragged with holes: NaN / inf in k and v at a hole in the first key block, a hole in the middle,
       the first padded key after the last real one (same Triton key block) and the last position
    2  full length; NaN in k at the last key (the tail of the last key block): every row NaN
    3  full length; NaN in k at a key of the first key block: every row NaN
    4  fully padded, NaN in its q, k and v: zeros
    5  ragged; -inf in a real row of q and every real key's k > 0 there: that row's scores are all -inf,
       so its softmax is NaN (not the zeros of a row without keys); the other rows finite
    """
    B, H = 6, 1
    q, k, v = (torch.randn(B, H, L, D_HEAD, generator=g) * s for s in (1.5, 1.5, 1.0))
    mask = torch.ones(B, L, dtype=torch.int64)
    first, last = _randint(0, min(32, L), g), _randint(L - L % 32 if L % 32 else L - 32, L, g)
    q[0, 0, _randint(L - L % 32 if L % 32 else L - 32, L, g)] = NAN
    v[0, 0, first, 3], v[0, 0, last, 7], v[0, 0, _randint(L // 3, 2 * L // 3, g), 11] = NAN, INF, -INF
    length = L - 13 - _randint(0, L // 3, g)
    length += 1 if length % 32 == 0 else 0  # the last real key and the first padded one share a key block
    holes = [_randint(1, min(31, length - 2), g), _randint(length // 2, length - 1, g)]
    mask[1, length:] = 0
    mask[1, holes] = 0
    for j, d in zip(holes + [length, L - 1], (0, 5, 9, 25)):
        k[1, 0, j, d], v[1, 0, j, d], v[1, 0, j, (d + 1) % D_HEAD] = NAN, NAN, INF
    k[2, 0, L - 1, 4] = NAN
    k[3, 0, first, 4] = NAN
    mask[4] = 0
    q[4, 0, 0, 0], k[4, 0, 0, 1], v[4, 0, L - 1, 2] = NAN, NAN, NAN
    mask[5, L // 2:] = 0
    k[5, 0, :, 0] = k[5, 0, :, 0].abs() + 0.25
    q[5, 0, _randint(0, L // 2, g), 0] = -INF
    return [t.to(dtype) for t in (q, k, v)] + [mask]


@pytest.mark.parametrize("L", [77, 300])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention(backend, dtype, L):
    """NaN in a real position of q / k / v propagates (a row of q: that row; a real key: every row; v:
    that column), +-inf in a real v gives +-inf columns, padded keys never contribute (not even NaN or
    inf in their k or v, wherever the padding sits), a fully padded row gives zeros, a row whose real
    scores are all -inf gives NaN."""
    _skip_unserved(backend, "attention", dtype)
    g = torch.Generator().manual_seed(19 + L)
    q, k, v, mask = (t.to(backend.device) for t in _attention_inputs(L, dtype, g))
    out = _run("attention", backend, q, k, v, mask)
    ref64 = R.attention(q.double(), k.double(), v.double(), mask)
    all_inf_rows = ref64[5].isnan().all(dim=-1)  # the premise: one row of case 5 NaN, the others finite
    assert not ref64[1].isnan().any() and ref64[2:4].isnan().all() and bool((ref64[4] == 0).all())
    assert int(all_inf_rows.sum()) == 1 and not ref64[5][~all_inf_rows].isnan().any()
    assert_specials(out, ref64, torch_attention(q, k, v, mask), f"attention[{backend}] {dtype} L={L}")
    assert bool((out[4] == 0).all()), "the fully padded row must give zeros"


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_varlen(backend, dtype):
    """Packed sequences of 77, 0, 300 and 200 tokens: a NaN key of one sequence makes that sequence NaN and
    no other; NaN / +inf in v give NaN / +inf columns of their own sequence only; a NaN row of q stays
    in its row; specials at each sequence's first and last tokens (the neighbours' boundaries)."""
    _skip_unserved(backend, "attention", dtype)
    g = torch.Generator().manual_seed(20)
    lengths = [77, 0, 300, 200]
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    T = int(cu[-1])
    q, k, v = (torch.randn(T, 1, D_HEAD, generator=g) * s for s in (1.5, 1.5, 1.0))
    k[76, 0, 3] = NAN                                # seq 0's last token: seq 0 all NaN
    v[77, 0, 3], v[376, 0, 7] = NAN, INF             # seq 2's first / last token: its columns 3 / 7
    v[377, 0, 11] = -INF                             # seq 3's first token: its column 11
    q[377 + 199 - _randint(0, 8, g), 0, 0] = NAN     # a row of seq 3's last query tile
    q, k, v = (t.to(dtype).to(backend.device) for t in (q, k, v))
    cu = cu.to(backend.device)
    out = _run("attention_varlen", backend, q, k, v, cu, max(lengths))
    ref64 = R.attention_varlen(q.double(), k.double(), v.double(), cu, max(lengths))
    assert ref64[:77].isnan().all() and ref64[77:377, 0, 3].isnan().all() and not ref64[77:377, 0, :3].isnan().any()
    peer = torch.cat([torch_attention(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)), None)[0].transpose(0, 1)
                      for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert_specials(out, ref64, peer, f"attention_varlen[{backend}] {dtype}")


# ---------------------------------------------------------------------------------------------- #
# round_to                                                                                        #
# ---------------------------------------------------------------------------------------------- #
ROUND_N = 8 * 1024 + 77  # 9 Triton blocks, 33 C++ blocks of 256, split at 4135 over 2 threads
EDGES = [0, 1, 15, 16, 255, 256, 1023, 1024, 4095, 4096, 4134, 4135, 8191, 8192, ROUND_N - 2, ROUND_N - 1]


def _round_inputs(dtype, fmt, g):
    """Values over the whole range of fmt and of dtype, with NaN, +-inf, +-0, values past fmt's largest,
    fmt's and dtype's subnormals and exact ties, at every block edge (EDGES) and at random positions."""
    f = formats.get_format(fmt)
    fi = torch.finfo(dtype)
    top = min(f.max_finite * 4, fi.max) if isinstance(f, formats.FloatFormat) else f.max_finite * 4
    small = f.smallest_subnormal if isinstance(f, formats.FloatFormat) else f.quantum
    logs = torch.rand(ROUND_N, generator=g, dtype=torch.float64) * (math.log2(top / small) + 4) + math.log2(small) - 4
    x = (torch.exp2(logs) * torch.sign(torch.randn(ROUND_N, generator=g))).float()
    specials = torch.tensor([NAN, INF, -INF, 0.0, -0.0, fi.max, -fi.max, fi.smallest_normal * fi.eps,
                             -fi.smallest_normal * 0.5, small * 0.5, small * 1.5, -small * 2.5,
                             f.max_finite * 1.0001, -f.max_finite * 2])
    where = torch.cat([torch.tensor(EDGES), torch.randint(0, ROUND_N, (600,), generator=g)])
    x[where] = specials[torch.randint(0, len(specials), (len(where),), generator=g)]
    return x.to(dtype)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2", "e3m4", "e8m0", "q3.4", "e4m3-nosub"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_to(backend, dtype, fmt, rounding):
    """Bit for bit :func:`bertsilicon.formats.round_to` (NaN stays NaN, -0 stays -0, overflow by the
    format's default policy, subnormals of the format and of the input dtype), in every block and tail."""
    f = formats.get_format(fmt)
    if backend.name == "cpu" and not (isinstance(f, formats.FloatFormat) and f.subnormals):
        pytest.skip(f"the cpu round_to serves float formats with subnormals, not {fmt} (backend='cpu' refuses it)")
    g = torch.Generator().manual_seed(21 + len(fmt))
    x = _round_inputs(dtype, fmt, g).to(backend.device)
    seed = 0xC0FFEE1234 if rounding == "stochastic" else None
    out = _run("round_to", backend, x, fmt, rounding, seed)
    assert_bits_equal(out, formats.round_to(x.cpu(), fmt, rounding, seed),
                      f"round_to[{backend}] {dtype} {fmt} {rounding}")
