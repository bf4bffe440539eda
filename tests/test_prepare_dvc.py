"""The data-preparation pipeline end to end with DVC on, in an isolated project.

One pipeline run (ZenML's fixed cost is several seconds): prepare CIFAR-10 from
its published tarball, validate it with GX, ``dvc add data`` + push to a local
remote. Checks ``data.dvc``, the remote's content, and that the MLflow run
links the validation report (artifact, tag ``validation_report``, description).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.test_prepare import CIFAR_N, _cifar_members, _write_tar


def _in_remote(remote: Path, md5: str) -> bool:
    """DVC 3 layout: ``<remote>/files/md5/<first 2>/<rest>``."""
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """A git + DVC project (local default remote) with its own ZenML store and MLflow db."""
    from dvc.repo import Repo

    from tests.isolation import isolated_zenml_project

    base = tmp_path_factory.mktemp("nm-prep-dvc")
    root, remote = base / "project", base / "remote"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    with Repo.init(str(root)) as repo, repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["site_cache_dir"] = str(base / "site-cache")
        conf["core"]["remote"] = "local"
        conf["remote"]["local"] = {"url": str(remote)}
    with isolated_zenml_project(root):
        yield root, remote


@pytest.mark.pipeline
def test_prepare_versions_with_dvc_and_links_the_report(dvc_project, tmp_path):
    import mlflow
    from zenml.client import Client

    from neuralmark.integrations.run_context import REPORT_ARTIFACT, REPORT_TAG
    from neuralmark.pipelines.data_preparation import PIPELINE_NAME, run_data_preparation
    from neuralmark.runtime.stack import tracking_uri

    root, remote = dvc_project
    tarball = _write_tar(tmp_path / "cifar-10-python.tar.gz", _cifar_members())
    result = run_data_preparation("cifar10", tarball, project_root=root,
                                  config={"workers": 1, "version_with_dvc": True})
    assert result["status"] == "completed"
    assert result["report"]["counts"] == {"train": {"image": 5 * CIFAR_N},
                                          "test": {"image": CIFAR_N}}

    # DVC: data.dvc records data/ (a .dir md5), every prepared file is in the remote
    dvc_file = yaml.safe_load((root / "data.dvc").read_text())
    (out,) = dvc_file["outs"]
    assert out["path"] == "data" and out["md5"].endswith(".dir")
    assert out["nfiles"] == 6 * CIFAR_N + 2  # PNGs + manifest.csv + .prepared.json
    assert _in_remote(remote, out["md5"])
    pngs = sorted((root / "data" / "cifar10").rglob("*.png"))
    assert len(pngs) == 6 * CIFAR_N
    assert all(_in_remote(remote, hashlib.md5(p.read_bytes()).hexdigest()) for p in pngs)
    assert "/data" in (root / ".gitignore").read_text().split()  # the data stays out of git
    run = Client().get_pipeline_run(result["run"])
    assert run.steps["version"].outputs["dvc_md5"][0].load() == out["md5"]
    assert run.steps["validate"].outputs["validation_html"][0].load().startswith("<!doctype html>")

    # MLflow: the report is an artifact of the validate step's run, tagged and described
    client = mlflow.MlflowClient(tracking_uri(root))
    experiment = client.get_experiment_by_name(PIPELINE_NAME)
    runs = client.search_runs([experiment.experiment_id])
    (mlrun,) = [r for r in runs if REPORT_TAG in r.data.tags]
    assert mlrun.data.tags[REPORT_TAG] == REPORT_ARTIFACT == "data_validation/validation.html"
    assert mlrun.data.tags["validation_success"] == "true"
    note = mlrun.data.tags["mlflow.note.content"]
    assert "Data validation of `cifar10` passed" in note and REPORT_ARTIFACT in note
    listed = {a.path for a in client.list_artifacts(mlrun.info.run_id, "data_validation")}
    assert REPORT_ARTIFACT in listed
    local = client.download_artifacts(mlrun.info.run_id, REPORT_ARTIFACT, str(tmp_path))
    assert "PASSED" in Path(local).read_text()

    # unchanged input: the prepare step is a cache hit and DVC records the same version
    again = run_data_preparation("cifar10", tarball, project_root=root,
                                 config={"workers": 1, "version_with_dvc": True})
    assert again["cached"]
    assert yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"] == out["md5"]


def test_run_description_says_when_targets_are_approximated(tmp_path):
    """``link_report_from_run`` on a ChestX-ray8 report, in a throw-away MLflow store."""
    import mlflow

    from neuralmark.integrations.run_context import (
        REPORT_ARTIFACT,
        REPORT_TAG,
        link_report_from_run,
    )
    from neuralmark.integrations.validation import DataValidationReport
    from tests.isolation import _mlflow_state, _restore_mlflow

    report = DataValidationReport(success=False, results=[
        {"expectation": "pair_complete", "type": "expect_column_values_to_be_in_set",
         "column": "pair_complete", "success": False, "details": {}}],
        stats={"dataset": "chestxray8_debone", "rows": 18, "rows_per_split": {"train": 18},
               "target_kind": {"classical-approximation": 9}})
    state = _mlflow_state()
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        # an explicit experiment: another test's active experiment id means nothing here
        experiment = mlflow.MlflowClient().create_experiment(
            "link-test", artifact_location=(tmp_path / "mlruns").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            link_report_from_run(report)
        tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    finally:
        _restore_mlflow(state)
    assert tags[REPORT_TAG] == REPORT_ARTIFACT and tags["validation_success"] == "false"
    note = tags["mlflow.note.content"]
    assert "`chestxray8_debone` FAILED (pair_complete)" in note
    assert "{'classical-approximation': 9} — classical approximation, not real targets." in note
