"""MLflow side of training callbacks and evaluation reports.

Used inside steps decorated with ``experiment_tracker=<the MLflow tracker>``:
ZenML's MLflow tracker has started the run, so these are plain ``mlflow.*``
calls on the active run (outside a run, MLflow starts one on first log).

Example (inside a step)::

    metrics = method.fit(data, callbacks=[MLflowCallback()])
    log_report(report, figures={"robustness": fig})
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import mlflow

from neuralmark.components.environment import environment
from neuralmark.components.report import Report

#: Prefix of the tags :func:`record_environment` sets (``env.torch``, ``env.cpu_capability``…).
ENV_TAG_PREFIX = "env."

_EXTRA_CALLBACKS: list[Any] = []


@contextlib.contextmanager
def extra_callbacks(callbacks: Sequence[Any] | None) -> Iterator[None]:
    """Add ``callbacks`` (e.g. the CLI's progress bar) to the long steps run in this process.

    Only steps executed by the local orchestrator (same process) see them; a
    remote orchestrator's steps report through MLflow alone.
    """
    added = list(callbacks or ())
    _EXTRA_CALLBACKS.extend(added)
    try:
        yield
    finally:
        for cb in added:
            _EXTRA_CALLBACKS.remove(cb)


def in_process_callbacks() -> list[Any]:
    """The callbacks added by ``extra_callbacks`` (a copy)."""
    return list(_EXTRA_CALLBACKS)


def step_callbacks(prefix: str) -> list[Any]:
    """What a training step reports to: MLflow (metrics under ``prefix``) and the in-process
    callbacks (``extra_callbacks``, e.g. the CLI's progress bar)."""
    return [MLflowCallback(prefix=prefix), *in_process_callbacks()]


def in_process_progress(done: int, total: int, desc: str = "") -> None:
    """Forward ``progress(done, total)`` to every in-process callback's ``on_progress``."""
    for cb in _EXTRA_CALLBACKS:
        hook = getattr(cb, "on_progress", None)
        if hook is not None:
            hook(done, total, desc)


class MLflowCallback:
    """``neuralmark.components.methods.base.Callback`` that logs to the active MLflow run.

    Args:
        prefix: prepended to every metric key (e.g. ``"train/"``).
        progress_every: log progress as metric ``<prefix>progress`` every this
            many calls to ``on_progress`` (0 = never; the CLI draws a bar instead).
    """

    def __init__(self, prefix: str = "", progress_every: int = 0) -> None:
        self.prefix = prefix
        self.progress_every = progress_every
        self._progress_calls = 0

    def on_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log finite scalar ``metrics`` at training ``step``."""
        clean = _finite(metrics, self.prefix)
        if clean:
            mlflow.log_metrics(clean, step=int(step))

    def on_figure(self, step: int, name: str, figure: Any) -> None:
        """Log a matplotlib figure as ``figures/<name>_<step:04d>.png`` and close it."""
        try:
            mlflow.log_figure(figure, f"figures/{name}_{int(step):04d}.png")
        finally:
            _close(figure)

    def on_progress(self, done: int, total: int, desc: str = "") -> None:
        """Optionally log the fraction done; a no-op by default."""
        self._progress_calls += 1
        if self.progress_every and self._progress_calls % self.progress_every == 0 and total:
            mlflow.log_metric(f"{self.prefix}progress", done / total, step=int(done))


def log_report(report: Report, figures: Mapping[str, Any] | None = None,
               prefix: str = "", artifact_dir: str = "report") -> None:
    """Log an evaluation report to the active MLflow run.

    Summary values become metrics (``<prefix><key>``, non-finite skipped);
    ``rows.csv``, ``report.json`` and ``report.md`` go under ``artifact_dir``;
    each figure is logged as ``<artifact_dir>/<name>.png`` and closed.

    Args:
        report: the report.
        figures: optional ``name -> matplotlib Figure``.
        prefix: prefix for the metric keys.
        artifact_dir: run-relative artifact directory.
    """
    clean = _finite(report.summary, prefix)
    if clean:
        mlflow.log_metrics(clean)
    if report.rows:
        mlflow.log_text(report.rows_to_csv(), f"{artifact_dir}/rows.csv")
    mlflow.log_text(report.to_json(), f"{artifact_dir}/report.json")
    mlflow.log_text(report.to_markdown(), f"{artifact_dir}/report.md")
    for name, fig in (figures or {}).items():
        try:
            mlflow.log_figure(fig, f"{artifact_dir}/{name}.png")
        finally:
            _close(fig)


def log_config(config: Mapping[str, Any], prefix: str = "") -> None:
    """Log a (nested) config as flat MLflow params ``a.b.c = value``.

    Args:
        config: e.g. ``method.config.model_dump(mode="json")``.
        prefix: prefix for the parameter names.
    """
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], path: str) -> None:
        for k, v in node.items():
            key = f"{path}{k}"
            if isinstance(v, Mapping):
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(config, prefix)
    if flat:
        mlflow.log_params(flat)


def record_environment() -> None:
    """Tag the active MLflow run with the float path of this process, ``env.<key>`` for each
    key of :func:`neuralmark.components.environment.environment`.

    Every pipeline runs it as its steps' ``on_start`` hook (ZenML's MLflow tracker has opened
    the step's run by then); a step without the tracker has no active run, and none is
    started for it.
    """
    if mlflow.active_run() is None:
        return
    mlflow.set_tags({f"{ENV_TAG_PREFIX}{k}": v for k, v in environment().items()})


def _finite(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[f"{prefix}{k}"] = f
    return out


def _close(figure: Any) -> None:
    try:
        import matplotlib.pyplot as plt

        plt.close(figure)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
