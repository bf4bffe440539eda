"""Evaluation steps: sign the held-out split, then attack, verify and calibrate.

``evaluate_robustness`` wraps ``neuralmark.components.robustness.robustness_report``, which
``neuralmark.pipelines.evaluation.run_evaluation`` calls too, so a shipped bundle and a
freshly trained candidate are measured the same way.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from zenml import step

import neuralmark.integrations.materializers  # noqa: F401  (registers the materializers)
from neuralmark.components.data.manifest import load_split
from neuralmark.components.evaluation import embed_all, rows_to_csv
from neuralmark.components.files import atomic_write_text
from neuralmark.components.methods.base import WatermarkMethod
from neuralmark.components.report import Report
from neuralmark.components.robustness import EvaluationSettings, report_figures, robustness_report
from neuralmark.integrations.run_context import run_reports_dir
from neuralmark.integrations.tracking import log_config, log_report
from neuralmark.runtime.stack import TRACKER_NAME


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
        Markdown and figures under ``report/``; the tidy table and the Markdown also
        written to ``<project>/reports/<run>/robustness.csv`` and ``report.md``).
    """
    settings = EvaluationSettings(**evaluation)
    report = robustness_report(trained, clean, marked, settings)
    rows_to_csv(report.rows, run_reports_dir() / "robustness.csv")
    atomic_write_text(run_reports_dir() / "report.md", report.to_markdown())
    log_config(settings.model_dump(mode="json"), prefix="evaluation.")
    log_report(report, figures=report_figures(report, clean, marked, settings.example_images,
                                                    method=trained))
    return report
