"""Steps of the data-preparation pipeline: prepare → validate → version.

``prepare`` takes the source fingerprint (``source_fingerprint``) as an input,
so ZenML's step cache hits exactly when the source listing and the config are
unchanged. ``validate`` runs the prepared-dataset GX suite, writes the HTML
report to ``<project>/reports/<run>/`` (and MLflow), returns the HTML as an
artifact and raises ``DataValidationError`` on failure, so nothing downstream
runs. ``version`` is ``dvc add`` (+ push) of the DVC target.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from pipelines.stack import TRACKER_NAME
from steps.data import project_root, publish_validation

logger = logging.getLogger(__name__)

#: labels of the recipes that have them (inclusive range)
LABEL_RANGES = {"cifar10": (0, 9)}


@step
def prepare(dataset: str, source: str, out: str, config: dict[str, Any],
            fingerprint: str) -> Annotated[dict[str, Any], "prepare_report"]:
    """Prepare ``dataset`` from ``source`` into ``out/<dataset>/``.

    Args:
        dataset: recipe name.
        source: the publisher's archive or folder.
        out: output root (absolute).
        config: ``PrepareConfig`` fields.
        fingerprint: ``source_fingerprint(dataset, source, config)``; only here
            so the cache key changes when the source does.

    Returns:
        ``PrepareReport.to_dict()``.
    """
    from components.data.datasets import PrepareConfig
    from components.data.prepare import prepare_dataset

    report = prepare_dataset(dataset, source, out, PrepareConfig(**config))
    if report.fingerprint != fingerprint:
        logger.warning("source changed while the pipeline was compiled (%s != %s)",
                       report.fingerprint, fingerprint)
    log_metadata({"prepare": {k: v for k, v in report.to_dict().items()
                              if k != "quarantined"},
                  "quarantined": len(report.quarantined)})
    return report.to_dict()


@step(experiment_tracker=TRACKER_NAME)
def validate(report: dict[str, Any], size: int | None = None) -> Annotated[str, "validation_html"]:
    """Run the prepared-dataset GX suite; stop the pipeline if it fails.

    Args:
        report: ``prepare``'s output (``dataset``, ``manifest``).
        size: expected image side, or ``None``.

    Returns:
        The HTML report (also written to ``<project>/reports/<run>/validation.html``).

    Raises:
        DataValidationError: an expectation failed (the message says where the report is).
    """
    from components.data.datasets import get_recipe
    from steps.validation import validate_prepared

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    dataset = report["dataset"]
    result = validate_prepared(report["manifest"], get_recipe(dataset).domains,
                               labels_range=LABEL_RANGES.get(dataset), size=size)
    publish_validation(result)
    return result.html


@step
def version(report: dict[str, Any], validation_html: str, dvc_target: str = "data",
            push: bool = True) -> Annotated[str, "dvc_md5"]:
    """``dvc add`` (+ push) ``dvc_target`` once the data passed validation.

    Args:
        report: ``prepare``'s output (its root must lie inside ``dvc_target``).
        validation_html: ``validate``'s output (orders this step after it).
        dvc_target: DVC-tracked folder, relative to the project root.
        push: also push to the default remote.

    Returns:
        The md5 DVC recorded, or ``"not versioned"``.
    """
    from steps.versioning import version_data

    project = project_root()
    if not Path(report["root"]).resolve().is_relative_to((project / dvc_target).resolve()):
        logger.warning("%s is outside the DVC target %s; not versioned", report["root"],
                       dvc_target)
        return "not versioned"
    md5 = version_data(project, dvc_target, push=push)
    log_metadata({"dvc_md5": md5 or "not versioned"})
    return md5 or "not versioned"
