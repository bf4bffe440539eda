"""MLflow Model Registry + ZenML Model Control Plane bookkeeping for candidates.

The rule these functions keep: every trained candidate is registered (alias
``challenger``, version tag ``gate=pass|fail`` + ``gate_reasons``); only
:func:`promote` moves the ``champion`` alias, and it refuses a version whose
gate failed. The decision itself comes from the pure gate in ``components``;
nothing here judges a model.

Models are logged as MLflow "models from code" (``steps/pyfunc_model.py``)
with the bundle directory as an artifact: no pickle is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_TAG = "gate"
REASONS_TAG = "gate_reasons"
_MAX_TAG = 5000  # MLflow's limit on tag values

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
COMPONENTS_DIR = Path(__file__).resolve().parents[1] / "components"
#: packages the verifier needs at load time (pinned to what is installed)
_RUNTIME_PACKAGES = ("torch", "safetensors", "pydantic", "numpy", "pillow", "kornia")

logger = logging.getLogger(__name__)


def registry_follows_tracker() -> None:
    """Use the tracking server as the model registry (ZenML sets only the tracking URI)."""
    mlflow.set_registry_uri(mlflow.get_tracking_uri())


def pip_requirements() -> list[str]:
    """Minimal pinned requirements of the served verifier."""
    reqs = []
    for pkg in _RUNTIME_PACKAGES:
        try:
            version = metadata.version(pkg).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
        reqs.append(f"{pkg}=={version}")
    return reqs


def register_candidate(bundle_dir: str | os.PathLike, model_name: str,
                       summary: Mapping[str, float], decision: Mapping[str, Any]) -> str:
    """Log ``bundle_dir`` as a pyfunc model in the active run and register it.

    The summary is logged as metrics of the run (so :func:`champion_summary`
    can read it back), the decision as ``gate/decision.json``. The new version
    gets tags ``gate=pass|fail`` and ``gate_reasons``, and alias ``challenger``.
    ``champion`` is never touched here.

    Args:
        bundle_dir: a method bundle (``config.json`` + ``weights.safetensors``).
        model_name: registered model name, e.g. ``neuralmark-pgd_signer``.
        summary: evaluation headline numbers of this candidate.
        decision: the gate's answer as a dict (``neuralmark.components.gate.Decision.to_dict()``):
            ``promote`` (bool), ``reasons`` (list of str); other keys (``notes``)
            are kept in ``gate/decision.json``.

    Returns:
        The new model version (a string, e.g. ``"3"``).
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "config.json").is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a neuralmark bundle (no config.json)")
    passed = bool(decision["promote"])
    reasons = [str(r) for r in decision.get("reasons", [])]

    run = mlflow.active_run() or mlflow.start_run()
    metrics = {k: float(v) for k, v in summary.items()}
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.log_dict({**dict(decision), "promote": passed, "reasons": reasons,
                     "summary": metrics}, "gate/decision.json")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_MODEL_FILE),
        artifacts={"bundle": str(bundle_dir.resolve())},
        code_paths=[str(COMPONENTS_DIR)],
        pip_requirements=pip_requirements(),
    )
    mv = mlflow.register_model(info.model_uri, model_name,
                               tags={"mlflow_run_id": run.info.run_id})
    client = MlflowClient()
    client.set_model_version_tag(model_name, mv.version, GATE_TAG, "pass" if passed else "fail")
    client.set_model_version_tag(model_name, mv.version, REASONS_TAG,
                                 "; ".join(reasons)[:_MAX_TAG] or "-")
    client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    logger.info("registered %s v%s (gate=%s)", model_name, mv.version,
                "pass" if passed else "fail")
    return str(mv.version)


def promote(model_name: str, version: str | int) -> None:
    """Point alias ``champion`` at ``version`` (call only after a passing decision).

    Raises:
        PermissionError: the version's gate tag is not ``pass``.
    """
    client = MlflowClient()
    mv = client.get_model_version(model_name, str(version))
    if mv.tags.get(GATE_TAG) != "pass":
        raise PermissionError(f"{model_name} v{version} did not pass the gate "
                              f"({mv.tags.get(REASONS_TAG, 'no reasons recorded')}); "
                              "refusing to promote")
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    logger.info("promoted %s v%s to %s", model_name, version, CHAMPION)


def champion_version(model_name: str) -> str | None:
    """Version that alias ``champion`` points at; ``None`` if none or no such model."""
    mv = _by_alias(model_name, CHAMPION)
    return None if mv is None else str(mv.version)


def champion_summary(model_name: str) -> dict[str, float] | None:
    """Metrics of the run that produced the champion; ``None`` without a champion."""
    mv = _by_alias(model_name, CHAMPION)
    if mv is None:
        return None
    run_id = mv.run_id or mv.tags.get("mlflow_run_id")
    if not run_id:
        return None
    return dict(MlflowClient().get_run(run_id).data.metrics)


def set_zenml_model_stage(promoted: bool) -> str | None:
    """Mirror the decision on the ZenML Model version of the running pipeline.

    ``production`` when promoted, else ``staging`` (both with ``force=True``:
    the previous holder of the stage is archived). A no-op, logged, outside a
    step or when the pipeline has no ``Model`` configured.

    Returns:
        The stage set, or ``None`` when there was no model context.
    """
    from zenml import get_step_context
    from zenml.enums import ModelStages
    from zenml.exceptions import StepContextError

    try:
        model = get_step_context().model
    except (RuntimeError, StepContextError) as err:
        logger.info("no ZenML model context, stage not set: %s", err)
        return None
    stage = ModelStages.PRODUCTION if promoted else ModelStages.STAGING
    model.set_stage(stage, force=True)
    return stage.value


def _by_alias(model_name: str, alias: str) -> Any:
    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                              "NOT_FOUND"}:
            return None
        raise
