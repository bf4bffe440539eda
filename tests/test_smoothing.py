"""Randomized smoothing (neuralmark.components.smoothing) against hand-computable cases."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from neuralmark.components.smoothing import (
    Certificate,
    certified_accuracy,
    certify,
    noise_counts,
    predict,
)
from neuralmark.components.stats import one_sided_lower

PHI = statistics.NormalDist()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def constant(label: int, num_classes: int = 2):
    """A classifier that always votes ``label``: B×C×H×W → B×K logits."""

    def f(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], num_classes)
        logits[:, label] = 1.0
        return logits

    return f


def mean_threshold(t: float):
    """f(x) = 1[mean(x) > t]: under N(0, σ²I) noise on d values, P(f = 1) = Φ((mean − t)·√d/σ)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).mean(dim=1) - t  # b
        return torch.stack([-z, z], dim=1)

    return f


@pytest.mark.parametrize(("n", "alpha", "sigma"), [(100, 0.001, 0.5), (1000, 0.001, 0.25),
                                                   (50, 0.05, 1.0)])
def test_constant_classifier_certifies_the_closed_form(n, alpha, sigma):
    # all n votes agree: the one-sided Clopper-Pearson bound is the Beta(n, 1) quantile alpha^(1/n)
    images = torch.rand(3, 3, 8, 8)
    certs = certify(constant(1), images, sigma, n0=10, n=n, alpha=alpha,
                    generator=torch.Generator().manual_seed(0))
    p_lower = alpha ** (1 / n)
    for c in certs:
        assert c.label == 1
        assert c.counts == (0, n)
        assert c.p_lower == pytest.approx(p_lower, rel=1e-12)
        assert c.radius == pytest.approx(sigma * PHI.inv_cdf(p_lower), rel=1e-9)


def test_too_few_samples_abstain_at_the_exact_boundary():
    # alpha^(1/n) >= 1/2  <=>  n >= log(alpha)/log(1/2) = 9.97 for alpha = 0.001
    images = torch.rand(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    nine = certify(constant(0), images, 0.5, n0=5, n=9, alpha=0.001, generator=gen)
    ten = certify(constant(0), images, 0.5, n0=5, n=10, alpha=0.001, generator=gen)
    assert all(c.abstained and c.label is None and c.radius == 0.0 for c in nine)
    assert nine[0].p_lower == pytest.approx(0.001 ** (1 / 9), rel=1e-12)
    assert all(c.label == 0 and c.radius > 0 for c in ten)
    assert ten[0].radius == pytest.approx(0.5 * PHI.inv_cdf(0.001 ** 0.1), rel=1e-9)
    # PREDICT: 9 unanimous votes give p = 2 * 2^-9 = 0.0039 > alpha, so it abstains too
    assert predict(constant(1), images, 0.5, n=9, alpha=0.001, generator=gen) == [None, None]
    assert predict(constant(1), images, 0.5, n=11, alpha=0.001, generator=gen) == [1, 1]


def test_mean_threshold_classifier_matches_the_gaussian_probability():
    sigma, t, n, alpha = 0.5, 0.5, 4000, 0.001
    d = 3 * 4 * 4
    offset = 1.2815516 * sigma / math.sqrt(d)  # mean − t for P(f = 1) = 0.9
    images = torch.full((2, 3, 4, 4), t + offset)
    images[1] = t - offset  # class 0 with the same probability
    p_true = PHI.cdf(offset * math.sqrt(d) / sigma)
    assert p_true == pytest.approx(0.9, abs=1e-6)

    certs = certify(mean_threshold(t), images, sigma, n0=100, n=n, alpha=alpha,
                    generator=torch.Generator().manual_seed(1))
    assert [c.label for c in certs] == [1, 0]
    # the bound holds, and is no looser than Clopper-Pearson at a count 4 SD below the mean
    sd = math.sqrt(n * p_true * (1 - p_true))
    slack_floor = one_sided_lower(math.floor(n * p_true - 4 * sd), n, 1 - alpha)
    exact_radius = offset * math.sqrt(d)  # the true L2 distance to the decision boundary
    assert exact_radius == pytest.approx(sigma * PHI.inv_cdf(p_true), rel=1e-6)
    for c in certs:
        assert slack_floor <= c.p_lower <= p_true
        assert c.radius == pytest.approx(sigma * PHI.inv_cdf(c.p_lower), rel=1e-9)
        # Cohen's bound is tight for a linear boundary: the gap is only the Clopper-Pearson slack
        assert sigma * PHI.inv_cdf(slack_floor) <= c.radius <= exact_radius


def test_noise_counts_are_seeded_and_sum_to_n():
    images = torch.full((3, 3, 4, 4), 0.5)
    f = mean_threshold(0.5)
    a = noise_counts(f, images, 0.5, 150, 2, batch_size=32,
                     generator=torch.Generator().manual_seed(3))
    b = noise_counts(f, images, 0.5, 150, 2, batch_size=32,
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.sum(dim=1).tolist() == [150, 150, 150]
    # on the boundary both classes get votes, near half each
    assert ((a[:, 1] > 45) & (a[:, 1] < 105)).all()


def test_certified_accuracy_counts_label_and_radius():
    certs = [
        Certificate(1, 0.9, 0.6, (10, 90)),   # right, radius 0.6
        Certificate(1, 0.8, 0.2, (20, 80)),   # right, radius 0.2
        Certificate(0, 0.95, 0.8, (95, 5)),   # wrong label
        Certificate(None, 0.4, 0.0, (55, 45)),  # abstains
    ]
    labels = [1, 1, 1, 0]
    assert certified_accuracy(certs, labels, [0.0, 0.1, 0.2, 0.5, 0.6, 0.7]) == \
        [0.5, 0.5, 0.5, 0.25, 0.25, 0.0]
    with pytest.raises(ValueError):
        certified_accuracy(certs, labels[:3], [0.0])
