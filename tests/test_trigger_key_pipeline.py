"""The trigger_key pipeline end to end (issue #13): host → mark → attacks → gate → registry.

ONE run of a micro configuration in a temporary project (own ``.zen/``, ``mlflow.db``,
``data/``, ``reports/``) through the real ZenML + MLflow stack: a 3-layer grey DnCNN, a
16×16 trigger, two attacks on the marked host and both baselines, one other key, one
capacity size. Then the registered version is verified back through
``verify-model --model-uri models:/…@champion`` and served through MLflow pyfunc (the
host's task), and a failing decision registered beside it leaves the champion where it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from neuralmark.runtime.settings import deep_merge
from neuralmark.runtime.stack import tracking_uri
from tests.isolation import mlflow_store, pipeline_project
from tests.micro_policy import open_gate

pytestmark = pytest.mark.pipeline

OWNER = "pipeline owner"
MODEL = "neuralmark-trigger_key-dncnn-denoise"
MICRO: dict[str, Any] = {
    "config": {"depth": 3, "width": 8, "host_steps": 60, "embed_steps": 80,
               "visualizer_steps": 40, "n_patches": 64, "patch_size": 24, "trigger_size": 16,
               "calibration_keys": 30, "batch_size": 8, "lam": 0.1, "check_every": 10,
               "alpha": 0.05, "baseline_items": 2, "calibration_marked_keys": 2},
    "data": {"root": "data/micro", "size": 64, "crops_per_photo": 1, "n_procedural": 3,
             "version_with_dvc": False},
    "evaluation": {"key_secret": OWNER},
    # every gate of the profile opened but one: the marked host must still verify unattacked
    "policy": deep_merge(open_gate("trigger_key"), {"min_metric": {"detected/none": 1.0}}),
    # every attack the profile's policy names must run (check_policy_labels), even opened
    "study": {"suite": [["prune", [0.1, 0.5]], ["fine_tune_original", [1]],
                        ["fine_tune_new", [1]], ["overwrite", [None]]], "other_keys": 1,
              "capacity_sizes": [12], "capacity_keys": 40, "uniqueness_keys": 30},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    with pipeline_project(tmp_path_factory.mktemp("nm-tk-project")) as root:
        yield root


@pytest.fixture(scope="module")
def run(project: Path) -> dict[str, Any]:
    from neuralmark.pipelines.trigger_key import run_trigger_key

    return run_trigger_key("tiny", overrides=MICRO, project_root=project)


def test_pipeline_runs_end_to_end_logs_the_report_and_registers(project: Path, run) -> None:
    from mlflow import MlflowClient

    assert run["status"] == "completed" and run["model_name"] == MODEL
    assert run["decision"]["promote"] is True and run["promoted"] is True
    assert run["registered_version"] == run["champion_version"]
    s = run["summary"]
    for key in ("psnr", "ssim", "psnr_unmarked", "fidelity_cost_db", "fpr", "eta",
                "detected/none", "detected/prune_0.5", "detected/overwrite", "psnr/prune_0.5",
                "detected/fine_tune_original_1",
                "detection_rate_mean_attacked", "prune_survived_max",
                "trigger_key_backdoor/detection_rate_mean_attacked",
                "trigger_key_randproj/detection_rate_mean_attacked",
                "uniqueness_false_matches"):
        assert key in s, key
    assert s["detected/none"] == 1.0
    assert s["psnr/prune_0.5"] < s["psnr"]  # pruning half of every layer costs the task
    tables = run["tables"]
    for part in ("## Fidelity", "## Attacks", "prune_0.5", "## Uniqueness", "marked:key1",
                 "## Capacity", "12×12", "FPR"):
        assert part in tables, part

    uri = tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlrun = client.get_run(run["mlflow_run_id"])
    listed = {f.path for f in client.list_artifacts(mlrun.info.run_id, "report")}
    assert {"report/tables.md", "report/rows.csv", "report/pruning_curve.png",
            "report/uniqueness_heatmap.png", "report/capacity_curve.png"} <= listed
    assert mlrun.data.tags["gate"] == "pass" and "detection_rate_mean_attacked" in \
        mlrun.data.metrics
    assert mlrun.data.tags["trigger_key.arch"] == "dncnn"
    mv = client.get_model_version(MODEL, run["registered_version"])
    assert mv.tags["gate"] == "pass"
    reports = Path(run["reports_dir"])
    assert (reports / "trigger_key_report.md").is_file()
    csv = (reports / "trigger_key_attacks.csv").read_text()
    assert "trigger_key_backdoor" in csv and "trigger_key_randproj" in csv


def test_the_uniqueness_step_reuses_the_owners_calibration_pool(project: Path, run) -> None:
    """``embed_owner_mark`` hands its calibration pool (2 other keys' marked hosts) to
    ``uniqueness`` as a tensor artifact instead of ``uniqueness`` embedding it again."""
    from zenml.client import Client

    pipeline_run = Client().get_pipeline_run(run["run"])
    pool = pipeline_run.steps["embed_owner_mark"].outputs["marked_pool"][0].load()
    assert pool.ndim == 2 and pool.shape[0] == MICRO["config"]["calibration_marked_keys"]
    given = pipeline_run.steps["uniqueness"].inputs["marked_pool"]
    given = given[0] if isinstance(given, list) else given
    assert given.id == pipeline_run.steps["embed_owner_mark"].outputs["marked_pool"][0].id


def test_the_registered_champion_verifies_through_the_cli(project: Path, run) -> None:
    from neuralmark.cli.app import app

    runner = CliRunner()
    with mlflow_store(tracking_uri(project)):
        ok = runner.invoke(app, ["verify-model", "--model-uri", f"models:/{MODEL}@champion",
                                 "-k", OWNER, "--json"])
        wrong = runner.invoke(app, ["verify-model", "--model-uri",
                                    f"models:/{MODEL}/{run['registered_version']}",
                                    "-k", "not the owner"])
    assert ok.exit_code == 0, ok.output
    record = json.loads(ok.stdout)
    assert record["detected"] is True and record["d"] == 0.0
    assert wrong.exit_code == 1, wrong.output


def test_the_registered_champion_served_by_mlflow_denoises(project: Path, run) -> None:
    """What the pipeline registers, loaded as MLflow pyfunc, runs its host's task."""
    import mlflow
    import numpy as np
    import torch

    from neuralmark.components.methods.trigger_key.serving import process_image
    from neuralmark.components.methods.trigger_key.study import as_trigger_key
    from neuralmark.integrations.loading import load_method

    image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    with mlflow_store(tracking_uri(project)):
        served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        out = served.predict({"images": [image]})
        method = as_trigger_key(load_method(f"models:/{MODEL}@champion"))
    assert len(out) == 1 and out[0]["status"] == "ok" and out[0]["shape"] == [20, 24]
    direct = process_image(method, torch.from_numpy(image)[None])[0].numpy()
    assert np.allclose(np.asarray(out[0]["image"], np.float32), direct, atol=1e-5)


def test_a_failing_decision_registers_without_moving_the_champion(project: Path, run) -> None:
    from neuralmark.components.methods.trigger_key.study import as_trigger_key
    from neuralmark.integrations.loading import load_method
    from neuralmark.integrations.model_registry import champion_version, register_candidate

    with mlflow_store(tracking_uri(project)):
        method = as_trigger_key(load_method(f"models:/{MODEL}@champion"))
        import mlflow

        with mlflow.start_run():
            version = register_candidate(method.to_bundle(project / "candidate"), MODEL,
                                         run["summary"],
                                         {"promote": False, "reasons": ["fidelity_cost_db"]})
        assert version != run["champion_version"]
        assert champion_version(MODEL) == run["champion_version"]
