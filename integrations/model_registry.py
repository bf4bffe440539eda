"""MLflow Model Registry + ZenML Model Control Plane bookkeeping for candidates.

The rule these functions keep: every trained candidate is registered (alias
``challenger``, version tag ``gate=pass|fail`` + ``gate_reasons``); only
:func:`promote` moves the ``champion`` alias, and it refuses a version whose
gate failed. The decision itself comes from the pure gate in ``components``;
nothing here judges a model.

The registry is the tracking store: ZenML's MLflow tracker sets only the tracking URI,
so every function here talks to the registry through :func:`registry_client`, an
explicit ``MlflowClient`` on that store, and never changes MLflow's process-wide
registry URI.

Models are logged as MLflow "models from code" (``integrations/pyfunc_model.py``) with
the bundle as artifact ``bundle`` (``artifacts/bundle/`` in the model) and the
``neuralmark.components`` code beside it: no pickle is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from neuralmark.integrations.loading import BUNDLE_ARTIFACT, quiet_artifact_transfers
from neuralmark.integrations.tracking import record_environment

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_TAG = "gate"
REASONS_TAG = "gate_reasons"
_MAX_TAG = 5000  # MLflow's limit on tag values
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
COMPONENTS_DIR = Path(__file__).resolve().parents[1] / "components"
#: packages the verifier needs at load time (pinned to what is installed)
_RUNTIME_PACKAGES = ("torch", "safetensors", "pydantic", "numpy", "pillow", "kornia", "bchlib")

logger = logging.getLogger(__name__)


def registry_client(tracking_uri: str | None = None) -> MlflowClient:
    """A client whose model registry is the tracking store.

    Args:
        tracking_uri: the MLflow store; default: the current tracking URI (inside a step,
            the one ZenML's MLflow tracker set).

    Returns:
        ``MlflowClient(tracking_uri=uri, registry_uri=uri)``; MLflow's process-wide
        settings are read, never changed.
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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


def _stage_code(root: Path) -> Path:
    """Copy ``neuralmark.components`` (no shipped weights, no caches) to ``root/neuralmark``.

    Logged as ``code_paths``, it lands in the model's ``code/neuralmark/components/``; MLflow
    puts ``code/`` first on ``sys.path`` when it loads the model, so the served verifier runs
    the library it was registered with, under its import name.
    """
    package = root / "neuralmark"
    shutil.copytree(COMPONENTS_DIR, package / "components",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "pretrained"))
    return package


def _link_logged_model(client: MlflowClient, model_id: str | None, name: str,
                       version: str) -> None:
    """Record the version on its logged model (what the MLflow UI shows as "registered")."""
    if not model_id:
        return
    tags = client.get_logged_model(model_id).tags
    versions = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    versions.append({"name": name, "version": int(version)})
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})


def register_candidate(bundle_dir: str | os.PathLike, model_name: str,
                       summary: Mapping[str, float], decision: Mapping[str, Any]) -> str:
    """Log ``bundle_dir`` as a pyfunc model in the active run and register it.

    The summary is logged as metrics of the run (so :func:`champion_summary`
    can read it back), the decision as ``gate/decision.json``. The new version
    gets tags ``gate=pass|fail`` and ``gate_reasons``, and alias ``challenger``.
    ``champion`` is never touched here. The model keeps the bundle under
    ``artifacts/bundle/`` whatever the folder's own name. The run is tagged ``env.*``
    (:func:`~neuralmark.integrations.tracking.record_environment`).

    Args:
        bundle_dir: a method bundle (``config.json`` + ``weights.safetensors``).
        model_name: registered model name, e.g. ``neuralmark-pgd_signer``.
        summary: evaluation headline numbers of this candidate.
        decision: the gate's answer as a dict (``neuralmark.components.gate.Decision.to_dict()``):
            ``promote`` (bool), ``reasons`` (list of str); other keys (``notes``)
            are kept in ``gate/decision.json``.

    Returns:
        The new model version (a string, e.g. ``"3"``).

    Raises:
        FileNotFoundError: ``bundle_dir`` is not a bundle.
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "config.json").is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a neuralmark bundle (no config.json)")
    passed = bool(decision["promote"])
    reasons = [str(r) for r in decision.get("reasons", [])]

    run = mlflow.active_run() or mlflow.start_run()
    # The run a version points to says which float path made it, also when a script (not a
    # pipeline, whose on_start hook tags every step) registers the candidate.
    record_environment()
    metrics = {k: float(v) for k, v in summary.items()}
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.log_dict({**dict(decision), "promote": passed, "reasons": reasons,
                     "summary": metrics}, "gate/decision.json")
    with tempfile.TemporaryDirectory(prefix="nm-model-") as tmp, quiet_artifact_transfers():
        staged = Path(tmp) / BUNDLE_ARTIFACT  # MLflow names the artifact folder after it
        shutil.copytree(bundle_dir, staged)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={BUNDLE_ARTIFACT: str(staged)},
            code_paths=[str(_stage_code(Path(tmp)))],
            pip_requirements=pip_requirements(),
        )
    client = registry_client()
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code not in {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}:
            raise
    mv = client.create_model_version(
        model_name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
        tags={"mlflow_run_id": run.info.run_id, GATE_TAG: "pass" if passed else "fail",
              REASONS_TAG: "; ".join(reasons)[:_MAX_TAG] or "-"})
    _link_logged_model(client, info.model_id, model_name, mv.version)
    client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    logger.info("registered %s v%s (gate=%s)", model_name, mv.version,
                "pass" if passed else "fail")
    return str(mv.version)


def promote(model_name: str, version: str | int, *, tracking_uri: str | None = None) -> None:
    """Point alias ``champion`` at ``version`` (call only after a passing decision).

    Args:
        model_name: registered model name.
        version: the version to promote.
        tracking_uri: the MLflow store (default: the current tracking URI).

    Raises:
        PermissionError: the version's gate tag is not ``pass``.
    """
    client = registry_client(tracking_uri)
    mv = client.get_model_version(model_name, str(version))
    if mv.tags.get(GATE_TAG) != "pass":
        raise PermissionError(f"{model_name} v{version} did not pass the gate "
                              f"({mv.tags.get(REASONS_TAG, 'no reasons recorded')}); "
                              "refusing to promote")
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    logger.info("promoted %s v%s to %s", model_name, version, CHAMPION)


def champion_version(model_name: str, *, tracking_uri: str | None = None) -> str | None:
    """Version that alias ``champion`` points at; ``None`` if none or no such model."""
    mv = _by_alias(registry_client(tracking_uri), model_name, CHAMPION)
    return None if mv is None else str(mv.version)


def champion_summary(model_name: str, *,
                     tracking_uri: str | None = None) -> dict[str, float] | None:
    """Metrics of the run that produced the champion; ``None`` without a champion."""
    client = registry_client(tracking_uri)
    mv = _by_alias(client, model_name, CHAMPION)
    if mv is None:
        return None
    run_id = mv.run_id or mv.tags.get("mlflow_run_id")
    if not run_id:
        return None
    return dict(client.get_run(run_id).data.metrics)


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


def _by_alias(client: MlflowClient, model_name: str, alias: str) -> Any:
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in _MISSING:
            return None
        raise
