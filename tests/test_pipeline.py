"""The training pipeline end to end through ZenML, with MLflow tracking and registry.

One temporary project for the module (its own ``.zen/``, ``mlflow.db``,
``data/`` and ``reports/``), three pipeline runs of a micro configuration:
a candidate that passes the gate (promoted), one that cannot (registered,
refused, champion unchanged), and a corrupted dataset (stops before training,
validation report written).

Isolation: the module gets its own ZenML store (``ZENML_CONFIG_PATH``) and
repository (``ZENML_REPOSITORY_PATH``) inside the temporary project, and ZenML's
singletons are swapped around it, so neither the checkout's own ``.zen/`` (if
any) nor other test modules' ZenML state is opened or changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuralmark.components.evaluation import rows_from_csv
from neuralmark.components.methods.base import InputError
from neuralmark.runtime.stack import tracking_uri
from tests.isolation import isolated_zenml_project

pytestmark = pytest.mark.pipeline

MODEL = "neuralmark-pgd_signer"
ROUNDS = 2
#: smaller than the tiny profile: seconds of training, 3 test images, 4 attacks
MICRO: dict[str, Any] = {
    "config": {"working_size": 64, "width": 8, "input_stride": 2, "rounds": ROUNDS,
               "batch_size": 4, "sign_steps_train": 3, "m_steps": 3, "pgd_steps": 5,
               "eot_samples": 1, "curve_images": 2, "buffer_size": 16},
    "data": {"root": "data/micro", "size": 64, "crops_per_photo": 1, "n_procedural": 3,
             "version_with_dvc": False},
    "evaluation": {"limit": 3, "fpr_keys": 50, "attacks": ["none", "jpeg", "blur", "noise"]},
}
LOW_FLOORS = {"min_psnr": 10.0, "min_bit_accuracy": {"none": 0.0, "mean_attacked": 0.0},
              "min_detection_rate": {"none": 0.0}, "max_fpr": 1.0, "max_regression": 1.0}
IMPOSSIBLE_FLOORS = {"min_psnr": 99.0}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    """A temporary project with its own ZenML store, for this module only.

    ZenML's global configuration and client singletons are swapped for ones
    reading ``<project>/.zen-home`` and ``<project>/.zen`` and put back after,
    so the stack registered here is invisible to other test modules.
    """
    import torch

    root = tmp_path_factory.mktemp("nm-project")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; these models are tiny anyway
    try:
        with isolated_zenml_project(root):
            yield root
    finally:
        torch.set_num_threads(threads)


def _train(project: Path, policy: dict[str, Any], **data: Any) -> dict[str, Any]:
    from neuralmark.pipelines.training import run_training

    overrides = {**MICRO, "data": {**MICRO["data"], **data}, "policy": policy}
    return run_training("pgd_signer", "tiny", overrides=overrides, project_root=project)


def _mlflow(project: Path):
    from mlflow import MlflowClient

    uri = tracking_uri(project)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(project: Path) -> list[str]:
    return sorted(str(mv.version)
                  for mv in _mlflow(project).search_model_versions(f"name='{MODEL}'"))


def _champion(project: Path) -> str:
    return str(_mlflow(project).get_model_version_by_alias(MODEL, "champion").version)


@pytest.fixture(scope="module")
def first_run(project: Path) -> dict[str, Any]:
    """A candidate with low floors: the first one, so it becomes the champion."""
    return _train(project, LOW_FLOORS)


def test_run_tracks_registers_and_promotes(project: Path, first_run: dict[str, Any]) -> None:
    from zenml.client import Client

    result = first_run
    assert result["status"] == "completed"
    assert result["decision"]["promote"] is True and result["promoted"] is True
    assert result["registered_version"] == result["champion_version"] == _champion(project)
    assert {"psnr", "fpr", "fpr_ci_high", "bit_accuracy/jpeg_50"} <= set(result["summary"])
    assert str(project / "mlflow.db") in result["mlflow_ui"]

    client = _mlflow(project)
    run = client.get_run(result["mlflow_run_id"])
    history = client.get_metric_history(run.info.run_id, "train/e_bit_acc")
    assert [m.step for m in history] == list(range(ROUNDS))  # streamed once per EM round
    assert run.data.params["method.working_size"] == "64"
    assert run.data.params["data.size"] == "64"
    assert {"psnr", "fpr", "bit_accuracy_mean_attacked"} <= set(run.data.metrics)
    listed = {f.path for d in ("report", "figures", "data_validation")
              for f in client.list_artifacts(run.info.run_id, d)}
    assert {"report/rows.csv", "report/report.json", "report/robustness_curves.png",
            "report/example_grid.png", "data_validation/validation.html"} <= listed
    assert any(p.startswith("figures/") and p.endswith(".png") for p in listed)  # fit's curves
    mv = client.get_model_version(MODEL, result["registered_version"])
    assert mv.tags["gate"] == "pass"
    assert (mv.run_id or mv.tags["mlflow_run_id"]) == run.info.run_id

    reports = Path(result["reports_dir"])
    assert (reports / "validation.html").is_file()
    assert rows_from_csv(reports / "robustness.csv")[0]["method"] == "pgd_signer"
    zen_run = Client().get_pipeline_run(result["run"])
    assert zen_run.model_version.model.name == MODEL
    assert zen_run.model_version.stage == "production"


def test_the_registered_champion_loads_by_model_uri(project: Path, first_run: dict[str, Any],
                                                   photo, tmp_path: Path) -> None:
    """What a user does after ``make demo``: the pipeline's champion, by URI, from the CLI."""
    from PIL import Image
    from typer.testing import CliRunner

    from neuralmark.cli.app import app
    from neuralmark.integrations.loading import load_method
    from tests.isolation import mlflow_store

    image = tmp_path / "photo.png"
    Image.fromarray(photo[100:228, 150:278]).save(image)
    uris = [f"models:/{MODEL}@champion", f"models:/{MODEL}/{first_run['registered_version']}"]
    with mlflow_store(tracking_uri(project)):
        for uri in uris:
            method = load_method(uri, "cpu", expect="pgd_signer")
            assert method.config.working_size == MICRO["config"]["working_size"]
            result = CliRunner().invoke(app, ["verify", str(image), "--key", "k", "--json",
                                              "--device", "cpu", "--model-uri", uri])
            assert result.exit_code in (0, 1), result.output
            assert json.loads(result.stdout)["status"] != "unreadable"


