"""How a trained content method is evaluated, and the report that comes out.

``EvaluationSettings`` says what to measure (split, attack suite, key, FPR trials, the
adversarial and certified evaluation of a detector); ``robustness_report`` runs it:
``run_suite`` over the suite on the marked images, ``calibrate_fpr`` on the clean ones and,
for a scanner, the adversarial and certified rows. The training pipeline's
``evaluate_robustness`` step and ``neuralmark evaluate`` both call it, so a shipped bundle
and a freshly trained candidate are measured the same way.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuralmark.components import plots
from neuralmark.components.adversarial_evaluation import (
    adversarial_rows,
    certified_rows,
    smoothing_sigma,
)
from neuralmark.components.attacks.registry import BENCHMARK_SUITE, Suite, canonical_name, label
from neuralmark.components.evaluation import calibrate_fpr, run_suite, summarize
from neuralmark.components.methods.base import WatermarkKey, WatermarkMethod
from neuralmark.components.report import Report


class AdversarialSettings(BaseModel):
    """Adversarial and certified evaluation of a detector (``anti_forward``'s scanner).

    Attributes:
        limit: stamped (and as many clean) held-out images attacked.
        eps: L∞ budget of APGD / Square / the adaptive attack (seed: 8/255).
        attacks: which of ``apgd`` (white box), ``square`` (black box) and
            ``apgd_eot`` (adaptive: APGD with EoT over the smoothing noise) to run.
        apgd_steps: APGD iterations.
        square_queries: Square's query budget per image.
        eot_iter: noise draws averaged per APGD gradient in ``apgd_eot``.
        smoothing_n: noise samples of the smoothed decision on attacked images.
        certify_n0: Cohen et al. selection samples.
        certify_n: Cohen et al. estimation samples.
        certify_alpha: failure probability of each certificate.
        radii: L2 radii of the certified-accuracy curve (working-size pixel space).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(8, ge=1)
    eps: float = Field(8 / 255, ge=0.0, le=1.0)
    attacks: list[Literal["apgd", "square", "apgd_eot"]] = Field(
        default_factory=lambda: ["apgd", "square", "apgd_eot"])
    apgd_steps: int = Field(10, ge=1)
    square_queries: int = Field(100, ge=1)
    eot_iter: int = Field(4, ge=1)
    smoothing_n: int = Field(100, ge=1)
    certify_n0: int = Field(32, ge=1)
    certify_n: int = Field(256, ge=1)
    certify_alpha: float = Field(1e-3, gt=0.0, lt=1.0)
    radii: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])


