"""The training step: load the splits (and labels), build the method from its config, ``fit``.

Metrics stream to MLflow through ``MLflowCallback`` (prefix ``train/``) and the
method's figures (robustness curves per EM round) land under ``figures/``.
Callers in the same process (the CLI's progress bar) can add callbacks with
``neuralmark.integrations.tracking.extra_callbacks``; steps running elsewhere (a remote
orchestrator) only see
MLflow.
"""

from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step

import neuralmark.integrations.materializers  # noqa: F401  (registers the WatermarkMethod materializer)
from neuralmark.components.data.labelled import training_data
from neuralmark.components.methods.base import WatermarkMethod
from neuralmark.components.methods.registry import make_config, method_class
from neuralmark.integrations.tracking import MLflowCallback, in_process_callbacks, log_config
from neuralmark.runtime.ddp import fit_method, train_processes
from neuralmark.runtime.stack import TRACKER_NAME


@step(experiment_tracker=TRACKER_NAME)
def train_model(manifest: str, method: str,
                config: dict[str, Any]) -> Annotated[WatermarkMethod, "trained_method"]:
    """Train ``method`` on the manifest's train split (val for its curves).

    One process per GPU the step's pod is given (``train_processes``): with several, the
    method trains data-parallel on this node and MLflow receives rank 0's metrics when
    the job ends; with one (or on CPU), in this process as always.

    A labelled manifest (procedural classes, a prepared dataset's view) also hands the
    method ``train_labels`` / ``val_labels`` and the held-out ``test`` / ``test_labels``
    (``labelled.training_data``); a method without a use for them ignores them.

    Args:
        manifest: validated ``manifest.csv``.
        method: registry key.
        config: the method's config fields (already merged by ``neuralmark.runtime.settings``).

    Returns:
        The trained method (stored as a bundle by ``WatermarkMethodMaterializer``).
    """
    cfg = make_config(method, config)
    data = training_data(manifest, size=getattr(cfg, "working_size", None),
                         calibration=method_class(method).native_calibration)
    log_config(cfg.model_dump(mode="json"), prefix="method.")
    processes = train_processes()
    trained, final = fit_method(method, cfg, data, [MLflowCallback(prefix="train/"),
                                                    *in_process_callbacks()],
                                processes=processes)
    log_metadata({"final_training_metrics": {k: float(v) for k, v in final.items()},
                  "train_images": int(data["train"].shape[0]), "train_processes": processes})
    return trained
