"""The training step: load the splits, build the method from its config, ``fit``.

Metrics stream to MLflow through ``MLflowCallback`` (prefix ``train/``) and the
method's figures (robustness curves per EM round) land under ``figures/``.
Callers in the same process (the CLI's progress bar) can add callbacks with
``extra_callbacks``; steps running elsewhere (a remote orchestrator) only see
MLflow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from zenml import log_metadata, step

import steps.materializers  # noqa: F401  (registers the WatermarkMethod materializer)
from components.data.manifest import load_split
from components.methods.base import WatermarkMethod
from components.methods.registry import build, make_config
from pipelines.stack import TRACKER_NAME
from steps.tracking import MLflowCallback, log_config

_EXTRA_CALLBACKS: list[Any] = []


@contextlib.contextmanager
def extra_callbacks(callbacks: Sequence[Any] | None) -> Iterator[None]:
    """Add ``callbacks`` to every ``fit`` run by ``train_model`` in this process."""
    added = list(callbacks or ())
    _EXTRA_CALLBACKS.extend(added)
    try:
        yield
    finally:
        for cb in added:
            _EXTRA_CALLBACKS.remove(cb)


@step(experiment_tracker=TRACKER_NAME)
def train_model(manifest: str, method: str,
                config: dict[str, Any]) -> Annotated[WatermarkMethod, "trained_method"]:
    """Train ``method`` on the manifest's train split (val for its curves).

    Args:
        manifest: validated ``manifest.csv``.
        method: registry key.
        config: the method's config fields (already merged by ``pipelines.settings``).

    Returns:
        The trained method (stored as a bundle by ``WatermarkMethodMaterializer``).
    """
    cfg = make_config(method, config)
    size = getattr(cfg, "working_size", None)
    data = {split: load_split(manifest, split, size=size) for split in ("train", "val")}
    log_config(cfg.model_dump(mode="json"), prefix="method.")
    trained = build(method, cfg)
    final = trained.fit(data, [MLflowCallback(prefix="train/"), *_EXTRA_CALLBACKS])
    log_metadata({"final_training_metrics": {k: float(v) for k, v in final.items()},
                  "train_images": int(data["train"].shape[0])})
    return trained
