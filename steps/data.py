"""Steps that build, version and validate the dataset a training run reads.

``build_dataset`` builds the offline sample dataset (``neuralmark.components.data.sample``),
the labelled procedural classes, or a train/val/test view of a prepared dataset
(``neuralmark.components.data.labelled``), and optionally versions it with DVC;
``validate_dataset`` runs the Great Expectations suite on its manifest (the prepared-data
suite, with the recipe's expectations, for labelled manifests), always writes the report to
``<project>/reports/<run>/`` (and logs it to MLflow), and raises
``DataValidationError`` on failure, so the pipeline stops before training.

The project root and the report folder come from ``neuralmark.integrations.run_context``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import mlflow
from zenml import log_metadata, step

from neuralmark.integrations.run_context import project_root, publish_validation
from neuralmark.integrations.tracking import log_config
from neuralmark.runtime.settings import DataSettings
from neuralmark.runtime.stack import TRACKER_NAME


@step(experiment_tracker=TRACKER_NAME)
def build_dataset(data: dict[str, Any]) -> Annotated[str, "manifest"]:
    """Build (or reuse) the run's dataset (``DataSettings.build``); version it with DVC if asked.

    Args:
        data: ``DataSettings`` fields (``dataset``: sample, procedural_classes or prepared).

    Returns:
        Absolute path of ``manifest.csv``.
    """
    settings = DataSettings(**data)
    manifest = settings.build(project_root())
    md5 = None
    if settings.version_with_dvc:
        from neuralmark.integrations.versioning import version_dataset

        md5 = version_dataset(project_root(), settings.dvc_target, manifest.parent,
                              push=settings.dvc_push)
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
    from neuralmark.integrations.validation import validate_training_manifest

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO floods step logs
    publish_validation(validate_training_manifest(manifest, min_size=min_size))
    return manifest
