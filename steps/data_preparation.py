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
from pathlib import Path
from typing import Annotated, Any

import mlflow
from zenml import log_metadata, step
from zenml.types import HTMLString

from pipelines.stack import TRACKER_NAME
from steps.data import project_root, publish_validation
from steps.tracking import in_process_progress

logger = logging.getLogger(__name__)

#: where the validation report lives among the MLflow run's artifacts
REPORT_ARTIFACT_DIR = "data_validation"
REPORT_ARTIFACT = f"{REPORT_ARTIFACT_DIR}/validation.html"
#: run tag holding ``REPORT_ARTIFACT``
REPORT_TAG = "validation_report"


def link_report_from_run(report: Any) -> None:
    """Tag the active MLflow run with the report's artifact path and describe it.

    Sets ``validation_report`` = ``data_validation/validation.html`` and the run
    description (``mlflow.note.content``) to a short Markdown summary with the
    artifact's full URI, the outcome and, for ChestX-ray8, the ``target_kind``
    counts. Called before the artifact is logged, so a failing report is linked too.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from components.data.bone_suppression import TARGET_KIND

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
    from steps.validation import validate_prepared

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
    from steps.versioning import version_data

    project = project_root()
    if not Path(report["root"]).resolve().is_relative_to((project / dvc_target).resolve()):
        logger.warning("%s is outside the DVC target %s; not versioned", report["root"],
                       dvc_target)
        return "not versioned"
    md5 = version_data(project, dvc_target, push=push)
    log_metadata({"dvc_md5": md5 or "not versioned"})
    return md5 or "not versioned"