class EvaluationSettings(BaseModel):
    """How a trained method is evaluated.

    Attributes:
        split: manifest split the held-out images come from.
        limit: evaluate on the first ``limit`` images of the split (``None``: all).
        attacks: keep only these attacks of ``BENCHMARK_SUITE`` (``None``: all).
        fpr_keys: random keys per clean image for the calibrated false-positive rate.
        key_secret: secret of the fixed evaluation key.
        key_message: message of the evaluation key (``None``: decode-any mode).
        alpha: p-value level of detection (``None``: the method's ``detection_alpha``, or
            its own rule when it declares none).
        batch_size: images per embed / verify call.
        seed: seeds the attacks' random draws and the FPR keys.
        example_images: columns of the example grid figure.
        adversarial: adversarial + certified evaluation (detectors only; ``None``: skip).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: Literal["train", "val", "test"] = "test"
    limit: int | None = Field(8, ge=1)
    attacks: list[str] | None = None
    fpr_keys: int = Field(2000, ge=1)
    key_secret: str = "neuralmark-eval"
    key_message: int | None = Field(0, ge=0)
    alpha: float | None = Field(None, gt=0.0, lt=1.0)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    example_images: int = Field(4, ge=1)
    adversarial: AdversarialSettings | None = None

    @field_validator("attacks")
    @classmethod
    def _attacks_in_benchmark(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        known = [name for name, _ in BENCHMARK_SUITE]
        out = []
        for name in names:
            key = canonical_name(name)  # ValueError listing valid names
            if key not in known:
                raise ValueError(f"attack {name!r} is not in the benchmark suite ({known})")
            out.append(key)
        if not out:
            raise ValueError("attacks must name at least one attack (or be null for all)")
        return out

    def suite(self) -> Suite:
        """The attack grid to run: ``BENCHMARK_SUITE``, shortened to ``attacks`` if set."""
        if self.attacks is None:
            return [(name, list(strengths)) for name, strengths in BENCHMARK_SUITE]
        return [(name, list(strengths)) for name, strengths in BENCHMARK_SUITE
                if name in self.attacks]

    def labels(self) -> list[str]:
        """MLflow-safe labels of every (attack, strength) evaluated."""
        return [label(name, s) for name, strengths in self.suite() for s in strengths]

    def key(self) -> WatermarkKey:
        """The fixed evaluation key."""
        return WatermarkKey(self.key_secret, self.key_message)


def robustness_report(method: WatermarkMethod, clean: torch.Tensor, marked: torch.Tensor,
                      settings: EvaluationSettings, progress: Any = None) -> Report:
    """Run the suite on ``marked`` and calibrate the FPR on ``clean``.

    Args:
        method: a trained content method.
        clean: N×3×H×W held-out images in [0, 1].
        marked: N×3×H×W the same images signed with ``settings.key()``.
        settings: evaluation settings.
        progress: optional ``progress(done, total, desc)`` or object with ``on_progress``.

    Returns:
        ``Report(rows, summary)``; the summary is ``summarize(rows)`` plus
        ``fpr``, ``fpr_ci_low``, ``fpr_ci_high`` and ``fpr_trials`` from
        ``calibrate_fpr``; ``extra`` holds the calibration and the suite labels.
    """
    rows = run_suite(method, clean, settings.key(), settings.suite(), watermarked=marked,
                     alpha=settings.alpha, batch_size=settings.batch_size, seed=settings.seed,
                     progress=progress)
    if settings.adversarial is not None:
        rows += adversarial_report_rows(method, clean, marked, settings, progress)
    rows += method.evaluation_rows(clean, marked, settings.seed)  # what only this method has
    calibration = calibrate_fpr(method, clean, n_keys=settings.fpr_keys, alpha=settings.alpha,
                                seed=settings.seed, batch_size=settings.batch_size)
    summary = {**summarize(rows), "fpr": float(calibration["fpr"]),
               "fpr_ci_low": float(calibration["ci_low"]),
               "fpr_ci_high": float(calibration["ci_high"]),
               "fpr_trials": float(calibration["trials"])}
    return Report(rows=rows, summary=summary,
                  extra={"calibration": calibration, "labels": settings.labels(),
                         "n_images": int(clean.shape[0]), "method": method.key,
                         "evaluation": settings.model_dump(mode="json"),
                         "method_markdown": method.evaluation_markdown()})


def adversarial_report_rows(method: WatermarkMethod, clean: torch.Tensor, marked: torch.Tensor,
                            settings: EvaluationSettings, progress: Any = None) -> list[dict]:
    """APGD / Square / adaptive-attack rows and, for a smoothed scanner, certified accuracy.

    The first ``settings.adversarial.limit`` stamped images are attacked toward
    "not stamped" and as many clean ones toward "stamped" (forgery). Each
    attacked image is judged twice: by the scanner's (smoothed) classifier and
    by ``verify``, the deployed rule (metrics ending in ``_verify``).
    """
    adv = settings.adversarial
    if adv is None:
        return []
    n = adv.limit
    rows = adversarial_rows(method, marked[:n], clean[:n], eps=adv.eps, attacks=adv.attacks,
                            steps=adv.apgd_steps, queries=adv.square_queries,
                            eot_iter=adv.eot_iter, seed=settings.seed,
                            smoothing_n=adv.smoothing_n, smoothing_n0=adv.certify_n0,
                            certify_alpha=adv.certify_alpha, batch_size=settings.batch_size,
                            also_verify=True, key=settings.key(), progress=progress)
    if smoothing_sigma(method) > 0:  # the baseline keeps a sigma in its config but never smooths
        rows += certified_rows(method, marked[:n], clean[:n], adv.radii, n0=adv.certify_n0,
                               n=adv.certify_n, certify_alpha=adv.certify_alpha,
                               seed=settings.seed,
                               batch_size=settings.batch_size)
    return rows


def report_figures(report: Report, clean: torch.Tensor, marked: torch.Tensor,
                   n_examples: int = 4, method: WatermarkMethod | None = None) -> dict[str, Any]:
    """Robustness curves (when the suite has numeric strengths), the example grid and, given
    the ``method``, its own figures (``WatermarkMethod.evaluation_figures``)."""
    figures: dict[str, Any] = {"example_grid": plots.example_grid(clean, marked, n=n_examples)}
    if method is not None:
        figures.update(method.evaluation_figures(clean, marked))
    optional = {"robustness_curves": plots.robustness_curves,
                "adversarial_attacks": plots.attack_success_plot,
                "certified_accuracy": plots.certified_accuracy_plot}
    for name, draw in optional.items():
        try:
            figures[name] = draw(report.rows)
        except ValueError:  # nothing of that kind in this report (shortened suite, no scanner)
            continue
    return figures
