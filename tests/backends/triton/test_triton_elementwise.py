"""Triton bias_gelu, quantize and round_to against the reference: bias_gelu by the float64 rule;
quantize and round_to bit for bit (they are exact integer / IEEE-division algorithms)."""
import pytest
import torch

from bertsilicon import formats, ops
from bertsilicon import reference as R
from numerics import assert_numerics, poison_allocator

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(3, 77, 96), (5, 1536), (1, 7)])
def test_bias_gelu(triton_device, dtype, approximate, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3).to(dtype).to(triton_device)
    b = torch.randn(shape[-1], generator=g).to(dtype).to(triton_device)
    ref64 = R.bias_gelu(x.double(), b.double(), approximate)
    peer = torch.nn.functional.gelu(x + b, approximate=approximate)  # torch at x's dtype
    poison_allocator(peer)
    out = ops.bias_gelu(x, b, approximate, backend="triton")
    assert out.dtype == dtype and out.shape == x.shape
    assert_numerics(out.cpu(), ref64.cpu(), peer.cpu(), f"bias_gelu {shape} {dtype} {approximate}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on inf arithmetic
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_specials(triton_device, approximate):
    x = torch.tensor([[float("inf"), float("-inf"), float("nan"), -30.0, 30.0, -1e30, 1e30, 0.5]]).to(triton_device)
    b = torch.zeros(8).to(triton_device)
    out = ops.bias_gelu(x, b, approximate, backend="triton").cpu()
    want = torch.nn.functional.gelu(x.cpu().double(), approximate=approximate).float()
    assert out[0, 0] == float("inf") and out[0, 1] == 0 and bool(torch.isnan(out[0, 2]))
    # the rest are the saturated tails (gelu = 0 or x, exact in fp32) and one ordinary value: 1e-6 is 8 fp32
    # ulp, while a wrong tail (x/2, NaN, a sign) is off by >= 50 %; atol only admits -0 against +0
    torch.testing.assert_close(out[0, 3:], want[0, 3:], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity,shape", [("per_token", (2, 33, 96)), ("per_channel", (40, 3, 26)),
                                               ("per_tensor", (33, 70)), ("per_token", (3, 5000))])
def test_quantize_bit_exact(triton_device, dtype, granularity, shape):
    g = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    x = (torch.randn(shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g) * 4)
    x = x.to(dtype).to(triton_device)
    q_ref, s_ref = R.quantize(x, "int8", granularity)
    q, s = ops.quantize(x, "int8", granularity, backend="triton")
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == s_ref.shape
    assert torch.equal(s.cpu(), s_ref.cpu()), "scales differ"
    assert torch.equal(q.cpu(), q_ref.cpu()), f"{int((q.cpu() != q_ref.cpu()).sum())} quantized values differ"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 33, 78), (3, 5000), (2, 7)])
def test_quantize_with_smoothing_equals_quantizing_the_smoothed_input(triton_device, dtype, shape):
    """The per-token launcher's fused SmoothQuant factors (what the fused layer's int8 GEMMs use): bit for bit
    the reference quantize of ``x * inv_smooth`` computed by torch (fp32), including a zero row and a NaN."""
    from bertsilicon.kernels import elementwise

    g = torch.Generator().manual_seed(shape[-1] + 7)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    x.view(-1, shape[-1])[0] = 0.0
    if x.numel() > 2 * shape[-1]:
        x.view(-1, shape[-1])[1, 3] = float("nan")
    inv_smooth = 1.0 / (torch.rand(shape[-1], generator=g) * 8 + 0.05)  # spread factors, as calibration gives
    x, inv_smooth = x.to(triton_device), inv_smooth.to(triton_device)
    q_ref, s_ref = R.quantize(x * inv_smooth, "int8", "per_token")
    q, s = elementwise.quantize(x, "per_token", inv_smooth)
    assert s.shape == s_ref.shape and torch.equal(torch.isnan(s.cpu()), torch.isnan(s_ref.cpu()))
    assert torch.equal(s.cpu().nan_to_num(), s_ref.cpu().nan_to_num()), "scales differ"
    assert torch.equal(q.cpu(), q_ref.cpu()), f"{int((q.cpu() != q_ref.cpu()).sum())} quantized values differ"
    q_plain, _ = elementwise.quantize(x, "per_token")  # the factors do change the result (the test can fail)
    assert not torch.equal(q_plain.cpu(), q.cpu())
    with pytest.raises(ValueError, match="per_token"):
        elementwise.quantize(x.reshape(shape[0], -1), "per_channel", inv_smooth)


def test_quantize_ties_zero_row_nan_row(triton_device):
    x = torch.randn(4, 64)
    x[0, :3] = torch.tensor([127.0, 0.5, -2.5])   # scale 1: 0.5 -> 0 and -2.5 -> -2 (ties to even)
    x[0, 3:] = 0.25
    x[1] = 0.0                                    # all-zero row: scale 1, q 0
    x[2, 9] = float("nan")                        # NaN row: scale NaN, q 0 everywhere
    x = x.to(triton_device)
    q, s = ops.quantize(x, backend="triton")
    q_ref, s_ref = R.quantize(x)
    assert q[0, :3].tolist() == [127, 0, -2]
    assert torch.equal(q.cpu(), q_ref.cpu()) and float(s[1]) == 1.0 and bool(torch.isnan(s[2]))
    assert torch.equal(torch.isnan(s.cpu()), torch.isnan(s_ref.cpu()))
    # rows longer than one block (4096): a NaN in the first block stays NaN through the later blocks
    # (tl.maximum may drop a NaN; the kernel keeps it per lane), and one in the last block too
    long = torch.randn(3, 5000)
    long[0, 3], long[2, 4999] = float("nan"), float("nan")
    q, s = ops.quantize(long.to(triton_device), backend="triton")
    assert torch.isnan(s.cpu()).flatten().tolist() == [True, False, True]
    assert torch.equal(q.cpu(), R.quantize(long)[0])


