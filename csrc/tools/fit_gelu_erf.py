"""Fit the rational that csrc/vmath_impl.h uses for erf inside GELU (offline tool; prints C++ constants).

GELU needs erf(x / sqrt 2) only to an absolute accuracy: the output is x * Phi(x) with
Phi(x) = 1/2 + erf(x / sqrt 2) / 2, so an absolute error e in erf is an error |x| * e / 2 in GELU.
torch's vectorised erf has a maximum absolute error of about 1.2e-6 in fp32; this fit stays below half
of that with one division and no exp (the accurate verf, <= 1 ulp, evaluates two polynomials and an
exp for every lane and costs about twice as much).

    Phi(x) = clip(1/2 + xc * P(xc^2) / Q(xc^2), 0, 1),  xc = clamp(x, -C, C),  deg P = 5, deg Q = 4, Q(0) = 1
    gelu(x) = max(x, -C) * Phi(x)

The fit pins the end point slightly above erf = 1 (1 + 2^-22), so that in fp32 Phi(C) rounds to 1 and
Phi(-C) to 0 and the clip turns them into exactly 1 and 0: beyond the clamp gelu is x above and -0 below
(and +inf at +inf, -0 at -inf, NaN at NaN) without any select. The script checks that, picks the clamp
point T = C / sqrt 2 with the smallest error among those that pass, and prints the constants.

Method: linearised least squares for P - g Q = 0 with g = erf(t) / t on t in [0, T] (fitting in t, then
rescaling to x, is better conditioned than fitting in x), re-weighted by 1/Q (Sanathanan-Koerner) and by
the running residual (Lawson) towards minimax relative error in g; the best iterate is kept. The check
evaluates in fp32 with numpy (no FMA; the kernel's FMAs only round less).

Run: python csrc/tools/fit_gelu_erf.py   (numpy only; about a minute on 2 cores)
"""
from __future__ import annotations

import math

import numpy as np

DEG_P, DEG_Q = 5, 4
PIN = 1.0 + 2.0 ** -22                      # erf at the end point, a little above 1
CLAMP_POINTS = np.arange(3.60, 3.92, 0.01)  # candidate T = C / sqrt 2 (erf(3.6) = 1 - 3.6e-7)
_erf = np.vectorize(math.erf)
_polyval = np.polynomial.polynomial.polyval


def fit(top: float, deg_p: int = DEG_P, deg_q: int = DEG_Q, iters: int = 200, n: int = 20000):
    """P, Q (lowest degree first) in x = sqrt 2 t, with the factor 1/2 of Phi folded into P."""
    t = np.unique(np.concatenate([np.linspace(0.0, top, n), top * np.cos(np.linspace(0.0, np.pi / 2, n))]))
    t = t[t > 0]
    s, g = t * t, _erf(t) / t
    g[-1] = PIN / top                       # t[-1] == top: the pinned end point
    vp = np.vander(s, deg_p + 1, increasing=True)
    vq = np.vander(s, deg_q + 1, increasing=True)[:, 1:]
    lawson, q_prev, best = np.ones_like(s), np.ones_like(s), None
    for _ in range(iters):
        w = lawson / (g * q_prev)
        w[-1] *= 1e4                        # hold the pin
        a = np.concatenate([vp, -g[:, None] * vq], axis=1) * w[:, None]
        coef = np.linalg.lstsq(a, g * w, rcond=None)[0]
        p, q = coef[: deg_p + 1], np.concatenate([[1.0], coef[deg_p + 1:]])
        q_prev = _polyval(s, q)
        rel = _polyval(s, p) / q_prev / g - 1.0
        err = float(np.abs(rel[:-1]).max())
        if (best is None or err < best[0]) and q_prev.min() > 0:  # no pole inside the range
            best = (err, p.copy(), q.copy())
        lawson = np.maximum(lawson * np.sqrt(np.abs(rel)), 1e-12)
        lawson /= lawson.max()
    _, p, q = best
    k = np.arange(max(deg_p, deg_q) + 1)
    # erf(x / sqrt 2) / 2 = x * [P(x^2 / 2) / (2 sqrt 2)] / Q(x^2 / 2)
    return (p / 2.0 ** k[: deg_p + 1] / (2.0 * math.sqrt(2.0))).astype(np.float32), \
        (q / 2.0 ** k[: deg_q + 1]).astype(np.float32)


def gelu_fp32(p: np.ndarray, q: np.ndarray, clamp: np.float32, x: np.ndarray) -> np.ndarray:
    """gelu(x) as the kernel computes it, in fp32."""
    f = np.float32
    xl = np.maximum(-clamp, x)
    xc = np.minimum(clamp, xl)
    s = xc * xc
    num, den = p[-1], q[-1]
    for c in p[-2::-1]:
        num = num * s + c
    for c in q[-2::-1]:
        den = den * s + c
    phi = np.minimum(f(1), np.maximum(f(0), f(0.5) + xc * num / den))
    return xl * phi


def main() -> None:
    x = np.concatenate([np.random.default_rng(0).uniform(-8, 8, 400_000), np.linspace(-7, 7, 140_001)])
    x = x.astype(np.float32)
    xd = x.astype(np.float64)
    ref_phi = 0.5 * (1.0 + _erf(xd / math.sqrt(2.0)))
    best = None
    for top in CLAMP_POINTS:
        clamp = np.float32(top * math.sqrt(2.0))
        p, q = fit(float(top))
        with np.errstate(invalid="ignore"):
            ends = gelu_fp32(p, q, clamp, np.array([clamp, -clamp, 10.0, -10.0], np.float32))
            phi = gelu_fp32(p, q, clamp, x) / np.maximum(-clamp, x).astype(np.float64)
        if not (ends[0] == clamp and ends[1] == 0 and ends[2] == 10 and ends[3] == 0):
            continue                        # the end point did not round to exactly 1 / 0
        err = float(np.nanmax(np.abs(2.0 * (phi - ref_phi))))  # |erf error| = 2 |Phi error|
        if best is None or err < best[0]:
            best = (err, float(top), clamp, p, q)
    err, top, clamp, p, q = best
    print(f"// T = {top:.2f}: max |erf(x / sqrt 2) error| {err:.2e} in fp32 (x = max(x, -C) is exact where it matters)")
    print(f"constexpr float GELU_ERF_CLAMP = {float(clamp):.9g}f;  // {top:.2f} sqrt 2")
    for name, c in (("P (with the 1/2 of Phi folded in)", p), ("Q", q)):
        print(f"// {name}, highest degree first")
        print(", ".join(f"{float(v):.9g}f" for v in c[::-1]))


if __name__ == "__main__":
    main()
