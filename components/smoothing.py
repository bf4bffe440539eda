"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): predict and certify.

The smoothed classifier ``g(x) = argmax_c P(f(x + ε) = c)``, ``ε ~ N(0, σ²I)``,
is robust within an L2 ball: if the top class has probability at least
``p_A > 1/2`` then ``g`` is constant within radius ``σ · Φ⁻¹(p_A)``.
``certify`` is the paper's CERTIFY (``n0`` selection samples, ``n``
estimation samples, one-sided Clopper–Pearson lower bound on ``p_A``);
``predict`` is its PREDICT (two-sided binomial test between the top two
classes). Both abstain (``label=None``) rather than give a verdict the
samples do not support, and a sample count too small to reach ``p_A > 1/2``
at level ``alpha`` always abstains.

Own code: no maintained PyPI package implements Cohen's procedure on plain
callables (the authors' repo is not packaged); it is a few lines over
``neuralmark.components.stats``.

Noise is added in the classifier's input space: callers that resize images
first (e.g. the anti-forwarding scanner at its working size) certify a radius
in that space, and must say so.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from neuralmark.components.stats import binomial_sf, one_sided_lower

Classifier = Callable[[torch.Tensor], torch.Tensor]  # B×C×H×W → B×K logits


@dataclass(frozen=True)
class Certificate:
    """Smoothed answer for one input.

    Attributes:
        label: predicted class, or ``None`` when abstaining.
        p_lower: lower confidence bound on the top class's probability under noise.
        radius: certified L2 radius (0.0 when abstaining).
        counts: votes per class in the estimation samples.
    """

    label: int | None
    p_lower: float
    radius: float
    counts: tuple[int, ...]

    @property
    def abstained(self) -> bool:
        return self.label is None


def noise_counts(classifier: Classifier, images: torch.Tensor, sigma: float, n: int,
                 num_classes: int, *, batch_size: int = 64,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Votes of ``classifier`` under Gaussian noise.

    Args:
        classifier: maps B×C×H×W to B×K logits (argmax is the vote).
        images: B×C×H×W inputs.
        sigma: noise standard deviation (> 0).
        n: noise samples per input.
        num_classes: K.
        batch_size: noisy copies per classifier call.
        generator: seeds the noise (CPU generator; noise is moved to the images' device).

    Returns:
        B×K int64 vote counts, each row summing to ``n``.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    b = images.shape[0]
    counts = torch.zeros(b, num_classes, dtype=torch.int64)
    per_call = max(1, batch_size // max(b, 1))  # noise draws per image per call
    with torch.no_grad():
        done = 0
        while done < n:
            m = min(per_call, n - done)
            batch = images.unsqueeze(1).expand(b, m, *images.shape[1:]).reshape(
                b * m, *images.shape[1:])  # (b m) c h w
            noise = torch.randn(batch.shape, generator=generator).to(batch)
            votes = classifier(batch + sigma * noise).argmax(dim=1).view(b, m).cpu()  # b m
            counts += torch.nn.functional.one_hot(votes, num_classes).sum(dim=1)
            done += m
    return counts


def _radius(sigma: float, p_lower: float) -> float:
    return sigma * statistics.NormalDist().inv_cdf(min(p_lower, 1 - 1e-16))


def certify(classifier: Classifier, images: torch.Tensor, sigma: float, *, n0: int = 100,
            n: int = 1000, alpha: float = 0.001, num_classes: int = 2, batch_size: int = 64,
            generator: torch.Generator | None = None) -> list[Certificate]:
    """Cohen et al. CERTIFY for each image of ``images`` (B×C×H×W).

    Selection: the top class among ``n0`` noisy votes. Estimation: ``n`` fresh
    votes; ``p_lower`` is the one-sided (1 − alpha) Clopper–Pearson lower bound
    on the top class's share. Abstain when ``p_lower < 1/2``; otherwise the
    radius is ``sigma · Φ⁻¹(p_lower)``. With probability at least ``1 − alpha``
    a non-abstaining answer is the smoothed classifier's and is constant in the
    L2 ball of that radius.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    selection = noise_counts(classifier, images, sigma, n0, num_classes,
                             batch_size=batch_size, generator=generator)
    estimation = noise_counts(classifier, images, sigma, n, num_classes,
                              batch_size=batch_size, generator=generator)
    out = []
    for sel, est in zip(selection, estimation, strict=True):
        top = int(sel.argmax())
        p_lower = one_sided_lower(int(est[top]), n, 1 - alpha)
        counts = tuple(int(c) for c in est)
        if p_lower < 0.5:
            out.append(Certificate(None, p_lower, 0.0, counts))
        else:
            out.append(Certificate(top, p_lower, _radius(sigma, p_lower), counts))
    return out


def predict(classifier: Classifier, images: torch.Tensor, sigma: float, *, n: int = 100,
            alpha: float = 0.001, num_classes: int = 2, batch_size: int = 64,
            generator: torch.Generator | None = None) -> list[int | None]:
    """Cohen et al. PREDICT: top class if a two-sided binomial test against the
    runner-up rejects at ``alpha``, else ``None`` (abstain)."""
    counts = noise_counts(classifier, images, sigma, n, num_classes,
                          batch_size=batch_size, generator=generator)
    out: list[int | None] = []
    for row in counts:
        top2 = torch.topk(row, 2 if num_classes > 1 else 1)
        n_a = int(top2.values[0])
        n_b = int(top2.values[1]) if num_classes > 1 else 0
        p_value = min(1.0, 2 * binomial_sf(n_a, n_a + n_b, 0.5))
        out.append(int(top2.indices[0]) if p_value <= alpha else None)
    return out


def certified_accuracy(certificates: list[Certificate], labels: list[int],
                       radii: list[float]) -> list[float]:
    """Share of inputs certified correct at each radius in ``radii``.

    An input counts at radius r when it does not abstain, its label is right
    and its certified radius is at least r.
    """
    if len(certificates) != len(labels):
        raise ValueError(f"{len(certificates)} certificates for {len(labels)} labels")
    if not certificates:
        raise ValueError("no certificates")
    return [sum(c.label == y and c.radius >= r for c, y in zip(certificates, labels, strict=True))
            / len(certificates) for r in radii]
