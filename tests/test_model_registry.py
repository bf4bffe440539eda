"""MLflow registry: challenger on every candidate, champion only via ``promote``."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from neuralmark.components.methods.registry import build
from neuralmark.integrations import model_registry as reg
from neuralmark.runtime.stack import ensure_experiment, tracking_uri
from tests.isolation import mlflow_store
from tests.test_materializers import LinearTestMethod  # noqa: F401  (registers _test_linear)

MODEL = "neuralmark-_test_linear"


@pytest.fixture(scope="module")
def mlflow_project(tmp_path_factory):
    """A project dir with its own sqlite MLflow store, MLflow's URIs put back after."""
    root = tmp_path_factory.mktemp("nm-mlflow")
    with mlflow_store(tracking_uri(root)):
        yield root, ensure_experiment("nm-registry-test", root)


def _candidate(root: Path, exp_id: str, seed: int, summary: dict, decision: dict) -> str:
    bundle = build("_test_linear", {"seed": seed}).to_bundle(root / f"bundle_{seed}")
    with mlflow.start_run(experiment_id=exp_id):
        mlflow.log_metric("train_loss", 0.1 * seed)
        return reg.register_candidate(bundle, MODEL, summary, decision)


def test_no_champion_before_registration(mlflow_project) -> None:
    assert reg.champion_version("neuralmark-never-registered") is None
    assert reg.champion_summary("neuralmark-never-registered") is None


def test_candidates_challenger_champion(mlflow_project, photo) -> None:
    root, exp_id = mlflow_project
    client = mlflow.MlflowClient()

    v1 = _candidate(root, exp_id, 1, {"bit_accuracy": 0.97, "psnr": 40.0},
                    {"promote": True, "reasons": ["first model"]})
    assert reg.champion_version(MODEL) is None and reg.champion_summary(MODEL) is None
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == v1
    reg.promote(MODEL, v1)
    assert reg.champion_version(MODEL) == v1

    v2 = _candidate(root, exp_id, 2, {"bit_accuracy": 0.60, "psnr": 30.0},
                    {"promote": False, "reasons": ["bit_accuracy 0.60 < champion 0.97"]})
    assert v2 != v1
    mv2 = client.get_model_version(MODEL, v2)
    assert mv2.tags["gate"] == "fail" and "0.60" in mv2.tags["gate_reasons"]
    # registered from a plain run (no pipeline hook): the run still says which float path
    run_tags = client.get_run(mv2.run_id).data.tags
    assert run_tags["env.torch"] == torch.__version__ and run_tags["env.threads"]
    assert client.get_model_version(MODEL, v1).tags["gate"] == "pass"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == v2
    assert reg.champion_version(MODEL) == v1
    with pytest.raises(PermissionError):
        reg.promote(MODEL, v2)
    assert reg.champion_version(MODEL) == v1

    summary = reg.champion_summary(MODEL)
    assert summary["bit_accuracy"] == pytest.approx(0.97) and summary["psnr"] == 40.0
    assert summary["train_loss"] == pytest.approx(0.1)

    # The champion is servable from the registry without a pickle.
    image = root / "crop.png"
    Image.fromarray(np.ascontiguousarray(photo[100:164, 150:214])).save(image)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict({"paths": [str(image), str(root / "missing.png")], "secret": "s3cret"})
    assert len(out) == 2
    assert out[0]["path"] == str(image) and out[0]["status"] in {"detected", "not_detected"}
    expected = build("_test_linear", {"seed": 1}).verify(
        torch_image(image), None)[0].score
    assert out[0]["score"] == pytest.approx(expected, abs=1e-6)
    assert out[1]["status"] == "unreadable" and "missing.png" in out[1]["reason"]
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion"))
    files = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert not any(f.endswith(".pkl") for f in files)
    # the bundle folder was "bundle_1": the model keeps it as artifact "bundle" all the same
    assert {"artifacts/bundle/config.json", "artifacts/bundle/weights.safetensors"} <= files
    # the library it was registered with rides along under its import name, no weights
    assert "code/neuralmark/components/methods/registry.py" in files
    assert not any(f.startswith("code/neuralmark/components/pretrained") for f in files)


def test_registry_follows_the_tracking_store(mlflow_project, tmp_path, monkeypatch) -> None:
    """A registry URI set elsewhere (here the environment) never receives our versions."""
    root, exp_id = mlflow_project
    stray = tmp_path / "stray.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{stray}")
    before = mlflow.get_registry_uri()
    version = _candidate(root, exp_id, 3, {"psnr": 1.0}, {"promote": False, "reasons": ["x"]})
    assert mlflow.get_registry_uri() == before  # nothing process-wide was changed
    assert not stray.exists()
    client = reg.registry_client(tracking_uri(root))
    assert client.get_model_version(MODEL, version).tags["gate"] == "fail"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == version


def torch_image(path: Path):
    """The image as the verifier reads it."""
    from neuralmark.components.imageio import load_image

    return load_image(path, min_size=1).tensor


def test_set_zenml_model_stage_without_context_is_noop() -> None:
    assert reg.set_zenml_model_stage(True) is None


def test_mlflow_callback_and_report(mlflow_project) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuralmark.components.methods.base import Callbacks
    from neuralmark.components.report import Report
    from neuralmark.integrations.tracking import MLflowCallback, log_config, log_report

    _, exp_id = mlflow_project
    open_before = set(plt.get_fignums())  # other tests' figures are not ours to judge
    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    with mlflow.start_run(experiment_id=exp_id) as run:
        cbs = Callbacks([MLflowCallback(prefix="train/")])
        cbs.on_metrics(0, {"loss": 1.0, "nan": float("nan")})
        cbs.on_metrics(1, {"loss": 0.5})
        cbs.on_figure(1, "residual", fig)
        cbs.on_progress(1, 2, "epoch")
        log_config({"method": "_test_linear", "eot": {"p": 0.75}})
        report = Report(rows=[{"metric": "psnr", "value": 40.0}], summary={"psnr": 40.0})
        extra = plt.figure()
        log_report(report, figures={"robustness": extra})
    assert set(plt.get_fignums()) <= open_before  # figures are closed after logging
    client = mlflow.MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.metrics == {"train/loss": 0.5, "psnr": 40.0}
    assert data.params == {"method": "_test_linear", "eot.p": "0.75"}
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
    assert listed == {"figures/residual_0001.png"}
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert listed == {"report/rows.csv", "report/report.json", "report/report.md",
                      "report/robustness.png"}