def test_the_cli_headline_of_a_real_run(first_run: dict[str, Any]) -> None:
    """``neuralmark train`` prints a short headline of what the run returned, and where the
    full report is: never the dozens of per-attack metrics the run returns."""
    import io

    from rich.console import Console

    from neuralmark.cli.headline import gate_rows, print_training, quality_rows, registry_rows

    rows = (quality_rows(first_run["metrics"]) + gate_rows(first_run["decision"])
            + registry_rows(first_run))
    assert len(rows) <= 20 < len(first_run["metrics"])
    names = [name for name, _ in rows]
    for wanted in ("PSNR", "bit accuracy, clean", "bit accuracy, attacked",
                   "detection rate, clean", "false-positive rate", "gate", "registered",
                   "champion"):
        assert wanted in names
    buffer = io.StringIO()
    print_training(Console(file=buffer, width=120), first_run, "training pgd_signer (tiny)")
    printed = buffer.getvalue()
    reports = Path(first_run["reports_dir"])
    assert f"Full report: {reports}" in printed and first_run["mlflow_ui"] in printed
    assert (reports / "robustness.csv").is_file() and (reports / "report.md").is_file()
    assert "p_value_median" not in printed


def test_gate_refusal_registers_but_keeps_the_champion(project: Path,
                                                       first_run: dict[str, Any]) -> None:
    champion = _champion(project)
    result = _train(project, {**LOW_FLOORS, **IMPOSSIBLE_FLOORS})
    assert result["status"] == "completed"
    assert result["decision"]["promote"] is False and result["promoted"] is False
    assert any(r.startswith("psnr") and "floor 99" in r for r in result["decision"]["reasons"])
    assert result["registered_version"] in _versions(project)
    assert result["registered_version"] != champion
    assert result["champion_version"] == _champion(project) == champion
    mv = _mlflow(project).get_model_version(MODEL, result["registered_version"])
    assert mv.tags["gate"] == "fail" and "psnr" in mv.tags["gate_reasons"]
    assert str(_mlflow(project).get_model_version_by_alias(MODEL, "challenger").version) == \
        result["registered_version"]


def test_broken_dataset_stops_before_training(project: Path,
                                              first_run: dict[str, Any]) -> None:
    from zenml.client import Client

    from neuralmark.components.data.manifest import read_manifest
    from neuralmark.components.data.sample import build_sample_dataset
    from neuralmark.runtime.settings import DataSettings

    data = DataSettings(**{**MICRO["data"], "root": "data/broken"})
    manifest = build_sample_dataset(data.resolved_root(project), data.sample_config())
    victim = manifest.parent / next(r.path for r in read_manifest(manifest) if r.split == "train")
    victim.write_bytes(victim.read_bytes()[:100])  # truncated PNG; the build is still "done"
    versions, champion = _versions(project), _champion(project)

    with pytest.raises(InputError, match="files_readable") as err:
        _train(project, LOW_FLOORS, root="data/broken")
    html = Path(str(err.value).rsplit("report: ", 1)[1])
    assert html.is_file() and html.parent.parent == project / "reports"
    report = json.loads(html.with_name("validation.json").read_text())
    assert report["success"] is False and "files_readable" in report["failed"]
    assert any(victim.name in p for r in report["results"]
               for p in r["details"].get("paths", []))

    zen_run = Client().get_pipeline_run(html.parent.name)
    assert zen_run.status == "failed"
    assert "validate_dataset" in zen_run.steps and "train_model" not in zen_run.steps
    assert _versions(project) == versions and _champion(project) == champion
