"""The robustness gate: a pure function from metrics to a promotion decision.

``decide(candidate, champion, policy)`` reads flat metric dicts as produced by
``evaluation.summarize`` plus the calibrated false-positive rate from
``evaluation.calibrate_fpr``. Expected candidate keys:

- ``psnr``: mean PSNR of marked vs clean (dB).
- ``bit_accuracy/<label>`` for every label in ``policy.min_bit_accuracy``, or
  ``bit_accuracy_mean_attacked`` for the label ``mean_attacked``.
- ``detection_rate/<label>`` (or ``detection_rate_mean_attacked``) for every
  label in ``policy.min_detection_rate``.
- ``fpr``: calibrated FPR on clean images (``calibrate_fpr(...)["fpr"]``).
- ``policy.primary_metric`` (default ``bit_accuracy_mean_attacked``).
- every key of ``policy.min_metric`` / ``policy.max_metric`` (any summary metric, e.g. a
  method's own ``accuracy_drop/deepstamp``).

A missing or NaN required metric refuses promotion with a reason naming it.

**Removal policy for model methods** (``policy.max_removal_psnr_drop`` = δ, off by default):
an attacker who ruins the model has not stolen a useful one. With δ set, a failing floor on
``detected/<label>`` (the mark was not verified after that attack) counts as a removal only
when the attacked host kept its task quality, ``psnr/<label>`` ≥ ``psnr`` − δ (the marked
host's task PSNR); otherwise the check passes and a note records the raw failure and the
quality the attack cost. It applies to every method whose summary reports the shared model
attacks so (``detected/<label>`` with the attacked host's task ``psnr/<label>``); a missing
``psnr/<label>`` refuses promotion, so the policy never excuses an attack it cannot judge.
Steps only carry the answer to the MLflow registry and the ZenML Model
Control Plane.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MEAN_ATTACKED = "mean_attacked"
FPR_KEY = "fpr"
PSNR_KEY = "psnr"


class GatePolicy(BaseModel):
    """Floors and ceilings a candidate must meet to be promoted.

    Attributes:
        min_psnr: lowest acceptable ``psnr`` (dB).
        min_bit_accuracy: attack label → lowest ``bit_accuracy/<label>``; the
            label ``mean_attacked`` means ``bit_accuracy_mean_attacked``.
        min_detection_rate: same for ``detection_rate``.
        max_fpr: highest acceptable calibrated ``fpr``.
        max_regression: how much worse than the champion the candidate may be
            on ``primary_metric``.
        primary_metric: metric compared with the champion (higher is better,
            except FPR-like metrics).
        min_metric: any summary metric → its floor (e.g. ``contrast/deepstamp``: a visible
            mark stays visible).
        max_metric: any summary metric → its ceiling (e.g. ``accuracy_drop/deepstamp``,
            ``removal_gain/deepstamp``).
        max_removal_psnr_drop: δ (dB) of the removal policy (module docstring): a failed
            ``detected/<label>`` floor counts only if ``psnr/<label>`` ≥ ``psnr`` − δ;
            ``None`` counts every failure (the raw rule).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_psnr: float
    min_bit_accuracy: dict[str, float]
    min_detection_rate: dict[str, float] = Field(default_factory=dict)
    max_fpr: float = Field(ge=0.0, le=1.0)
    max_regression: float = Field(default=0.0, ge=0.0)
    primary_metric: str = "bit_accuracy_mean_attacked"
    min_metric: dict[str, float] = Field(default_factory=dict)
    max_metric: dict[str, float] = Field(default_factory=dict)
    max_removal_psnr_drop: float | None = Field(default=None, ge=0.0)

    @field_validator("min_bit_accuracy", "min_detection_rate")
    @classmethod
    def _rates_in_unit_interval(cls, floors: dict[str, float]) -> dict[str, float]:
        for name, floor in floors.items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"floor for {name!r} must lie in [0, 1], got {floor}")
        return floors


@dataclass
class Decision:
    """The gate's answer.

    Attributes:
        promote: True when every check passed.
        reasons: one line per failed check (metric, value, floor); empty on promotion.
        notes: non-blocking remarks (e.g. no champion to compare with).
    """

    promote: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_key(kind: str, attack_label: str) -> str:
    """Candidate key of a floor: ``bit_accuracy/jpeg_50`` or ``bit_accuracy_mean_attacked``."""
    return f"{kind}_{MEAN_ATTACKED}" if attack_label == MEAN_ATTACKED else f"{kind}/{attack_label}"


def higher_is_better(metric: str) -> bool:
    """False for false-positive, unreadable and p-value metrics; True otherwise."""
    name = metric.split("/", 1)[0]
    return name not in {FPR_KEY, "false_positive_rate", "unreadable_rate", "p_value_median"}


