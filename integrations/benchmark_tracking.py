"""MLflow side of ``neuralmark benchmark``: one run per benchmark, so runs compare in the UI.

Metrics are ``<method>.<headline column>`` (``pgd_signer.bit_acc_mean``, ``rivaGan.embed_ms``,
non-finite and missing values skipped), params are the benchmark settings, and the CSV,
Markdown and HTML reports are the run's artifacts under ``benchmark/``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import mlflow

from neuralmark.components.benchmark.report import headline, model_table
from neuralmark.components.benchmark.runner import BenchmarkResult
from neuralmark.integrations.tracking import record_environment

EXPERIMENT = "neuralmark-benchmark"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(*parts: str) -> str:
    """``parts`` joined by dots, characters MLflow refuses in a name (``[``, ``=``, ``,`` of a
    config variant such as ``anti_forward[smoothing=false]``) replaced by ``_``."""
    return ".".join(_UNSAFE.sub("_", p) for p in parts)
_METRICS = ("psnr", "ssim", "bit_acc_clean", "bit_acc_mean", "bit_acc_worst", "tpr_clean",
            "tpr_mean", "fpr_clean", "embed_ms", "verify_ms", "forgery", "removal",
            "whitebox_removal", "whitebox_psnr")


def benchmark_metrics(result: BenchmarkResult) -> dict[str, float]:
    """``<method>.<metric>`` → value for every finite headline number, and
    ``<model method>.<attack label>.{model_detected,task_psnr}`` for the model table."""
    out = {}
    for row in headline(result.rows):
        for metric in _METRICS:
            value = row[metric]
            if isinstance(value, int | float) and math.isfinite(float(value)):
                out[metric_name(row["method"], metric)] = float(value)
    for row in model_table(result.rows):
        for metric in ("model_detected", "task_psnr"):
            value = row[metric]
            if isinstance(value, int | float) and math.isfinite(float(value)):
                out[metric_name(row["method"], row["attack"], metric)] = float(value)
    return out


def log_benchmark(result: BenchmarkResult, paths: Mapping[str, Path]) -> None:
    """Log metrics, settings and the report files to the active MLflow run."""
    mlflow.log_metrics(benchmark_metrics(result))
    settings = result.settings.model_dump(mode="json")
    mlflow.log_params({k: ",".join(map(str, v)) if isinstance(v, list) else v
                       for k, v in settings.items() if v is not None})
    mlflow.log_param("photos", len(result.photos))
    for path in paths.values():
        mlflow.log_artifact(str(path), artifact_path="benchmark")


def record_benchmark(result: BenchmarkResult, paths: Mapping[str, Path], tracking_uri: str,
                     artifact_root: str | os.PathLike, run_name: str = "benchmark") -> str:
    """Start a run in experiment ``neuralmark-benchmark`` at ``tracking_uri``, log, return its id.

    The experiment is created with its artifacts under ``artifact_root`` (a SQLite store
    would otherwise put them in ``./mlruns`` of whatever folder the command ran in).
    """
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = Path(artifact_root).resolve().as_uri()
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        record_environment()
        log_benchmark(result, paths)
        return run.info.run_id
