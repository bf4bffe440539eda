"""The run harness: run a pipeline on a project's local stack and collect what it produced.

Every ``run_*`` entry point (``training``, ``output_mark``, ``data_preparation``) reads its
ZenML run config with ``build_run_config``, runs with ``executed`` (stack bootstrap, the
MLflow experiment, ZenML's client pointed at the project, in-process callbacks) and, for
runs that end in the registry, reads the outcome with ``registration_outcome``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.integrations.tracking import extra_callbacks
from neuralmark.runtime.settings import deep_merge


def build_run_config(path: Path, required: bool, fixed: Mapping[str, Any],
                     sections: Sequence[str], overrides: Mapping[str, Any] | None
                     ) -> dict[str, Any]:
    """A ZenML run config: the YAML at ``path`` + ``overrides``, checked.

    Args:
        path: the YAML (a ZenML run config: ``parameters:``, ``model:``, …).
        required: a missing file is an error (else an empty config).
        fixed: parameters the caller sets (e.g. ``method``, ``profile``); a YAML
            naming other values is an error rather than silently overridden.
        sections: the other parameters a YAML or ``overrides`` may set.
        overrides: merged over the YAML's parameters (nested mappings key by key).

    Raises:
        InputError: missing file, bad YAML, unknown top-level key, parameter or
            override section, or a fixed parameter set to another value.
    """
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path} must be a mapping (a ZenML run config)")
    elif required:
        raise InputError(f"config file {path} does not exist")
    unknown = sorted(set(raw) - set(PipelineRunConfiguration.model_fields))
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {unknown}; it is a ZenML run config "
                         "(method settings go under `parameters: {config: {...}}`)")
    params = dict(raw.get("parameters") or {})
    allowed = [*fixed, *sections]
    if set(params) - set(allowed):
        raise InputError(f"{path}: unknown pipeline parameter(s) "
                         f"{sorted(set(params) - set(allowed))}; expected {allowed}")
    for name, value in fixed.items():
        if params.get(name, value) != value:
            raise InputError(f"{path} sets {name}: {params[name]!r} but the run asks for "
                             f"{value!r}; drop it from the file or run with {params[name]!r}")
    unknown = sorted(set(overrides or {}) - set(sections))
    if unknown:
        raise InputError(f"unknown override section(s) {unknown}; expected "
                         f"{', '.join(sections)}")
    params = deep_merge(params, overrides)
    params.update(fixed)
    return {**raw, "parameters": params, "model": dict(raw.get("model") or {})}


def name_model(run_config: dict[str, Any], expected: str, path: str) -> None:
    """Set the ZenML Model name to the registered model's; a YAML naming another is an error."""
    model = run_config["model"]
    if model.get("name", expected) != expected:
        raise InputError(f"{path}: model name {model['name']!r} is not {expected!r} "
                         "(neuralmark-<method>[-<variant>])")
    model["name"] = expected


@contextlib.contextmanager
def project_client(project_root: Path) -> Iterator[None]:
    """Point ZenML's process-wide client at ``project_root`` (its ``.zen/``), then back."""
    from zenml.client import Client

    previous = Client().root
    Client().activate_root(project_root)
    try:
        yield
    finally:
        # With no previous root, stay on the project: re-searching from the cwd could
        # pick up (and rewrite) another checkout's .zen/.
        if previous is not None and previous != project_root:
            Client().activate_root(previous)


def _output(run: Any, step_name: str, output: str) -> Any:
    return run.steps[step_name].outputs[output][0].load()


@contextlib.contextmanager
def executed(pipeline_obj: Any, pipeline_name: str, run_config: Mapping[str, Any], root: Path,
             callbacks: Sequence[Any] | None) -> Iterator[Any]:
    """Run ``pipeline_obj`` with ``run_config`` on ``root``'s local stack; yield the finished run.

    Bootstraps the stack and the MLflow experiment (artifacts in
    ``<root>/mlruns``), writes the resolved run config to a temporary YAML,
    points ZenML at the project while the run happens and while the caller
    reads the run's outputs (inside the ``with``), and adds ``callbacks`` to
    the steps that run in this process.

    Raises:
        InputError: the data failed validation (the message says where the report is).
        RuntimeError: the run did not complete.
    """
    from zenml.client import Client

    from neuralmark.integrations.validation import DataValidationError
    from neuralmark.runtime.stack import ensure_experiment, ensure_stack

    ensure_stack(root)
    ensure_experiment(pipeline_name, root)
    with tempfile.TemporaryDirectory(prefix="nm-run-config-") as tmp, project_client(root), \
            extra_callbacks(callbacks):
        resolved_yaml = Path(tmp) / "run.yaml"
        resolved_yaml.write_text(yaml.safe_dump(dict(run_config), sort_keys=False))
        try:
            run = pipeline_obj.with_options(config_path=str(resolved_yaml))()
        except DataValidationError as err:
            raise InputError(str(err)) from None
        run = Client().get_pipeline_run(run.id)
        if str(run.status) != "completed":
            raise RuntimeError(f"pipeline run {run.name} ended {run.status}")
        yield run


def registration_outcome(run: Any, report_step: str, train_step: str,
                         root: Path) -> dict[str, Any]:
    """What a training-style run produced: its report, the gate's decision, the registry.

    Call inside ``executed`` (the artifacts are read from the project's store).

    Returns:
        ``run``, ``status``, ``report`` (the ``Report``), ``metrics``, ``decision``,
        ``registered_version``, ``promoted``, ``champion_version``,
        ``mlflow_run_id``, ``reports_dir`` and ``mlflow_ui``.
    """
    from neuralmark.runtime.stack import mlflow_ui_command

    report = _output(run, report_step, "report")
    decision = _output(run, "gate", "decision")
    registration = _output(run, "register_and_promote", "registration")
    return {
        "run": run.name,
        "status": str(run.status),
        "report": report,
        "metrics": dict(report.summary),
        "decision": {"promote": decision.promote, "reasons": decision.reasons,
                     "notes": decision.notes},
        "registered_version": registration["version"],
        "promoted": registration["promoted"],
        "champion_version": registration["champion_version"],
        "mlflow_run_id": run.steps[train_step].run_metadata.get("mlflow_run_id"),
        "reports_dir": str(root / "reports" / run.name),
        "mlflow_ui": mlflow_ui_command(root),
    }


