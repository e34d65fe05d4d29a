"""Triton linear (fp32/bf16/fp16 GEMM with bias + activation epilogue) and int8_linear (int8 x int8 ->
int32 GEMM with dequant + bias + activation epilogue) against the float64 reference."""
import pytest
import torch

from bertsilicon import ops
from bertsilicon import reference as R
from numerics import assert_numerics, poison_allocator

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = [None, "gelu", "gelu_tanh", "relu"]


def _linear_inputs(M, K, N, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    return [t.to(device) for t in (x, w, b)]


def _check_linear(x, w, b, activation, what):
    ref64 = R.linear(x.double(), w.double(), None if b is None else b.double(), activation)
    peer = R.activate(torch.nn.functional.linear(x, w, b), activation)  # torch at x's dtype
    poison_allocator(peer)
    out = ops.linear(x, w, b, activation, backend="triton")
    assert out.dtype == x.dtype and out.shape == peer.shape
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_epilogues(triton_device, dtype, activation):
    x, w, b = _linear_inputs(77, 72, 50, dtype, seed=len(str(activation)), device=triton_device)
    _check_linear(x.view(7, 11, 72), w, b, activation, f"linear {dtype} {activation}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_no_bias_strided_operands(triton_device, dtype):
    x, w, _ = _linear_inputs(40, 48, 33, dtype, seed=2, device=triton_device)
    xt = x.t().contiguous().t()          # column-major x
    wt = w.t().contiguous().t()          # column-major weight
    _check_linear(xt, wt, None, None, f"linear strided {dtype}")


def test_linear_nan_and_empty(triton_device):
    x, w, b = _linear_inputs(9, 32, 16, torch.float32, seed=4, device=triton_device)
    x[3, 5] = float("nan")
    out = ops.linear(x, w, b, "gelu", backend="triton")
    assert bool(torch.isnan(out[3]).all()) and not bool(torch.isnan(out[[0, 1, 2, 4]]).any())
    assert ops.linear(x[:0], w, b, backend="triton").shape == (0, 16)


@pytest.fixture
def turing_linear(monkeypatch):
    """The GEMM launcher as on a Turing GPU (bertsilicon/kernels/_common.matrix_unit_dots False): the product on cuBLAS
    (torch.mm), bias + activation in the element-wise kernel; the Triton GEMM kernel must not launch."""
    from bertsilicon.kernels import gemm

    def no_gemm_kernel(*args, **kwargs):
        raise AssertionError("the triton GEMM kernel launched on a GPU class without matrix-unit dots")

    monkeypatch.setattr(gemm, "matrix_unit_dots", lambda kind=None: False)
    monkeypatch.setattr(gemm, "_launch", no_gemm_kernel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_on_turing_multiplies_on_cublas(triton_device, turing_linear, dtype, activation):
    x, w, b = _linear_inputs(77, 72, 50, dtype, seed=3 + len(str(activation)), device=triton_device)
    _check_linear(x.view(7, 11, 72), w, b, activation, f"turing linear {dtype} {activation}")
    xt, wt = x.t().contiguous().t(), w.t().contiguous().t()   # column-major operands, no bias
    _check_linear(xt, wt, None, activation, f"turing linear strided {dtype} {activation}")


def test_linear_on_turing_nan_and_empty(triton_device, turing_linear):
    x, w, b = _linear_inputs(9, 32, 16, torch.float16, seed=4, device=triton_device)
    x[3, 5] = float("nan")
    out = ops.linear(x, w, b, "gelu", backend="triton")
    assert bool(torch.isnan(out[3]).all()) and not bool(torch.isnan(out[[0, 1, 2, 4]]).any())
    assert ops.linear(x[:0], w, b, backend="triton").shape == (0, 16)


def _int8_inputs(M, K, N, seed, device, per_token=True, per_channel=True):
    g = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    w_q = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    xs = (torch.rand(M, 1, generator=g) + 0.5) / 127 if per_token else torch.tensor(0.013)
    ws = (torch.rand(N, generator=g) + 0.5) / 127 if per_channel else torch.tensor([0.021])
    b = torch.randn(N, generator=g)
    return [t.to(device) for t in (x_q, xs, w_q, ws, b)]


def _torch_int8_linear(x_q, xs, w_q, ws, b, activation, out_dtype):
    """The plain-torch peer: fp32 product of the integers (exact here), fp32 epilogue."""
    y = (x_q.float() @ w_q.float().t()) * xs.float().reshape(-1, 1) * ws.float().reshape(1, -1) + b.float()
    return R.activate(y, activation).to(out_dtype)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_int8_linear_epilogues(triton_device, out_dtype, activation):
    x_q, xs, w_q, ws, b = _int8_inputs(77, 100, 40, seed=7, device=triton_device)
    ref64 = R.int8_linear(x_q, xs, w_q, ws, b, activation, torch.float64)
    peer = _torch_int8_linear(x_q, xs, w_q, ws, b, activation, out_dtype)
    out = ops.int8_linear(x_q, xs, w_q, ws, b, activation, out_dtype, backend="triton")
    assert out.dtype == out_dtype
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), f"int8_linear {out_dtype} {activation}")


def test_int8_linear_scalar_scales_no_bias(triton_device):
    x_q, xs, w_q, ws, _ = _int8_inputs(33, 64, 20, seed=8, device=triton_device, per_token=False, per_channel=False)
    out = ops.int8_linear(x_q, xs, w_q, ws, None, None, torch.float32, backend="triton")
    ref64 = R.int8_linear(x_q, xs, w_q, ws, None, None, torch.float64)
    peer = (x_q.float() @ w_q.float().t()) * xs * ws
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), "int8_linear scalar scales")


