"""Distillation losses against small cases computed independently with explicit float64 loops (math module
only, no torch ops), plus torch.autograd.gradcheck on every loss. Ragged padding with a fully padded row."""
from __future__ import annotations

import math

import pytest
import torch

from bertsilicon.distill import losses as L

DT = torch.float64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is fastest, and on a shared machine 2 OpenMP threads can be 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rand(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_(True)


def _f(x) -> float:
    return float(x.detach())


def _mask(g, B, S):
    # row 0 full, last row fully padded, the middle ones ragged (>= 1 real token)
    lengths = [S] + [int(torch.randint(1, S + 1, (1,), generator=g)) for _ in range(B - 2)] + [0]
    return torch.tensor([[1 if j < n else 0 for j in range(S)] for n in lengths], dtype=torch.int64)


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _close(a, b, tol=1e-12):
    a = float(a.detach()) if isinstance(a, torch.Tensor) else a
    assert abs(a - b) <= tol * max(1.0, abs(b)), (float(a), b)


# ------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize("kind", ["kl", "ce"])
@pytest.mark.parametrize("t2_scale", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_soft_target_loss_hand_computed(kind, t2_scale, reduction):
    g = torch.Generator().manual_seed(1)
    B, S, C, T = 3, 5, 7, 2.5
    zs, zt = _rand(g, B, S, C, scale=3), _rand(g, B, S, C, scale=3)
    mask = _mask(g, B, S)
    out = L.soft_target_loss(zs, zt, temperature=T, kind=kind, t2_scale=t2_scale, reduction=reduction, mask=mask)
    rows = {}
    for b in range(B):
        for s in range(S):
            p_t = _softmax([x / T for x in zt.detach()[b, s].tolist()])
            p_s = _softmax([x / T for x in zs.detach()[b, s].tolist()])
            v = _kl(p_t, p_s) if kind == "kl" else -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
            rows[b, s] = v * (T * T if t2_scale else 1.0) * mask[b, s].item()
    n = int(mask.sum())
    if reduction == "none":
        assert out.shape == (B, S)
        for (b, s), v in rows.items():
            _close(out[b, s], v)
    else:
        _close(out, sum(rows.values()) / (n if reduction == "mean" else 1))


def test_soft_target_kl_is_zero_for_equal_logits_and_ce_is_entropy():
    g = torch.Generator().manual_seed(2)
    z = _rand(g, 4, 9)
    assert _f(L.soft_target_loss(z, z.detach(), 3.0)) == pytest.approx(0.0, abs=1e-14)
    p = torch.softmax(z.detach() / 3.0, -1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    assert _f(L.soft_target_loss(z, z.detach(), 3.0, kind="ce", t2_scale=False)) == pytest.approx(entropy, rel=1e-12)


def test_logit_mse_hand_computed():
    g = torch.Generator().manual_seed(3)
    zs, zt = _rand(g, 4, 3), _rand(g, 4, 3)
    want = sum(sum((_f(zs[b, c]) - _f(zt[b, c])) ** 2 for c in range(3)) for b in range(4)) / 4
    _close(L.logit_mse(zs, zt), want)
    _close(L.logit_mse(zs, zt, reduction="sum"), want * 4)


def test_hidden_cosine_loss_hand_computed():
    g = torch.Generator().manual_seed(4)
    B, S, D = 3, 6, 5
    hs, ht = _rand(g, B, S, D), _rand(g, B, S, D)
    mask = _mask(g, B, S)
    total, n = 0.0, 0
    for b in range(B):
        for s in range(S):
            if mask[b, s]:
                a, c = hs.detach()[b, s].tolist(), ht.detach()[b, s].tolist()
                dot = sum(x * y for x, y in zip(a, c))
                total += 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c)))
                n += 1
    _close(L.hidden_cosine_loss(hs, ht, mask), total / n)


