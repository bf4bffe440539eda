"""The data-preparation pipeline: prepare → validate (GX) → version (DVC).

From the CLI (``neuralmark data prepare cifar10 --source cifar-10-python.tar.gz``),
from Python (``run_data_preparation``) or with ZenML directly::

    zenml pipeline run neuralmark.pipelines.data_preparation.data_preparation_pipeline \
        -c configs/data/cifar10.yaml

with one run config per dataset in ``configs/data/`` (``parameters: {dataset:
cifar10, source: ~/Downloads/cifar-10-python.tar.gz, config: {...}}``).
``config`` holds ``PrepareConfig`` fields, the recipe's ``options`` and
``version_with_dvc`` / ``dvc_target`` / ``dvc_push``; a typo in any of them
fails when the pipeline is compiled, naming it. What the validation checks
(pairs, size, label range, ``target_kind``) is declared by the recipe and
travels in the prepare report. The source
fingerprint is computed when the pipeline is compiled and passed to ``prepare``,
so an unchanged input is a cache hit and does no work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zenml import pipeline
from zenml.enums import ExecutionMode

from neuralmark.components.data.datasets import PrepareConfig, get_recipe
from neuralmark.components.data.prepare import effective_config, source_fingerprint
from neuralmark.components.methods.base import InputError
from neuralmark.integrations.tracking import record_environment
from neuralmark.runtime.settings import CODE_ROOT
from neuralmark.steps.data_preparation import prepare, validate, version

PIPELINE_NAME = "data_preparation_pipeline"
#: keys of ``config`` that are about the pipeline, not ``PrepareConfig``
PIPELINE_KEYS = {"version_with_dvc": True, "dvc_target": "data", "dvc_push": True}


def split_config(config: dict[str, Any] | None) -> tuple[PrepareConfig, dict[str, Any]]:
    """``config`` → (``PrepareConfig``, pipeline options); a typo is an ``InputError``."""
    config = dict(config or {})
    options = {k: config.pop(k, v) for k, v in PIPELINE_KEYS.items()}
    try:
        return PrepareConfig(**config), options
    except ValueError as err:
        raise InputError(f"invalid prepare config: {err}") from None


def _out_dir(out: str) -> str:
    from zenml.client import Client

    path = Path(out).expanduser()
    return str(path if path.is_absolute() else (Client().root or Path.cwd()).resolve() / path)


@pipeline(name=PIPELINE_NAME, enable_cache=True, execution_mode=ExecutionMode.FAIL_FAST,
          on_start=record_environment)
def data_preparation_pipeline(dataset: str, source: str, out: str = "data",
                              config: dict[str, Any] | None = None) -> None:
    """Prepare, validate and version one dataset.

    Args:
        dataset: recipe name (``cifar10``, ``image_folder``, …).
        source: the archive or folder as its publisher distributes it.
        out: output root; relative paths hang off the project root.
        config: ``PrepareConfig`` fields plus ``version_with_dvc``, ``dvc_target``, ``dvc_push``.
    """
    prep_config, options = split_config(config)
    effective_config(get_recipe(dataset), prep_config)  # a bad option fails at compile time
    source = str(Path(source).expanduser().resolve())
    fingerprint = source_fingerprint(dataset, source, prep_config)
    report = prepare(dataset=dataset, source=source, out=_out_dir(out),
                     config=prep_config.model_dump(mode="json", exclude_unset=True),
                     fingerprint=fingerprint)
    html = validate(report)
    if options["version_with_dvc"]:
        version(report, html, dvc_target=options["dvc_target"], push=options["dvc_push"])


def run_data_preparation(dataset: str, source: str | os.PathLike, out: str = "data",
                         config: dict[str, Any] | None = None,
                         callbacks: Sequence[Any] | None = None, *,
                         project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``data_preparation_pipeline`` on the project's local stack.

    Args:
        dataset: recipe name.
        source: the archive or folder.
        out: output root (relative to the project root).
        config: see ``data_preparation_pipeline``.
        callbacks: progress sinks (``on_progress``, e.g. the CLI's bar); only seen
            when the prepare step runs in this process (local orchestrator).
        project_root: where ``.zen/``, ``mlflow.db``, ``data/`` and ``reports/`` live.

    Returns:
        ``run``, ``status``, ``cached`` (the prepare step was a cache hit),
        ``report`` (``PrepareReport.to_dict()``) and ``reports_dir``.

    Raises:
        InputError: unknown dataset, bad config, missing source, or data that
            failed validation (the message says where the report is).
        RuntimeError: any other failed run.
    """
    from neuralmark.pipelines.harness import executed

    root = Path(project_root or CODE_ROOT).resolve()
    effective_config(get_recipe(dataset), split_config(config)[0])
    if not Path(source).exists():
        raise InputError(f"source {source} does not exist")
    out_abs = str(Path(out) if Path(out).is_absolute() else root / out)
    parameters = {"dataset": dataset, "source": str(source), "out": out_abs,
                  "config": dict(config or {})}
    with executed(data_preparation_pipeline, PIPELINE_NAME, {"parameters": parameters}, root,
                  callbacks) as run:
        step = run.steps["prepare"]
        report = step.outputs["prepare_report"][0].load()
        cached = str(step.status) == "cached"
    return {"run": run.name, "status": str(run.status), "cached": cached, "report": report,
            "reports_dir": str(root / "reports" / run.name)}
