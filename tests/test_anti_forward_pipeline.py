"""anti_forward's three variants through the training pipeline, side by side.

One temporary project (see tests/isolation.py), ``run_variants`` on a micro
configuration: baseline, rs and rs_aug are trained, evaluated (robustness suite,
APGD / Square / APGD-EoT, certified accuracy for the smoothed ones), gated and
registered as three models, and the seed-shaped comparison lands in MLflow.
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

VARIANTS = ("baseline", "rs", "rs_aug")
MICRO: dict[str, Any] = {
    "config": {"working_size": 32, "encoder_width": 8, "scanner_width": 8, "steps": 30,
               "batch_size": 8, "aug_start": 0, "aug_end": 10, "sigma_warmup": 0,
               "image_loss_ramp": 0, "n0": 8, "n": 32, "score_noise_samples": 2,
               "calibration_scores": 100, "log_every": 10},
    "data": {"root": "data/micro", "size": 64, "crops_per_photo": 1, "n_procedural": 3,
             "version_with_dvc": False},
    "evaluation": {"limit": 3, "batch_size": 4, "attacks": ["none", "jpeg", "blur"],
                   "adversarial": {"limit": 2, "apgd_steps": 2, "square_queries": 5,
                                   "eot_iter": 1, "smoothing_n": 16, "certify_n0": 8,
                                   "certify_n": 32, "radii": [0.0, 0.25]}},
    "policy": open_gate("anti_forward"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    with pipeline_project(tmp_path_factory.mktemp("nm-af-project")) as root:
        yield root


@pytest.fixture(scope="module")
def result(project) -> dict[str, Any]:
    from neuralmark.pipelines.training import run_variants

    return run_variants("anti_forward", "tiny", overrides=MICRO, project_root=project)


def test_each_variant_is_its_own_registered_model(result, project):
    from mlflow import MlflowClient

    assert tuple(result["variants"]) == VARIANTS
    uri = tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for variant, info in result["variants"].items():
        name = f"neuralmark-anti_forward-{variant}"
        assert info["model_name"] == name and info["registered_version"] == "1"
        assert info["promoted"] is True  # micro floors: the gate has nothing to refuse
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_reports_carry_adversarial_and_certified_rows(result, project):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(project))
    metrics = client.get_run(result["mlflow_run_id"]).data.metrics
    for variant in VARIANTS:
        # robust detection is always measured; the success rate only over images the
        # scanner flagged before the attack (a micro model may flag none)
        assert 0.0 <= metrics[f"{variant}/detection_rate_adversarial/apgd_linf_8"] <= 1.0
        assert 0.0 <= metrics[f"{variant}/detection_rate_adversarial/square_linf_8"] <= 1.0
        assert f"{variant}/detection_rate/jpeg_50" in metrics
        assert metrics[f"{variant}/psnr"] > 20
    # smoothing only in rs / rs_aug: only they are certified and face the adaptive attack
    assert not any(k.startswith("baseline/certified_accuracy/") for k in metrics)
    for variant in ("rs", "rs_aug"):
        assert any(k.startswith(f"{variant}/certified_accuracy/") for k in metrics)
        assert any(k.startswith(f"{variant}/detection_rate_adversarial/apgd_eot")
                   for k in metrics)
    assert not any(k.startswith("baseline/detection_rate_adversarial/apgd_eot") for k in metrics)


def test_comparison_tables_in_reports_and_mlflow(result, project):
    from mlflow import MlflowClient

    tables = Path(result["reports_dir"], "tables.md").read_text()
    for section in ("## imperceptibility", "## detection", "## adversarial", "## certified"):
        assert section in tables
    for variant in VARIANTS:
        assert f"| {variant} |" in tables
    run = MlflowClient(tracking_uri=tracking_uri(project)).get_run(result["mlflow_run_id"])
    assert run.data.tags["neuralmark.kind"] == "variant-comparison"
    assert run.data.tags["mlflow.note.content"] == tables
