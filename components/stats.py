"""Exact tail probabilities and confidence intervals used by detection and seed spreads.

Own code: torch.distributions has no binomial survival function in log space
and scipy is not a dependency of ``components``; these are a few lines of exact
arithmetic (``math.comb`` on integers, no approximation).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact.

    Args:
        k: threshold (number of successes), any integer.
        n: number of trials (n >= 0).
        p: success probability.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.5:
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exact."""
    return 1.0 - binomial_sf(k + 1, n, p) if k < n else 1.0


def _beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b) by bisection on the regularized incomplete beta."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) via Lentz's continued fraction."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(0, 400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + num / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return math.exp(ln_front) * (f - 1.0) / a


def student_t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t quantile: the ``t`` with P(|T| <= t) = ``confidence``, ``dof``
    degrees of freedom (``t(0.975, 2)`` = 4.3027 for ``confidence`` 0.95).

    From P(|T| > t) = I_{dof/(dof + t²)}(dof/2, 1/2): ``x`` = the Beta(dof/2, 1/2) quantile
    at ``1 − confidence``, ``t = sqrt(dof (1 − x) / x)``.

    Raises:
        ValueError: ``confidence`` not in (0, 1) or ``dof`` < 1.
    """
    if not 0 < confidence < 1 or dof < 1:
        raise ValueError(f"student_t_quantile needs 0 < confidence < 1 and dof >= 1, got "
                         f"{confidence}, {dof}")
    x = _beta_ppf(1 - confidence, dof / 2, 0.5)
    return math.sqrt(dof * (1 - x) / x)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper–Pearson interval for a binomial proportion."""
    if trials <= 0:
        raise ValueError("clopper_pearson needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    alpha = 1 - confidence
    lo = 0.0 if successes == 0 else _beta_ppf(alpha / 2, successes, trials - successes + 1)
    hi = 1.0 if successes == trials else _beta_ppf(1 - alpha / 2, successes + 1, trials - successes)
    return lo, hi


def one_sided_lower(successes: int, trials: int, confidence: float) -> float:
    """One-sided Clopper–Pearson lower bound (as used by Cohen et al. certification)."""
    if successes == 0:
        return 0.0
    return _beta_ppf(1 - confidence, successes, trials - successes + 1)


def empirical_p_value(exceed: int, n: int) -> float:
    """``(1 + exceed) / (n + 1)``: the p-value of a score against ``n`` null scores.

    ``exceed`` null scores were at least as high as the observed one. Valid (never below
    the true p-value) when the observed score and the null ones are exchangeable under the
    null, e.g. clean images drawn like the calibration ones; its floor is ``1 / (n + 1)``.

    Raises:
        ValueError: ``n`` or ``exceed`` negative, or ``exceed > n``.
    """
    if n < 0 or not 0 <= exceed <= n:
        raise ValueError(f"need 0 <= exceed <= n, got exceed={exceed}, n={n}")
    return (1 + exceed) / (n + 1)


def clustered_rate(flags: Sequence[bool], clusters: Sequence[Hashable],
                   confidence: float = 0.95) -> dict[str, float]:
    """Rate of flagged clusters with its Clopper–Pearson interval, counting each cluster once.

    Scores of one cluster (views, crops, flips of one photo) are correlated, so counting them
    as independent trials overstates what a null sample knows. Here a cluster counts as one
    trial, flagged if any of its members is: ``k`` of ``n`` clusters. Its interval is a
    valid one for the share of clusters with any flagged member, which is at least the
    per-member rate (the mean over clusters of their flagged share), so its upper bound is
    also an upper bound on the per-member false-positive rate, given clusters drawn
    independently like the traffic's. With ``k = 0`` the one-sided 95% bound is
    ``1 − 0.05^(1/n) ≈ 3/n`` (the two-sided 95% interval's upper end is about ``3.7/n``).

    Args:
        flags: one bool per member.
        clusters: one cluster label per member (same length).
        confidence: two-sided level of the interval.

    Returns:
        ``{"flagged": k, "clusters": n, "rate": k/n, "lower": …, "upper": …,
        "upper_one_sided": …}`` (the last at ``confidence``, one-sided).

    Raises:
        ValueError: lengths differ or there is no member.
    """
    if len(flags) != len(clusters):
        raise ValueError(f"clustered_rate: {len(flags)} flags for {len(clusters)} cluster labels")
    if not flags:
        raise ValueError("clustered_rate needs at least one member")
    hit: dict[Hashable, bool] = {}
    for flag, cluster in zip(flags, clusters, strict=True):
        hit[cluster] = hit.get(cluster, False) or bool(flag)
    k, n = sum(hit.values()), len(hit)
    lo, hi = clopper_pearson(k, n, confidence)
    one_sided = 1.0 if k == n else _beta_ppf(confidence, k + 1, n - k)
    return {"flagged": k, "clusters": n, "rate": k / n, "lower": lo, "upper": hi,
            "upper_one_sided": one_sided}


def pooled_flags(rows: Sequence[Mapping[str, Any]], count: str, n: str = "n_outputs"
                 ) -> dict[str, Any]:
    """The flag count ``count`` pooled over ``rows`` (e.g. one per attacker seed) out of their
    ``n`` outputs: ``{"k", "n", "rate", "ci95"}``, the interval exact (Clopper–Pearson,
    two-sided 95%). It treats outputs as independent trials; outputs of one surrogate
    share its weights, so the interval is a floor on the uncertainty, not a bound."""
    k, total = sum(int(r[count]) for r in rows), sum(int(r[n]) for r in rows)
    lo, hi = clopper_pearson(k, total)
    return {"k": k, "n": total, "rate": k / total, "ci95": [lo, hi]}