def _read(metrics: dict[str, float], key: str) -> tuple[float | None, str | None]:
    """Value of ``key`` as a float, or ``(None, problem)``."""
    if key not in metrics or metrics[key] is None:
        return None, "is missing"
    try:
        value = float(metrics[key])
    except (TypeError, ValueError):
        return None, f"is not a number ({metrics[key]!r})"
    if math.isnan(value):
        return None, "is NaN"
    return value, None


DETECTED_PREFIX = "detected/"


def _ruined_host(candidate: dict[str, float], key: str, max_drop: float | None) -> str | None:
    """The removal policy on one failed ``detected/<label>`` floor.

    Returns:
        ``None`` when the policy does not apply (off, or not a ``detected/`` key);
        ``"not a removal: …"`` when the attacked host lost more than ``max_drop`` dB of task
        PSNR (the failure does not count); otherwise why it counts (quality kept, or the
        PSNR needed to judge it is missing).
    """
    if max_drop is None or not key.startswith(DETECTED_PREFIX):
        return None
    label = key[len(DETECTED_PREFIX):]
    attacked, problem = _read(candidate, f"psnr/{label}")
    marked, problem_marked = _read(candidate, PSNR_KEY)
    if problem or problem_marked:
        return (f"the removal policy needs psnr/{label} and {PSNR_KEY} "
                f"({problem or problem_marked})")
    drop = marked - attacked
    if drop > max_drop:
        return (f"not a removal: the attack ruined the host (task PSNR {attacked:.4g} dB, "
                f"{drop:.3g} dB below the marked host's {marked:.4g}; policy δ {max_drop:g} dB)")
    return (f"a removal that kept the host's quality (task PSNR {attacked:.4g} dB, "
            f"{drop:.3g} dB below the marked host's; policy δ {max_drop:g} dB)")


def decide(candidate: dict[str, float], champion: dict[str, float] | None,
           policy: GatePolicy) -> Decision:
    """Decide whether ``candidate`` replaces ``champion``.

    Args:
        candidate: flat metrics of the candidate (keys in the module docstring).
        champion: the current champion's metrics, or ``None`` for the first model.
        policy: the floors.

    Returns:
        ``Decision(promote, reasons, notes)``; ``promote`` only if no check failed.
    """
    reasons: list[str] = []
    notes: list[str] = []

    checks: list[tuple[str, float, bool]] = [(PSNR_KEY, policy.min_psnr, True)]
    checks += [(metric_key("bit_accuracy", lab), floor, True)
               for lab, floor in policy.min_bit_accuracy.items()]
    checks += [(metric_key("detection_rate", lab), floor, True)
               for lab, floor in policy.min_detection_rate.items()]
    checks.append((FPR_KEY, policy.max_fpr, False))
    checks += [(key, floor, True) for key, floor in policy.min_metric.items()]
    checks += [(key, ceiling, False) for key, ceiling in policy.max_metric.items()]

    for key, bound, is_floor in checks:
        value, problem = _read(candidate, key)
        limit = f"floor {bound:g}" if is_floor else f"ceiling {bound:g}"
        if problem:
            reasons.append(f"{key} {problem} (required, {limit})")
        elif is_floor and value < bound:
            ruined = _ruined_host(candidate, key, policy.max_removal_psnr_drop)
            if ruined is None:
                reasons.append(f"{key} = {value:.4g} is below the {limit}")
            elif ruined.startswith("not a removal"):
                notes.append(f"{key} = {value:.4g} is below the {limit}, {ruined}")
            else:
                reasons.append(f"{key} = {value:.4g} is below the {limit}; {ruined}")
        elif not is_floor and value > bound:
            reasons.append(f"{key} = {value:.4g} is above the {limit}")

    primary = policy.primary_metric
    cand_value, problem = _read(candidate, primary)
    if problem:
        if not any(r.startswith(f"{primary} ") for r in reasons):
            champ_value, _ = _read(champion or {}, primary)
            bound = ("no champion to compare" if champ_value is None
                     else f"champion {champ_value:.4g}, max regression {policy.max_regression:g}")
            reasons.append(f"{primary} {problem} (required: primary metric; {bound})")
    elif champion is None:
        notes.append(f"no champion: first candidate, {primary} = {cand_value:.4g} not compared")
    else:
        champ_value, champ_problem = _read(champion, primary)
        if champ_problem:
            notes.append(f"champion's {primary} {champ_problem}: regression check skipped")
        elif higher_is_better(primary):
            floor = champ_value - policy.max_regression
            if cand_value < floor:
                reasons.append(
                    f"{primary} = {cand_value:.4g} regresses vs champion {champ_value:.4g} "
                    f"by more than {policy.max_regression:g} (floor {floor:.4g})"
                )
        else:
            ceiling = champ_value + policy.max_regression
            if cand_value > ceiling:
                reasons.append(
                    f"{primary} = {cand_value:.4g} regresses vs champion {champ_value:.4g} "
                    f"by more than {policy.max_regression:g} (ceiling {ceiling:.4g})"
                )
    return Decision(promote=not reasons, reasons=reasons, notes=notes)
