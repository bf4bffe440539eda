"""Steps of the data-preparation pipeline: prepare → validate → version.

``prepare`` takes the source fingerprint (``source_fingerprint``) as an input,
so ZenML's step cache hits exactly when the source listing and the config are
unchanged. ``validate`` runs the prepared-dataset GX suite with the facts the
recipe declares (``report["expectations"]``: pairs, size, modes, label range,
``target_kind``), writes the HTML report to ``<project>/reports/<run>/``, logs
it to the MLflow run under ``data_validation/`` and links it from the run (tag
``validation_report`` and the run description), returns it as a ZenML
``HTMLString`` artifact (rendered in the dashboard) and raises
``DataValidationError`` on failure, so nothing downstream runs. ``version`` is
``dvc add`` (+ push) of the DVC target.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.types import HTMLString

from neuralmark.integrations.run_context import (
    link_report_from_run,
    project_root,
    publish_validation,
)
from neuralmark.integrations.tracking import in_process_progress
from neuralmark.runtime.stack import TRACKER_NAME

logger = logging.getLogger(__name__)

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
    from neuralmark.components.data.datasets import PrepareConfig
    from neuralmark.components.data.prepare import prepare_dataset

    report = prepare_dataset(dataset, source, out, PrepareConfig(**config),
                             progress=lambda done, total: in_process_progress(
                                 done, total, f"preparing {dataset}"))
    if report.fingerprint != fingerprint:
        logger.warning("source changed while the pipeline was compiled (%s != %s)",
                       report.fingerprint, fingerprint)
    log_metadata({"prepare": {k: v for k, v in report.to_dict().items()
                              if k != "quarantined"},
                  "quarantined": len(report.quarantined)})
    return report.to_dict()


@step(experiment_tracker=TRACKER_NAME)
def validate(report: dict[str, Any]) -> Annotated[HTMLString, "validation_html"]:
    """Run the prepared-dataset GX suite; stop the pipeline if it fails.

    Args:
        report: ``prepare``'s output (``manifest`` and the recipe's ``expectations``).

    Returns:
        The HTML report (also in ``<project>/reports/<run>/validation.html`` and
        the MLflow run's ``data_validation/``, linked by the tag ``validation_report``).

    Raises:
        DataValidationError: an expectation failed (the message says where the report is).
    """
    from neuralmark.integrations.validation import validate_prepared

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    result = validate_prepared(report["manifest"], report["expectations"])
    link_report_from_run(result)
    publish_validation(result)
    return HTMLString(result.html)


@step
def version(report: dict[str, Any], validation_html: HTMLString, dvc_target: str = "data",
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
    from neuralmark.integrations.versioning import version_dataset

    md5 = version_dataset(project_root(), dvc_target, report["root"], push=push)
    log_metadata({"dvc_md5": md5 or "not versioned"})
    return md5 or "not versioned"
