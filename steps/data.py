"""Steps that build, version and validate the dataset a training run reads.

``build_dataset`` builds the offline sample dataset (``components.data.sample``)
and optionally versions it with DVC; ``validate_dataset`` runs the Great
Expectations suite on its manifest, always writes the report to
``<project>/reports/<run>/`` (and logs it to MLflow), and raises
``DataValidationError`` on failure, so the pipeline stops before training.

The *project root* is the ZenML repository root of the running client
(``.zen/`` lives there; ``mlflow.db``, ``data/`` and ``reports/`` beside it),
else the working directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import mlflow
from zenml import get_step_context, log_metadata, step

from pipelines.settings import DataSettings
from pipelines.stack import TRACKER_NAME
from steps.tracking import log_config

logger = logging.getLogger(__name__)


def project_root() -> Path:
    """Root of the project the pipeline runs in: the ZenML repository, else the cwd."""
    from zenml.client import Client

    return (Client().root or Path.cwd()).resolve()


def run_reports_dir() -> Path:
    """``<project>/reports/<pipeline run name>/`` of the running step."""
    return project_root() / "reports" / get_step_context().pipeline_run.name


def _version(settings: DataSettings, root: Path) -> str | None:
    """``dvc add`` (+ push) the DVC target holding ``root``; ``None`` if it cannot."""
    from steps.versioning import version_data

    project = project_root()
    target = (project / settings.dvc_target).resolve()
    if not root.resolve().is_relative_to(target):
        logger.warning("data root %s is outside the DVC target %s; not versioned", root, target)
        return None
    return version_data(project, settings.dvc_target, push=settings.dvc_push)


@step(experiment_tracker=TRACKER_NAME)
def build_dataset(data: dict[str, Any]) -> Annotated[str, "manifest"]:
    """Build (or reuse) the sample dataset; version it with DVC if asked.

    Args:
        data: ``DataSettings`` fields.

    Returns:
        Absolute path of ``manifest.csv``.
    """
    from components.data.sample import build_sample_dataset

    settings = DataSettings(**data)
    root = settings.resolved_root(project_root())
    manifest = build_sample_dataset(root, settings.sample_config())
    md5 = _version(settings, root) if settings.version_with_dvc else None
    log_config(settings.model_dump(mode="json"), prefix="data.")
    mlflow.set_tag("data.dvc_md5", md5 or "not versioned")
    log_metadata({"manifest": str(manifest), "dvc_md5": md5 or "not versioned"})
    return str(manifest)


@step(experiment_tracker=TRACKER_NAME)
def validate_dataset(manifest: str, min_size: int = 64) -> Annotated[str, "validated_manifest"]:
    """Validate the manifest with Great Expectations; stop the run if it fails.

    The report (``validation.html`` + ``validation.json``) is written to
    ``<project>/reports/<run>/`` and logged to MLflow under ``data_validation/``
    whether or not the data passed.

    Args:
        manifest: the ``manifest.csv`` to check.
        min_size: smallest accepted image side (the method's ``min_size``).

    Returns:
        ``manifest`` again, so that training depends on validation.

    Raises:
        DataValidationError: an expectation failed (the message names them and
            where the report is).
    """
    from steps.validation import validate_manifest

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO floods step logs
    publish_validation(validate_manifest(manifest, min_size=min_size))
    return manifest


def publish_validation(report: Any) -> Path:
    """Write a GX report, log it to MLflow and ZenML; raise if it failed.

    Args:
        report: a ``steps.validation.DataValidationReport``.

    Returns:
        The written ``validation.html``.

    Raises:
        DataValidationError: an expectation failed (the message says where the report is).
    """
    from steps.validation import DataValidationError, write_report

    html = write_report(report, run_reports_dir())
    mlflow.log_artifact(str(html), "data_validation")
    mlflow.log_artifact(str(html.with_name("validation.json")), "data_validation")
    log_metadata({"data_validation": {"success": report.success, "failed": report.failed(),
                                      "report": str(html), **report.stats}})
    if not report.success:
        raise DataValidationError(report, f"{DataValidationError(report)}; report: {html}")
    return html