def test_hidden_mse_with_projection_hand_computed():
    g = torch.Generator().manual_seed(5)
    B, S, Ds, Dt = 3, 4, 3, 5
    hs, ht = _rand(g, B, S, Ds), _rand(g, B, S, Dt)
    mask = _mask(g, B, S)
    proj = L.HiddenProjection(Ds, Dt, dtype=DT)
    W, bias = proj.weight.detach(), proj.bias.detach()
    total, n = 0.0, 0
    for b in range(B):
        for s in range(S):
            if mask[b, s]:
                for o in range(Dt):
                    y = _f(bias[o]) + sum(_f(W[o, i]) * _f(hs[b, s, i]) for i in range(Ds))
                    total += (y - _f(ht[b, s, o])) ** 2
                n += Dt
    _close(L.hidden_mse_loss(hs, ht, proj, mask), total / n)
    _close(L.embedding_mse_loss(hs, ht, proj, mask), total / n)
    with pytest.raises(ValueError, match="projection"):
        L.hidden_mse_loss(hs, ht)  # widths differ and no projection


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_patient_loss_hand_computed(reduction):
    g = torch.Generator().manual_seed(6)
    B, Ly, D = 3, 2, 4
    s, t = _rand(g, B, Ly, D), _rand(g, B, Ly, D)
    total = 0.0
    for b in range(B):
        for layer in range(Ly):
            a, c = s.detach()[b, layer].tolist(), t.detach()[b, layer].tolist()
            na, nc = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in c))
            total += sum((x / na - y / nc) ** 2 for x, y in zip(a, c))
    want = total / B if reduction == "sum" else total / (B * Ly * D)
    _close(L.patient_loss(s, t, reduction=reduction), want)
    _close(L.patient_loss(list(s.unbind(1)), list(t.unbind(1)), reduction=reduction), want)


def test_attention_score_mse_hand_computed_ignores_padding():
    g = torch.Generator().manual_seed(7)
    B, H, S = 3, 2, 5
    ss, st = _rand(g, B, H, S, S, scale=4), _rand(g, B, H, S, S, scale=4)
    mask = _mask(g, B, S)
    total, n = 0.0, 0
    for b in range(B):
        for h in range(H):
            for i in range(S):
                for j in range(S):
                    if mask[b, i] and mask[b, j]:
                        total += (_f(ss[b, h, i, j]) - _f(st[b, h, i, j])) ** 2
                        n += 1
    out = L.attention_score_mse(ss, st, mask)
    _close(out, total / n)
    # what sits at padded pairs cannot matter
    bumped = st.detach().clone()
    bumped[mask[:, None, :, None].expand_as(bumped) == 0] = 1e6
    _close(L.attention_score_mse(ss, bumped, mask), total / n)


def _relation_kl_loops(s_rel, t_rel, mask):
    B, H, S = len(s_rel), len(s_rel[0]), len(s_rel[0][0])
    total, n = 0.0, 0
    for b in range(B):
        keys = [j for j in range(S) if mask[b, j]]
        for h in range(H):
            for i in keys:  # real queries; their softmax over the real keys
                p_t = _softmax([t_rel[b][h][i][j] for j in keys])
                p_s = _softmax([s_rel[b][h][i][j] for j in keys])
                total += _kl(p_t, p_s)
                n += 1
    return total / n


def test_attention_kl_hand_computed():
    g = torch.Generator().manual_seed(8)
    B, H, S = 3, 2, 6
    ss, st = _rand(g, B, H, S, S, scale=2), _rand(g, B, H, S, S, scale=2)
    mask = _mask(g, B, S)
    want = _relation_kl_loops(ss.detach().tolist(), st.detach().tolist(), mask)
    _close(L.attention_kl(ss, st, mask), want)


def test_value_relation_kl_hand_computed_with_different_head_dims():
    g = torch.Generator().manual_seed(9)
    B, H, S, dks, dkt = 3, 2, 5, 3, 4
    vs, vt = _rand(g, B, H, S, dks), _rand(g, B, H, S, dkt)
    mask = _mask(g, B, S)

    def relation(v, dk):
        v = v.detach().tolist()
        return [[[[sum(v[b][h][i][d] * v[b][h][j][d] for d in range(dk)) / math.sqrt(dk) for j in range(S)]
                  for i in range(S)] for h in range(H)] for b in range(B)]

    want = _relation_kl_loops(relation(vs, dks), relation(vt, dkt), mask)
    _close(L.value_relation_kl(vs, vt, mask), want)


def test_contrastive_loss_hand_computed():
    g = torch.Generator().manual_seed(10)
    a, b = _rand(g, 4, 3), _rand(g, 4, 3)
    tau = 0.1

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    A, Bv = [unit(r) for r in a.detach().tolist()], [unit(r) for r in b.detach().tolist()]
    total = 0.0
    for i in range(4):
        logits = [sum(x * y for x, y in zip(A[i], Bv[j])) / tau for j in range(4)]
        total += -math.log(_softmax(logits)[i])
    _close(L.contrastive_loss(a, b, tau), total / 4)


