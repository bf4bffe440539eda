"""The gate and the registry: decide, register every candidate, promote only on a pass.

``gate`` reads the champion's metrics from the MLflow registry and asks the
pure ``neuralmark.components.gate.decide``. ``register_and_promote`` registers the
candidate (alias ``challenger``, tag ``gate=pass|fail``), moves ``champion``
only when the decision says so, and mirrors it on the ZenML Model version
(``production`` / ``staging``). A run that fails earlier never reaches these
steps, so a crash never moves the champion. The registry is the store ZenML's MLflow
tracker points at (``integrations.model_registry.registry_client``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
from zenml import log_metadata, step

import neuralmark.integrations.materializers  # noqa: F401  (registers the method and report materializers)
from neuralmark.components.gate import Decision, GatePolicy, decide
from neuralmark.components.methods.base import WatermarkMethod
from neuralmark.components.report import Report
from neuralmark.integrations.model_registry import (
    champion_summary,
    champion_version,
    promote,
    register_candidate,
    set_zenml_model_stage,
)
from neuralmark.integrations.tracking import log_config
from neuralmark.runtime.stack import TRACKER_NAME


@step(experiment_tracker=TRACKER_NAME)
def gate(report: Report, model_name: str,
         policy: dict[str, Any]) -> Annotated[Decision, "decision"]:
    """Compare the candidate with the policy floors and the current champion.

    Args:
        report: the candidate's evaluation report.
        model_name: registered model name, ``neuralmark-<method>``.
        policy: ``GatePolicy`` fields.

    Returns:
        The decision (also set as MLflow tags ``gate`` and ``gate_reasons``; the
        floors are logged as ``policy.*`` params).
    """
    floors = GatePolicy(**policy)
    log_config(floors.model_dump(mode="json"), prefix="policy.")
    decision = decide(report.summary, champion_summary(model_name), floors)
    mlflow.set_tags({"gate": "pass" if decision.promote else "fail",
                     "gate_reasons": "; ".join(decision.reasons)[:5000] or "-"})
    log_metadata({"gate": decision.to_dict()})
    return decision


@step(experiment_tracker=TRACKER_NAME)
def register_and_promote(trained: WatermarkMethod, report: Report, decision: Decision,
                         model_name: str) -> Annotated[dict[str, Any], "registration"]:
    """Register the candidate; promote it to ``champion`` only if the gate passed.

    Args:
        trained: the trained method.
        report: its evaluation report (the summary is logged with the version).
        decision: the gate's answer.
        model_name: registered model name.

    Returns:
        ``model_name``, ``version`` (registered), ``promoted``, ``champion_version``
        (after this step) and ``zenml_stage``.
    """
    with tempfile.TemporaryDirectory(prefix="nm-candidate-") as tmp:
        bundle = trained.to_bundle(Path(tmp) / "bundle")
        version = register_candidate(bundle, model_name, report.summary, decision.to_dict())
    if decision.promote:
        promote(model_name, version)
    result = {"model_name": model_name, "version": version, "promoted": decision.promote,
              "champion_version": champion_version(model_name),
              "zenml_stage": set_zenml_model_stage(decision.promote)}
    log_metadata({"registration": {k: v for k, v in result.items() if v is not None}})
    return result