def test_int8_accumulation_is_exact(triton_device):
    """int32 accumulation: |sum| reaches 127 * 127 * 1000 = 1.6e7 < 2^24, so with unit scales the fp32
    output must equal the exact integer product (an fp16 or bf16 accumulator could not)."""
    g = torch.Generator().manual_seed(9)
    K = 1000
    x_q = torch.randint(-127, 128, (5, K), generator=g, dtype=torch.int8)
    x_q[0] = 127
    w_q = torch.randint(-127, 128, (12, K), generator=g, dtype=torch.int8)
    w_q[0] = 127
    one = torch.ones(1)
    out = ops.int8_linear(x_q.to(triton_device), one.to(triton_device), w_q.to(triton_device), one.to(triton_device),
                          backend="triton")
    exact = (x_q.double() @ w_q.double().t()).float()
    assert float(exact[0, 0]) == 127 * 127 * K
    assert torch.equal(out.cpu(), exact)


def test_quantize_then_int8_linear_tracks_fp32_linear(triton_device):
    """End to end: per-token activations x per-channel weights through both Triton kernels."""
    x, w, b = _linear_inputs(64, 96, 48, torch.float32, seed=10, device=triton_device)
    x_q, xs = ops.quantize(x, backend="triton")
    w_q, ws = ops.quantize(w, granularity="per_channel", backend="triton")
    out = ops.int8_linear(x_q, xs, w_q, ws, b, "gelu", backend="triton")
    ref = R.linear(x.double(), w.double(), b.double(), "gelu")
    rel = float((out.double() - ref).norm() / ref.norm())
    assert rel < 2e-2, f"int8 path relative error {rel:.2e}"


# ---------------------------------------------------------------------------------------------- #
# full shapes on a GPU                                                                            #
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N,activation", [(4096, 768, 3072, "gelu"), (1000, 384, 1536, "gelu_tanh"),
                                              (4096, 3072, 768, None), (77, 312, 1200, "relu")])
def test_linear_full_shapes(dtype, M, K, N, activation):
    x, w, b = _linear_inputs(M, K, N, dtype, seed=M + N, device="cuda")
    _check_linear(x, w, b, activation, f"linear {M}x{K}x{N} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M,K,N,activation", [(4096, 768, 3072, "gelu"), (1000, 3072, 768, None)])
def test_int8_linear_full_shapes(out_dtype, M, K, N, activation):
    x_q, xs, w_q, ws, b = _int8_inputs(M, K, N, seed=M, device="cuda")
    ref64 = R.int8_linear(x_q, xs, w_q, ws, b, activation, torch.float64)
    peer = _torch_int8_linear(x_q, xs, w_q, ws, b, activation, out_dtype)
    out = ops.int8_linear(x_q, xs, w_q, ws, b, activation, out_dtype, backend="triton")
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), f"int8_linear {M}x{K}x{N}")


@pytest.mark.gpu
def test_new_token_count_in_the_same_bucket_does_not_recompile():
    from bertsilicon.kernels import gemm

    x, w, b = _linear_inputs(1000, 384, 1536, torch.float16, seed=1, device="cuda")
    ops.linear(x, w, b, "gelu", backend="triton")

    if not hasattr(gemm._gemm_kernel, "device_caches"):
        pytest.skip("this triton's JITFunction has no device_caches to count compiled kernels in")

    def compiled():  # JITFunction.device_caches[device][0] is the compiled-kernel dict (triton 3.x)
        return sum(len(c[0]) for c in gemm._gemm_kernel.device_caches.values())

    before = compiled()
    ops.linear(x[:913], w, b, "gelu", backend="triton")  # 913 tokens: same bucket (1024)
    after = compiled()
    assert after == before, "a new token count in the same bucket compiled a new kernel"


