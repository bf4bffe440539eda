"""Evaluation steps: sign the held-out split, then attack, verify and calibrate.

``robustness_report`` is the plain function behind ``evaluate_robustness``;
``pipelines.evaluation.run_evaluation`` calls it too, so a shipped bundle and a
freshly trained candidate are measured the same way.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from zenml import step

import steps.materializers  # noqa: F401  (registers tensor, method and report materializers)
from components import plots
from components.adversarial_evaluation import adversarial_rows, certified_rows, smoothing_sigma
from components.data.manifest import load_split
from components.evaluation import calibrate_fpr, embed_all, rows_to_csv, run_suite, summarize
from components.methods.base import WatermarkMethod
from components.report import Report
from pipelines.settings import EvaluationSettings
from pipelines.stack import TRACKER_NAME
from steps.data import run_reports_dir
from steps.tracking import log_config, log_report


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
    calibration = calibrate_fpr(method, clean, n_keys=settings.fpr_keys, alpha=settings.alpha,
                                seed=settings.seed, batch_size=settings.batch_size)
    summary = {**summarize(rows), "fpr": float(calibration["fpr"]),
               "fpr_ci_low": float(calibration["ci_low"]),
               "fpr_ci_high": float(calibration["ci_high"]),
               "fpr_trials": float(calibration["trials"])}
    return Report(rows=rows, summary=summary,
                  extra={"calibration": calibration, "labels": settings.labels(),
                         "n_images": int(clean.shape[0]), "method": method.key,
                         "evaluation": settings.model_dump(mode="json")})


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
                            alpha=adv.certify_alpha, batch_size=settings.batch_size,
                            also_verify=True, key=settings.key(), progress=progress)
    if smoothing_sigma(method) > 0:  # the baseline keeps a sigma in its config but never smooths
        rows += certified_rows(method, marked[:n], clean[:n], adv.radii, n0=adv.certify_n0,
                               n=adv.certify_n, alpha=adv.certify_alpha, seed=settings.seed,
                               batch_size=settings.batch_size)
    return rows


def report_figures(report: Report, clean: torch.Tensor, marked: torch.Tensor,
                   n_examples: int = 4) -> dict[str, Any]:
    """Robustness curves (when the suite has numeric strengths) and the example grid."""
    figures: dict[str, Any] = {"example_grid": plots.example_grid(clean, marked, n=n_examples)}
    optional = {"robustness_curves": plots.robustness_curves,
                "adversarial_attacks": plots.attack_success_plot,
                "certified_accuracy": plots.certified_accuracy_plot}
    for name, draw in optional.items():
        try:
            figures[name] = draw(report.rows)
        except ValueError:  # nothing of that kind in this report (shortened suite, no scanner)
            continue
    return figures


@step
def sign_heldout(trained: WatermarkMethod, manifest: str, evaluation: dict[str, Any]) -> tuple[
        Annotated[torch.Tensor, "clean"], Annotated[torch.Tensor, "marked"]]:
    """Sign the held-out split with the fixed evaluation key.

    Args:
        trained: the trained method.
        manifest: validated ``manifest.csv``.
        evaluation: ``EvaluationSettings`` fields.

    Returns:
        ``(clean, marked)``, both N×3×H×W in [0, 1] at the dataset's resolution.
    """
    settings = EvaluationSettings(**evaluation)
    clean = load_split(manifest, settings.split, limit=settings.limit)
    marked = embed_all(trained, clean, settings.key(), batch_size=settings.batch_size)
    return clean, marked


@step(experiment_tracker=TRACKER_NAME)
def evaluate_robustness(trained: WatermarkMethod, clean: torch.Tensor, marked: torch.Tensor,
                        evaluation: dict[str, Any]) -> Annotated[Report, "report"]:
    """Attack, verify and calibrate; log the report and its figures to MLflow.

    Args:
        trained: the trained method.
        clean: N×3×H×W held-out images.
        marked: N×3×H×W signed held-out images.
        evaluation: ``EvaluationSettings`` fields.

    Returns:
        The report (summary metrics also logged as MLflow metrics; rows, JSON,
        Markdown and figures under ``report/``; the tidy table also written to
        ``<project>/reports/<run>/robustness.csv``).
    """
    settings = EvaluationSettings(**evaluation)
    report = robustness_report(trained, clean, marked, settings)
    rows_to_csv(report.rows, run_reports_dir() / "robustness.csv")
    log_config(settings.model_dump(mode="json"), prefix="evaluation.")
    log_report(report, figures=report_figures(report, clean, marked, settings.example_images))
    return report
