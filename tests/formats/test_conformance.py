"""The rounding conformance kit (bertsilicon.formats.conformance) on every backend registered for
op "round_to", on formats.round_to itself (toward zero, custom floats, explicit overflow policies), and
on known-bad implementations, which it must reject."""
import pytest
import torch

from bertsilicon import formats, ops
from bertsilicon.formats import conformance as C
from bertsilicon.backends import registry, routing
from test_formats import _one_thread  # noqa: F401  (autouse: one intra-op thread for this module too)

BACKENDS = ("reference", "cpu", "triton")
FLOATS = ("bf16", "fp16", "e4m3", "e5m2")


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _skip_reason(backend, fmt="bf16", rounding="nearest"):
    probe = torch.ones(4, device=_device(backend))
    if routing.available("round_to", backend, probe, fmt, rounding, 0):
        return None
    return routing.why_not("round_to", backend, probe.device, (probe, fmt, rounding, 0), {})


def _backend_round_fn(backend):
    """ops.round_to pinned to ``backend`` (on CUDA for Triton when there is a GPU, else CPU tensors),
    or a skip saying why that backend cannot run here."""
    reason = registry.load(backend)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable on this machine: {reason}")
    if ("round_to", backend) not in registry.REGISTRY:
        pytest.skip(f"no round_to kernel registered for the {backend} backend yet")
    reason = _skip_reason(backend)
    if reason is not None:
        pytest.skip(f"{backend} cannot run round_to here: {reason}")
    return C.backend_round_fn(backend, _device(backend))