def test_similarity_kl_hand_computed_with_different_widths():
    g = torch.Generator().manual_seed(13)
    B, tau = 5, 0.2
    s, t = _rand(g, B, 3), _rand(g, B, 4)

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    S, T = s.detach().tolist(), t.detach().tolist()
    total = 0.0
    for i in range(B):
        others = [j for j in range(B) if j != i]
        p_t = _softmax([cos(T[i], T[j]) / tau for j in others])
        p_s = _softmax([cos(S[i], S[j]) / tau for j in others])
        total += _kl(p_t, p_s)
    _close(L.similarity_kl(s, t, tau), total / B)
    assert _f(L.similarity_kl(s, s.detach() * 3.0, tau)) == pytest.approx(0.0, abs=1e-14)  # scale-free


# ------------------------------------------------------------------------------------------------ #
def _gradcheck(fn, *inputs):
    # float64 inputs (DT): central differences with eps 1e-6 are accurate to ~1e-10 here, so atol 1e-6 / rtol 1e-5
    # (tighter than gradcheck's defaults, 1e-5 / 1e-3) still fail a wrong gradient term (off by O(1e-1))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_all_losses():
    g = torch.Generator().manual_seed(11)
    B, S, C, H, D = 3, 4, 5, 2, 3
    mask = _mask(g, B, S)
    z1, z2 = _rand(g, B, S, C), _rand(g, B, S, C)
    _gradcheck(lambda a, b: L.soft_target_loss(a, b, 2.0, mask=mask), z1, z2)
    _gradcheck(lambda a, b: L.soft_target_loss(a, b, 0.7, kind="ce", t2_scale=False, reduction="sum"), z1, z2)
    _gradcheck(lambda a, b: L.logit_mse(a, b, mask=mask), z1, z2)
    h1, h2 = _rand(g, B, S, D), _rand(g, B, S, D)
    _gradcheck(lambda a, b: L.hidden_cosine_loss(a, b, mask), h1, h2)
    proj = L.HiddenProjection(D, D + 2, dtype=DT)
    h3 = _rand(g, B, S, D + 2)
    w0, c0 = proj.weight.detach().clone().requires_grad_(True), proj.bias.detach().clone().requires_grad_(True)
    _gradcheck(lambda a, b, w, c: L.hidden_mse_loss(a, b, lambda x: x @ w.T + c, mask), h1, h3, w0, c0)
    _gradcheck(lambda a, b: L.patient_loss(a, b), _rand(g, B, 2, D), _rand(g, B, 2, D))
    s1, s2 = _rand(g, B, H, S, S), _rand(g, B, H, S, S)
    _gradcheck(lambda a, b: L.attention_score_mse(a, b, mask), s1, s2)
    _gradcheck(lambda a, b: L.attention_kl(a, b, mask), s1, s2)
    _gradcheck(lambda a, b: L.value_relation_kl(a, b, mask), _rand(g, B, H, S, 3), _rand(g, B, H, S, 5))
    _gradcheck(lambda a, b: L.contrastive_loss(a, b, 0.5), _rand(g, 4, D), _rand(g, 4, D))
    _gradcheck(lambda a, b: L.similarity_kl(a, b, 0.5), _rand(g, 4, D), _rand(g, 4, D + 1))


def test_fully_padded_batch_gives_zero_not_nan_and_finite_grads():
    g = torch.Generator().manual_seed(12)
    mask = torch.zeros(2, 3, dtype=torch.int64)
    s, t = _rand(g, 2, 1, 3, 3), _rand(g, 2, 1, 3, 3)
    for fn in (L.attention_kl, L.attention_score_mse):
        out = fn(s, t, mask)
        assert _f(out) == 0.0
        out.backward()
        assert torch.isfinite(s.grad).all()
        s.grad = None
    h = _rand(g, 2, 3, 4)
    assert _f(L.hidden_cosine_loss(h, h.detach() + 1, mask)) == 0.0


def test_bad_arguments_are_named():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="teacher_logits"):
        L.soft_target_loss(z, torch.randn(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        L.soft_target_loss(z, z, reduction="batchmean")
    with pytest.raises(ValueError, match="temperature"):
        L.soft_target_loss(z, z, temperature=0)
    with pytest.raises(ValueError, match="kind"):
        L.soft_target_loss(z, z, kind="js")
    with pytest.raises(TypeError, match="student_logits"):
        L.soft_target_loss(torch.ones(2, 3, dtype=torch.int64), z)
    with pytest.raises(ValueError, match="mask"):
        L.hidden_cosine_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[batch, heads, seq, seq\]"):
        L.attention_score_mse(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
