"""The spread of a figure over seeds: mean, SD and Student-t interval, never one lucky run.

Shared by the methods that repeat a measurement over seeds (``output_mark``'s surrogate
matrix over training seeds, ``visible_gan``'s accuracy and removal figures and its
architecture table over F′ seeds): they write tidy rows with a ``seed`` and
:func:`spread_summary` reduces them per (stage, label, metric).

The interval is the :data:`CONFIDENCE` Student-t interval of the mean,
``mean ± t(1 − α/2, n − 1) · SD / √n`` with the sample SD: it assumes the per-seed values
are independent draws of one figure, which is what repeating a run with another seed makes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from neuralmark.components.errors import InputError
from neuralmark.components.stats import student_t_quantile

#: two-sided coverage of :func:`spread_summary`'s interval
CONFIDENCE = 0.95


def spread_summary(
    rows: Sequence[Mapping[str, Any]], bounded: Callable[[str], bool] | None = None
) -> list[dict[str, Any]]:
    """Mean ± Student-t interval over seeds, per (stage, label, metric).

    Args:
        rows: tidy rows with ``seed``, ``label``, ``metric``, ``value`` and optionally
            ``stage`` (a seed seen twice for one figure keeps its last value).
        bounded: ``bounded(metric)`` true for a metric that lives in [0, 1] (a rate, an
            SSIM): its interval is clipped to [0, 1]. None: nothing is clipped.

    Returns:
        One dict per (stage, label, metric), in first-seen order: ``stage`` (``"None"``
        for rows without one), ``label``, ``metric``, ``n_seeds``, ``mean``, ``std``
        (sample), ``ci_low``, ``ci_high`` (the :data:`CONFIDENCE` t-interval of the mean),
        ``min``, ``max``, ``values`` (per seed, in seed order).

    Raises:
        InputError: a row without ``seed``, or a figure with fewer than two seeds.
    """
    groups: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        if "seed" not in r:
            raise InputError("spread_summary needs rows with a 'seed' (one run per seed)")
        groups.setdefault((str(r.get("stage")), str(r["label"]), str(r["metric"])), {})[
            int(r["seed"])
        ] = float(r["value"])
    out = []
    for (stage, label, metric), by_seed in groups.items():
        values = [by_seed[s] for s in sorted(by_seed)]
        n = len(values)
        if n < 2:
            raise InputError(f"{stage}/{label}/{metric}: {n} seed(s); a spread needs two")
        mean, std = statistics.fmean(values), statistics.stdev(values)
        half = student_t_quantile(CONFIDENCE, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
        if bounded is not None and bounded(metric):
            low, high = max(0.0, low), min(1.0, high)
        out.append(
            {
                "stage": stage,
                "label": label,
                "metric": metric,
                "n_seeds": n,
                "mean": mean,
                "std": std,
                "ci_low": low,
                "ci_high": high,
                "min": min(values),
                "max": max(values),
                "values": values,
            }
        )
    return out


__all__ = ["CONFIDENCE", "spread_summary"]
