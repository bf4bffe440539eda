"""The shared seed spread (``components.seed_spread``) and the Student-t quantile it uses
(``components.stats.student_t_quantile``): pure arithmetic, checked against printed t-tables
and hand-computed intervals."""

from __future__ import annotations

import math

import pytest

from neuralmark.components.errors import InputError
from neuralmark.components.seed_spread import CONFIDENCE, spread_summary
from neuralmark.components.stats import student_t_quantile


@pytest.mark.parametrize(
    ("confidence", "dof", "expected"),
    [
        (0.95, 1, 12.7062047),
        (0.95, 2, 4.3026527),
        (0.95, 4, 2.7764451),
        (0.95, 30, 2.0422725),
        (0.99, 10, 3.1692727),
        (0.90, 3, 2.3533634),
    ],
)
def test_student_t_quantile_matches_the_t_table(confidence, dof, expected):
    assert student_t_quantile(confidence, dof) == pytest.approx(expected, rel=1e-7)


def test_student_t_quantile_refuses_what_has_no_quantile():
    for confidence, dof in ((0.95, 0), (1.0, 3), (0.0, 3)):
        with pytest.raises(ValueError, match="dof >= 1"):
            student_t_quantile(confidence, dof)


def test_spread_summary_is_the_t_interval_per_figure_and_clips_only_bounded_metrics():
    rows = [
        {"label": "deepstamp", "metric": "drop", "value": v, "seed": s}
        for s, v in zip((4, 0, 3, 1, 2), (0.05, 0.01, 0.04, 0.02, 0.03), strict=True)
    ]
    rows += [
        {"stage": "s2", "label": "c", "metric": "success_rate", "value": v, "seed": s}
        for s, v in enumerate((0.5, 0.7, 0.9))
    ]
    drop, rate = spread_summary(rows)
    assert CONFIDENCE == 0.95 and drop["stage"] == "None" and drop["n_seeds"] == 5
    assert drop["values"] == [0.01, 0.02, 0.03, 0.04, 0.05]  # in seed order
    sd = math.sqrt(0.001 / 4)  # sample SD of 0.01 … 0.05: squared deviations sum to 0.001
    assert (drop["mean"], drop["std"]) == (pytest.approx(0.03), pytest.approx(sd))
    half = 2.7764451 * sd / math.sqrt(5)
    assert drop["ci_low"] == pytest.approx(0.03 - half, rel=1e-6)
    assert rate["ci_high"] > 1  # nothing clipped unless asked
    _, clipped = spread_summary(rows, bounded=lambda metric: metric == "success_rate")
    assert clipped["ci_high"] == 1.0 and clipped["ci_low"] == pytest.approx(rate["ci_low"])
    with pytest.raises(InputError, match="a spread needs two"):
        spread_summary(rows[:1])
    with pytest.raises(InputError, match="'seed'"):
        spread_summary([{"label": "x", "metric": "y", "value": 1.0}])
