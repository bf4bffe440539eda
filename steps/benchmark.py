"""Benchmark steps: gather the photos, then run every entrant and log the reports.

Both call ``neuralmark.components.benchmark`` (what ``neuralmark benchmark`` calls), so the
pipeline and the command measure the same way.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from zenml import step

import neuralmark.integrations.materializers  # noqa: F401  (registers the materializers)
from neuralmark.components.benchmark import BenchmarkSettings, PhotoSet, run_benchmark
from neuralmark.components.benchmark.images import load_folder, load_heldout
from neuralmark.components.benchmark.report import write_reports
from neuralmark.components.report import Report
from neuralmark.integrations.benchmark_tracking import benchmark_metrics, log_benchmark
from neuralmark.integrations.run_context import project_root, run_reports_dir
from neuralmark.runtime.stack import TRACKER_NAME


@step
def benchmark_photos(images: str | None, data_root: str, size: int, limit: int | None
                     ) -> tuple[Annotated[torch.Tensor, "photos"], Annotated[Report, "inputs"]]:
    """The photos (``images`` folder, else the held-out split under ``data_root``).

    Returns:
        N×3×size×size photos, and a report whose ``extra`` holds their names and the files
        left out (unreadable, too small).
    """
    if images:
        photos = load_folder(images, size=size, limit=limit)
    else:
        from neuralmark.components.data.sample import build_sample_dataset

        photos = load_heldout(build_sample_dataset(project_root() / data_root), size, limit)
    return photos.images, Report(rows=photos.rows(), extra={
        "names": photos.names, "skipped": [list(s) for s in photos.skipped]})


@step(experiment_tracker=TRACKER_NAME)
def benchmark_entrants(photos: torch.Tensor, inputs: Report, settings: dict[str, Any],
                       images: str | None = None) -> Annotated[Report, "benchmark"]:
    """Run the benchmark; write CSV / Markdown / HTML to ``<project>/reports/<run>/`` and log
    them with the headline metrics to MLflow."""
    photo_set = PhotoSet(photos, list(inputs.extra["names"]),
                         [tuple(s) for s in inputs.extra["skipped"]])
    result = run_benchmark(BenchmarkSettings(**settings), photo_set)
    paths = write_reports(result, run_reports_dir(), images)
    log_benchmark(result, paths)
    return Report(rows=result.rows, summary=benchmark_metrics(result),
                  extra={"photos": result.photos, "entrants": result.entrants,
                         "reports": {k: str(v) for k, v in paths.items()}})
