"""visible_gan through the training pipeline on the real ZenML / MLflow stack (one run).

One temporary project (tests/isolation.py); ``run_training`` with configs/visible_gan.yaml
(the tiny profile shrunk by overrides: 6 images of each procedural class): data →
validation → F on the class labels, GMAN, calibration, the
seed's table → suite + DeepStamp's own rows → gate (its method metrics included) → the
registered model ``neuralmark-visible_gan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuralmark.runtime.stack import tracking_uri
from tests.isolation import pipeline_project
from tests.micro_policy import open_gate

pytestmark = pytest.mark.pipeline

MODEL = "neuralmark-visible_gan"
MICRO: dict[str, Any] = {
    "config": {"working_size": 16, "detect_size": 32, "mark_resolution": 16, "w_width": 4,
               "v_width": 4, "d_width": 4, "classifier_width": 4, "classifier_steps": 4,
               "steps": 6, "batch_size": 8, "utility_steps": 3, "removal_steps": 3,
               "removal_curve_steps": [2],
               "removal_warmup_steps": 2,  # tiny warms V up for 1200 steps
               "calibration_scores": 200, "log_every": 2},
    "data": {"root": "data/micro-classes", "images_per_class": 6, "version_with_dvc": False},
    "evaluation": {"limit": 3, "batch_size": 4, "attacks": ["none", "jpeg"]},
    # every gate of the tiny profile, opened (a micro run measures nothing); the gated
    # metrics must still be there: a missing one refuses promotion
    "policy": open_gate("visible_gan"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    with pipeline_project(tmp_path_factory.mktemp("nm-vg-project")) as root:
        yield root


@pytest.fixture(scope="module")
def result(project) -> dict[str, Any]:
    from neuralmark.pipelines.training import run_training

    return run_training("visible_gan", "tiny", overrides=MICRO, project_root=project)


def test_tiny_run_trains_evaluates_gates_and_registers(result, project):
    from mlflow import MlflowClient

    assert result["model_name"] == MODEL and result["status"] == "completed"
    assert result["promoted"] is True and result["registered_version"] == "1"
    uri = tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    run = client.get_run(result["mlflow_run_id"])
    metrics = run.data.metrics
    for stamper in ("static", "opacity", "displacement", "deepstamp"):
        for metric in ("accuracy_drop", "removal_psnr", "removal_gain", "contrast", "v_psnr"):
            assert f"{metric}/{stamper}" in metrics, (metric, stamper)
    assert "psnr_vs_static/deepstamp" in metrics and "fpr" in metrics
    assert "contrast_vs_static/deepstamp" in metrics and "train/loss_vis" in metrics
    assert "removal_left_vs_static/deepstamp" in metrics
    for base in ("static", "opacity", "displacement"):
        assert f"removal_gain_vs_{base}/deepstamp" in metrics
        assert f"removal_gain_vs_{base}_se/deepstamp" in metrics
    assert "train/loss_w" in metrics
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/visible_gan_examples.png"} <= listed
    report_md = Path(result["reports_dir"], "report.md").read_text()
    assert "| Network | Baseline | Blend | S | O | D | DeepStamp |" in report_md
    assert "| V′ steps | static | opacity | displacement | deepstamp |" in report_md
