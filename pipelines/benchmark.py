"""The benchmark pipeline: photos → every method and peer through the same attacks.

From Python (``run_benchmark_pipeline``) or with ZenML directly::

    zenml pipeline run neuralmark.pipelines.benchmark.benchmark_pipeline \
        -c configs/benchmark.yaml

``configs/benchmark.yaml`` is the full benchmark, ``configs/benchmark_tiny.yaml`` the small
one. ``settings`` holds ``BenchmarkSettings`` fields; a typo fails before anything runs,
naming the field. The steps call the library code ``neuralmark benchmark`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from zenml import pipeline

from neuralmark.components.benchmark import BenchmarkSettings
from neuralmark.components.errors import InputError, describe_validation_error
from neuralmark.integrations.tracking import record_environment
from neuralmark.runtime.settings import CODE_ROOT
from neuralmark.steps.benchmark import benchmark_entrants, benchmark_photos

PIPELINE_NAME = "benchmark_pipeline"
DEFAULT_CONFIG = CODE_ROOT / "configs" / "benchmark.yaml"
SECTIONS = ("settings", "images", "data_root")


@pipeline(name=PIPELINE_NAME, on_start=record_environment, enable_cache=False)
def benchmark_pipeline(settings: dict[str, Any] | None = None, images: str | None = None,
                       data_root: str = "data/sample") -> None:
    """Photos, then the benchmark (reports logged to MLflow)."""
    checked = BenchmarkSettings(**(settings or {}))
    photos, inputs = benchmark_photos(images=images, data_root=data_root, size=checked.size,
                                      limit=checked.limit)
    benchmark_entrants(photos, inputs, checked.model_dump(mode="json"), images=images)


def run_benchmark_pipeline(config_path: str | os.PathLike | None = None,
                           overrides: Mapping[str, Any] | None = None, *,
                           project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run :func:`benchmark_pipeline` on the project's local stack.

    Args:
        config_path: a ZenML run config (default ``configs/benchmark.yaml``).
        overrides: ``{"settings"|"images"|"data_root": ...}`` over the YAML's parameters.
        project_root: where ``.zen/``, ``mlflow.db``, ``data/`` and ``reports/`` live.

    Returns:
        ``run`` (name), ``rows`` (the tidy table), ``summary`` (headline metrics),
        ``reports`` (CSV / Markdown / HTML paths) and ``mlflow_run_id``.

    Raises:
        InputError: a bad config (before anything runs).
        RuntimeError: a failed run.
    """
    from neuralmark.pipelines.harness import build_run_config, executed

    path = Path(config_path or DEFAULT_CONFIG)
    run_config = build_run_config(path, True, {}, SECTIONS, overrides)
    run_config.pop("model", None)
    try:
        BenchmarkSettings(**(run_config["parameters"].get("settings") or {}))
    except ValidationError as err:
        raise InputError(f"{path}: invalid benchmark settings: "
                         f"{describe_validation_error(err)}") from None
    root = Path(project_root or CODE_ROOT).resolve()
    with executed(benchmark_pipeline, PIPELINE_NAME, run_config, root, None) as run:
        step = run.steps["benchmark_entrants"]
        report = step.outputs["benchmark"][0].load()
        tracker_run = step.run_metadata.get("mlflow_run_id")
        return {"run": run.name, "rows": report.rows, "summary": report.summary,
                "reports": report.extra["reports"], "mlflow_run_id": tracker_run}
