"""What a running step needs to know about its run: the project, where reports go, and how
a data-validation report is published (written, logged to MLflow and ZenML, linked).

The *project root* is the ZenML repository root of the running client (``.zen/`` lives
there; ``mlflow.db``, ``data/`` and ``reports/`` beside it), else the working directory.
Call these inside a running step (they read ZenML's step context and MLflow's active run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: where the validation report lives among the MLflow run's artifacts
REPORT_ARTIFACT_DIR = "data_validation"
REPORT_ARTIFACT = f"{REPORT_ARTIFACT_DIR}/validation.html"
#: run tag holding ``REPORT_ARTIFACT``
REPORT_TAG = "validation_report"


def project_root() -> Path:
    """Root of the project the pipeline runs in: the ZenML repository, else the cwd."""
    from zenml.client import Client

    return (Client().root or Path.cwd()).resolve()


def run_reports_dir() -> Path:
    """``<project>/reports/<pipeline run name>/`` of the running step."""
    from zenml import get_step_context

    return project_root() / "reports" / get_step_context().pipeline_run.name


def publish_validation(report: Any) -> Path:
    """Write a GX report, log it to MLflow and ZenML; raise if it failed.

    Args:
        report: a ``neuralmark.integrations.validation.DataValidationReport``.

    Returns:
        The written ``validation.html``.

    Raises:
        DataValidationError: an expectation failed (the message says where the report is).
    """
    import mlflow
    from zenml import log_metadata

    from neuralmark.integrations.validation import DataValidationError, write_report

    html = write_report(report, run_reports_dir())
    mlflow.log_artifact(str(html), REPORT_ARTIFACT_DIR)
    mlflow.log_artifact(str(html.with_name("validation.json")), REPORT_ARTIFACT_DIR)
    log_metadata({"data_validation": {"success": report.success, "failed": report.failed(),
                                      "report": str(html), **report.stats}})
    if not report.success:
        raise DataValidationError(report, f"{DataValidationError(report)}; report: {html}")
    return html


def link_report_from_run(report: Any) -> None:
    """Tag the active MLflow run with the report's artifact path and describe it.

    Sets ``validation_report`` = ``data_validation/validation.html`` and the run
    description (``mlflow.note.content``) to a short Markdown summary with the
    artifact's full URI, the outcome and, for ChestX-ray8, the ``target_kind``
    counts. Called before the artifact is logged, so a failing report is linked too.
    """
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from neuralmark.components.data.bone_suppression import TARGET_KIND

    stats = report.stats
    status = "passed" if report.success else f"FAILED ({', '.join(report.failed())})"
    lines = [f"Data validation of `{stats.get('dataset', '?')}` {status}: "
             f"{stats.get('rows', 0)} rows, per split {stats.get('rows_per_split', {})}.",
             f"Report: [{REPORT_ARTIFACT}]({mlflow.get_artifact_uri(REPORT_ARTIFACT)})"]
    kinds = stats.get("target_kind")
    if kinds:
        lines.append(f"Bone-suppressed targets per pair: {kinds}"
                     + (" — classical approximation, not real targets."
                        if TARGET_KIND in kinds else "."))
    mlflow.set_tags({REPORT_TAG: REPORT_ARTIFACT, MLFLOW_RUN_NOTE: "\n\n".join(lines),
                     "validation_success": str(report.success).lower()})