def _assert_all_pass(round_fn, fmt, rounding, quick=False):
    failed = []
    for name, check in C.checks_for(fmt, rounding, quick):
        try:
            check(round_fn)
        except C.ConformanceError as exc:
            failed.append(f"{name}: {exc}")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fmt", FLOATS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_conforms(backend, fmt, rounding):
    # the Triton interpreter runs ~100x slower than a GPU: fewer draws and sampled codes there
    quick = backend == "triton" and registry.triton_interpreter()
    _assert_all_pass(_backend_round_fn(backend), fmt, rounding, quick)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("fmt", ["e3m4", "e2m1", "e3m2fn"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_conforms_on_custom_floats(backend, fmt, rounding):
    fn = _backend_round_fn(backend)
    reason = _skip_reason(backend, fmt, rounding)
    if reason is not None:
        pytest.skip(f"{backend} does not serve fmt={fmt!r}: {reason}")
    _assert_all_pass(fn, fmt, rounding, quick=backend == "triton" and registry.triton_interpreter())


@pytest.mark.parametrize("fmt", FLOATS)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_same_seed_bit_identical_across_backends(backend, fmt):
    fn = _backend_round_fn(backend)
    C.check_same_seed({"reference": C.backend_round_fn("reference"), backend: fn}, fmt)


def test_same_seed_reference_vs_formats():
    C.check_same_seed({"formats.round_to": formats.round_to, "reference": C.backend_round_fn("reference")}, "bf16")


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2"])
def test_formats_round_to_toward_zero_conforms(fmt):
    _assert_all_pass(formats.round_to, fmt, "toward_zero")  # nearest/stochastic: the reference backend above


@pytest.mark.parametrize("fmt", ["e3m4", "e5m6-nosub", "e3m2fn", "e2m1", "e8m23"])
def test_custom_floats_conform(fmt):
    for rounding in ("nearest", "stochastic", "toward_zero"):
        _assert_all_pass(formats.round_to, fmt, rounding)


@pytest.mark.parametrize("overflow", ["saturate", "inf"])
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2", "e3m2fn"])
def test_explicit_overflow_policies(fmt, overflow):
    for rounding in ("nearest", "stochastic", "toward_zero"):
        C.check_overflow(formats.round_to, fmt, rounding, overflow=overflow)


# ------------------------------------------------------------------------------------------------ #
# The kit must reject broken implementations                                                       #
# ------------------------------------------------------------------------------------------------ #
def test_kit_catches_the_bit_trick_nan_payloads():
    with pytest.raises(C.ConformanceError, match="NaN"):
        C.check_nan(C.bit_trick_round_to, "bf16", "stochastic")
    # ... while the trick is otherwise a fine unbiased rounding (so the NaN check is what catches it)
    C.check_unbiased(C.bit_trick_round_to, "bf16")


def _coin_flip(x, fmt, rounding="nearest", seed=None, **kw):
    """Picks either neighbour with probability 1/2: not unbiased, wrong P(up)."""
    if rounding != "stochastic":
        return formats.round_to(x, fmt, rounding, seed, **kw)
    lo, hi = C.neighbours(x, fmt)
    coin = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    return torch.where(coin, lo, hi).to(x.dtype)


def _one_draw_per_tensor(x, fmt, rounding="nearest", seed=None, **kw):
    """Stochastic rounding with one random number for the whole tensor (index ignored)."""
    if rounding != "stochastic":
        return formats.round_to(x, fmt, rounding, seed, **kw)
    same = torch.zeros_like(x.float()) + formats.random_bits(seed, 1)[0].item() / 2.0 ** 32
    lo = formats.round_to(x, fmt, "toward_zero", **kw).float()
    q = C.quantum(x, fmt).float()
    frac = ((x.float() - lo).abs() / q)
    return torch.where(same < frac, lo + torch.sign(x.float()) * q, lo).to(x.dtype)


def _flush_subnormals(x, fmt, rounding="nearest", seed=None, **kw):
    y = formats.round_to(x, fmt, rounding, seed, **kw)
    tiny = formats.get_format(fmt).smallest_normal
    return torch.where(y.abs() < tiny, torch.zeros_like(y), y)


def _always_saturate(x, fmt, rounding="nearest", seed=None, **kw):
    return formats.round_to(x, fmt, rounding, seed, overflow="saturate")


def _round_signed_value(x, fmt, rounding="nearest", seed=None, **kw):
    """floor(x / q + u) * q on the signed value: unbiased, but round(-x) != -round(x) for the same u."""
    if rounding != "stochastic":
        return formats.round_to(x, fmt, rounding, seed, **kw)
    q = C.quantum(x, fmt)
    u = formats.random_bits(seed, x.numel()).view(x.shape).double() / 2.0 ** 32
    return (torch.floor(x.double() / q + u) * q).to(x.dtype)


@pytest.mark.parametrize("bad, check", [
    (_coin_flip, lambda fn: C.check_p_up(fn, "fp16")),
    (_coin_flip, lambda fn: C.check_unbiased(fn, "fp16")),
    (_one_draw_per_tensor, lambda fn: C.check_p_up(fn, "bf16")),
    (_flush_subnormals, lambda fn: C.check_subnormal_spacing(fn, "fp16", "nearest")),
    (_always_saturate, lambda fn: C.check_overflow(fn, "fp16", "nearest")),
    (_round_signed_value, lambda fn: C.check_sign_symmetry(fn, "bf16", "stochastic")),
    (lambda x, fmt, rounding="nearest", seed=None, **kw: formats.round_to(x, fmt, "toward_zero"),
     lambda fn: C.check_nearest_matches_torch(fn, "bf16")),
    (lambda x, fmt, rounding="nearest", seed=None, **kw: formats.round_to(x, fmt, rounding, None if seed is None else 7),
     lambda fn: C.check_same_seed({"ref": formats.round_to, "seed-ignored": fn}, "bf16")),
])
def test_kit_rejects_broken_implementations(bad, check):
    with pytest.raises(C.ConformanceError):
        check(bad)


def test_backend_round_fn_refuses_explicit_policy():
    fn = C.backend_round_fn("reference")
    with pytest.raises(NotImplementedError, match="overflow"):
        fn(torch.ones(2), "bf16", "nearest", None, overflow="saturate")