def test_autotune_settings(monkeypatch):
    """Token counts share a power-of-two bucket; every hardware class has configs; the fp32 dot
    precision is ieee under the interpreter and follows BERTSILICON_TF32 / torch's TF32 flag on a GPU."""
    from bertsilicon.kernels import _common, attention, gemm

    assert [_common.token_bucket(n) for n in (1, 16, 17, 77, 128, 129, 4096)] == [16, 16, 32, 128, 128, 256, 4096]
    for kind in ("interpreter", "hopper", "ampere", "turing"):
        assert gemm._configs(False, kind) and gemm._configs(True, kind) and attention._configs(kind)
        assert gemm._configs(False, kind, fma=True) and attention._configs(kind, fma=True)
    # fp32 with ieee dots runs on the FMA units: its own configs, BLOCK_K <= 32 (bigger slices spill on sm_90)
    assert _common.fma_dots(torch.float32, "ieee") and not _common.fma_dots(torch.float32, "tf32")
    assert not _common.fma_dots(torch.bfloat16, "ieee") and not _common.fma_dots(torch.float16, "tf32")
    assert all(c.kwargs["BLOCK_K"] <= 32 for c in gemm._configs(False, "hopper", fma=True))
    assert attention._autotuned(torch.float32, "ieee") is attention._attention_fma
    # Turing: no matrix-unit dots in triton (sm_75 SASS: FFMA for fp16 / bf16, int8 does not compile)
    assert not _common.matrix_unit_dots("turing") and all(map(_common.matrix_unit_dots, ("hopper", "ampere", "interpreter")))
    assert _common.fma_dots(torch.float16, "tf32", "turing") and _common.fma_dots(torch.bfloat16, "tf32", "turing")
    assert not _common.fma_dots(torch.float16, "tf32", "ampere")
    assert gemm._configs(False, "turing") == gemm._configs(False, "hopper", fma=True)
    assert all(c.num_stages <= 2 for c in attention._configs("turing"))
    assert attention._configs("turing") == attention._configs("turing", fma=True) != attention._configs("hopper", fma=True)
    assert attention._autotuned(torch.float32, "tf32") is attention._autotuned(torch.float16, "tf32") is attention._attention_mma
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _common.fp32_dot_precision() == "ieee"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("BERTSILICON_TF32", "1")
    assert _common.fp32_dot_precision() == "tf32"
    monkeypatch.setenv("BERTSILICON_TF32", "0")
    assert _common.fp32_dot_precision() == "ieee"
    monkeypatch.delenv("BERTSILICON_TF32")
    assert _common.fp32_dot_precision() == ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


def test_autotune_switch(monkeypatch):
    """BERTSILICON_AUTOTUNE=off hands the autotuner the first config only (no tuning); on/unset: all of them;
    anything else is an error naming the variable."""
    from bertsilicon.kernels import _common, gemm

    configs = gemm._configs(False, "hopper")
    monkeypatch.delenv("BERTSILICON_AUTOTUNE", raising=False)
    assert _common.autotune_configs(configs) == configs and len(configs) > 1
    monkeypatch.setenv("BERTSILICON_AUTOTUNE", "on")
    assert _common.autotune_configs(configs) == configs
    monkeypatch.setenv("BERTSILICON_AUTOTUNE", "OFF")
    assert _common.autotune_configs(configs) == configs[:1]
    monkeypatch.setenv("BERTSILICON_AUTOTUNE", "fast")
    with pytest.raises(ValueError, match="BERTSILICON_AUTOTUNE='fast'"):
        _common.autotune_configs(configs)


@pytest.mark.gpu
def test_fp32_with_tf32_allowed_matches_torch_tf32(monkeypatch):
    """With torch's TF32 switch on, the fp32 kernels use tf32 too (same precision class as the peer)."""
    from bertsilicon.kernels import _common

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert _common.fp32_dot_precision() == "tf32"
    x, w, b = _linear_inputs(4096, 768, 3072, torch.float32, seed=3, device="cuda")
    _check_linear(x, w, b, "gelu", "linear fp32 tf32")
    from test_triton_attention import _check_padded

    _check_padded(8, 12, 128, 64, torch.float32, "cuda", seed=4)