def _wide_values(n, seed):
    """fp32 values over the whole exponent range, both signs, subnormals, ties, exact values and specials."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g) + 1) * torch.exp2(torch.randint(-150, 128, (n,), generator=g).float())
    x = x * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    bits = torch.randint(0, 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32).view(torch.float32)
    specials = torch.tensor([0.0, -0.0, 1.0, 1.5, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 65504.0, 65520.0, 448.0, 464.0,
                             480.0, 1e-45, -1e-40, 2 ** -126, float("inf"), float("-inf"), float("nan")])
    return torch.cat([x, bits, specials])


def _same_bits(a, b):
    a, b = a.cpu(), b.cpu()
    return (a == b) & (torch.signbit(a) == torch.signbit(b)) | (torch.isnan(a) & torch.isnan(b))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on the inf inputs
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2", "e3m4", "e5m2-nosub", "e4m3fn-nosub", "q3.4", "q0.12"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_round_to_bit_identical_to_reference(triton_device, fmt, rounding):
    x = _wide_values(2000, seed=len(fmt) + len(rounding)).to(triton_device)
    seed = 2 ** 40 + 123 if rounding == "stochastic" else None
    out = ops.round_to(x, fmt, rounding, seed, backend="triton")
    ref = formats.round_to(x.cpu(), fmt, rounding, seed)
    same = _same_bits(out, ref)
    assert bool(same.all()), f"{int((~same).sum())} differ, e.g. x={x.cpu()[~same][:3].tolist()} " \
                             f"got={out.cpu()[~same][:3].tolist()} ref={ref[~same][:3].tolist()}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_round_to_16bit_inputs_and_seeds(triton_device, dtype):
    # normal values plus the whole exponent range (16-bit subnormals, overflow to inf in fp16)
    x = torch.cat([torch.randn(7 * 77) * 10, _wide_values(400, seed=4)]).to(dtype).to(triton_device)
    a = ops.round_to(x, "e4m3", "stochastic", seed=5, backend="triton")
    assert a.dtype == dtype and bool(_same_bits(a, formats.round_to(x.cpu(), "e4m3", "stochastic", 5)).all())
    assert bool(_same_bits(a, ops.round_to(x, "e4m3", "stochastic", seed=5, backend="triton")).all())
    assert not bool(_same_bits(a, ops.round_to(x, "e4m3", "stochastic", seed=6, backend="triton")).all())
    for fmt in ("bf16", "fp16", "e5m2", "q3.4"):
        for rounding, seed in (("nearest", None), ("stochastic", 11)):
            assert bool(_same_bits(ops.round_to(x, fmt, rounding, seed, backend="triton"),
                                   formats.round_to(x.cpu(), fmt, rounding, seed)).all()), (fmt, rounding)
    # a strided (non-contiguous) input is rounded as its contiguous copy, as the reference does
    xt = x[: 7 * 77].view(7, 77).t()
    assert bool(_same_bits(ops.round_to(xt, "fp16", "stochastic", seed=9, backend="triton"),
                           formats.round_to(xt.cpu(), "fp16", "stochastic", 9)).all())


def test_elementwise_empty_and_refusals(triton_device):
    e = torch.randn(0, 8, device=triton_device)
    assert ops.bias_gelu(e, torch.randn(8, device=triton_device), backend="triton").shape == (0, 8)
    assert ops.round_to(e, "bf16", backend="triton").shape == (0, 8)
    q, s = ops.quantize(e, backend="triton")
    assert q.shape == (0, 8) and s.shape == (0, 1)
    with pytest.raises(ValueError, match="float64"):
        ops.bias_gelu(e.double(), torch.randn(8, dtype=torch.float64, device=triton_device), backend="triton")
    with pytest.raises(ValueError, match="integer format"):
        ops.round_to(torch.randn(4, device=triton_device), "int8", backend="triton")


# ---------------------------------------------------------------------------------------------- #
# full shapes on a GPU                                                                            #
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_full_shapes(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4096, 3072, generator=g) * 3).to(dtype).cuda()
    b = torch.randn(3072, generator=g).to(dtype).cuda()
    for approximate in ("none", "tanh"):
        assert_numerics(ops.bias_gelu(x, b, approximate, backend="triton").cpu(),
                        R.bias_gelu(x.double(), b.double(), approximate).cpu(),
                        torch.nn.functional.gelu(x + b, approximate=approximate).cpu(), f"bias_gelu {approximate}")
    q, s = ops.quantize(x[:, :768], backend="triton")
    q_ref, s_ref = R.quantize(x[:, :768])
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    w = _wide_values(1 << 20, seed=3).cuda()
    for fmt in ("bf16", "fp16", "e4m3", "e5m2", "e3m4", "e4m3fn-nosub", "q3.4"):
        for rounding, seed in (("nearest", None), ("stochastic", 77)):
            out = ops.round_to(w, fmt, rounding, seed, backend="triton")
            assert bool(_same_bits(out, formats.round_to(w.cpu(), fmt, rounding, seed)).all()), (fmt, rounding)
