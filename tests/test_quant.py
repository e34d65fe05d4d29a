"""bertsilicon.quant (int8 weights / activations, SmoothQuant) and the kNN evaluation helpers."""
import pytest
import torch

from bertsilicon import quant
from bertsilicon.models.eval import knn_accuracy, mean_pool, pooled_cosines


def _weight_and_activations(seed, n=77, k=130, t=19):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    x = torch.randn(t, k, generator=g)
    x[:, 3] *= 40.0  # an outlier channel, as in real BERT activations
    return w, x


def test_quantize_weight_per_output_channel():
    w, _ = _weight_and_activations(0)
    w_q, w_scale = quant.quantize_weight(w)
    assert w_q.dtype == torch.int8 and w_scale.shape == (w.shape[0],)
    assert torch.allclose(w_scale, w.abs().amax(1) / 127)
    err = (w_q.double() * w_scale.double()[:, None] - w.double()).abs()
    assert bool((err <= w_scale.double()[:, None] / 2 + 1e-9).all())  # round to nearest: half a step


def test_int8_matmul_matches_float64_of_its_quantized_operands():
    w, x = _weight_and_activations(1)
    bias = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(2))
    w_q, w_scale = quant.quantize_weight(w)
    x_q, x_scale = quant.quantize_activations(x)
    ref = torch.nn.functional.gelu((x_q.double() * x_scale.double()) @ (w_q.double() * w_scale.double()[:, None]).t()
                                   + bias.double())
    out = quant.int8_matmul(x, w_q, w_scale, bias, "gelu")
    assert out.dtype == torch.float32
    assert float((out.double() - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_smoothing_is_exact_in_real_arithmetic_and_helps_with_outliers():
    w, x = _weight_and_activations(3)
    stats = quant.ChannelAbsMax()
    stats.update(x[:10])
    stats.update(x[10:])
    assert torch.equal(stats.value, x.abs().amax(0))
    s = quant.smoothing_factors(stats.value, w, alpha=0.5)
    exact = x.double() @ w.double().t()
    migrated = (x.double() / s.double()) @ (w.double() * s.double()).t()
    assert torch.allclose(migrated, exact, rtol=1e-12, atol=1e-12)
    plain = quant.int8_matmul(x, *quant.quantize_weight(w))
    smoothed = quant.int8_matmul(x, *quant.quantize_weight(w, s), inv_smooth=1.0 / s)
    assert quant.relative_error(smoothed, exact) < quant.relative_error(plain, exact)


def test_smoothing_factors_edge_cases():
    w = torch.randn(5, 4)
    s = quant.smoothing_factors(torch.tensor([0.0, 1.0, 2.0, 3.0]), w, alpha=0.5)
    assert s[0] == 1.0 and bool((s > 0).all())
    with pytest.raises(ValueError, match="alpha"):
        quant.smoothing_factors(torch.ones(4), w, alpha=1.5)


def test_relative_error():
    a = torch.tensor([3.0, 4.0])
    assert quant.relative_error(a * 1.1, a) == pytest.approx(0.1)
    assert quant.relative_error(torch.empty(0), torch.empty(0)) == 0.0


def test_knn_accuracy():
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(3, 16, generator=g) * 5
    labels = [i % 3 for i in range(30)]
    emb = centers[labels] + 0.1 * torch.randn(30, 16, generator=g)
    assert knn_accuracy(emb, labels, k=3) == 1.0
    shuffled = [labels[int(j)] for j in torch.randperm(30, generator=g)]  # labels unrelated to the clusters
    assert knn_accuracy(emb, shuffled, k=3) < 0.7
    # one mislabelled point among tight clusters: exactly that one is misclassified
    wrong = list(labels)
    wrong[0] = 1
    assert knn_accuracy(emb, wrong, k=3) == pytest.approx(29 / 30)
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(emb, labels[:5])
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(emb, labels, k=30)


def test_mean_pool_and_cosines():
    h = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    p = mean_pool(h, mask)
    assert torch.equal(p[0], h[0, :2].mean(0)) and torch.equal(p[1], torch.zeros(4))
    c = pooled_cosines(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0], [-1.0, -1.0]]))
    assert torch.allclose(c, torch.tensor([1.0, -1.0], dtype=torch.float64))
