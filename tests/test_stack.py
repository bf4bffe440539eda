"""``neuralmark.runtime.stack``: idempotent ZenML bootstrap + MLflow experiment location."""

from __future__ import annotations

from pathlib import Path

from neuralmark.runtime.stack import (
    REGISTRY_NAME,
    STACK_NAME,
    TRACKER_NAME,
    ensure_experiment,
    ensure_stack,
    tracking_uri,
)


def test_tracking_uri_is_absolute_sqlite(tmp_path: Path) -> None:
    uri = tracking_uri(tmp_path)
    assert uri == f"sqlite:///{(tmp_path.resolve() / 'mlflow.db').as_posix()}"
    assert uri.startswith("sqlite:////")


def test_ensure_stack_is_idempotent(tmp_path: Path) -> None:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    first = ensure_stack(tmp_path)
    assert first["initialized"] is True
    assert (tmp_path / ".zen").is_dir()
    assert set(first["registered"]) <= {TRACKER_NAME, REGISTRY_NAME, STACK_NAME}
    assert STACK_NAME in first["registered"] or STACK_NAME in first["updated"]

    second = ensure_stack(tmp_path)
    assert second["initialized"] is False
    assert second["registered"] == [] and second["updated"] == []

    client = Client(root=tmp_path)
    stack = client.active_stack_model
    assert stack.name == STACK_NAME
    names = {t: [c.name for c in cs] for t, cs in stack.components.items()}
    assert names[StackComponentType.EXPERIMENT_TRACKER] == [TRACKER_NAME]
    assert names[StackComponentType.MODEL_REGISTRY] == [REGISTRY_NAME]
    tracker = client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, TRACKER_NAME)
    assert tracker.configuration["tracking_uri"] == tracking_uri(tmp_path)

    # every pipeline's experiment exists with artifacts inside the project, so a plain
    # `zenml pipeline run -c ...` from another directory writes no ./mlruns there
    from mlflow.tracking import MlflowClient

    from neuralmark.runtime.stack import PIPELINE_EXPERIMENTS

    mlflow_client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    for name in PIPELINE_EXPERIMENTS:
        exp = mlflow_client.get_experiment_by_name(name)
        assert exp.artifact_location == (tmp_path.resolve() / "mlruns" / name).as_uri()


def test_ensure_experiment_keeps_artifacts_in_project(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment("nm-test", tmp_path)
    assert ensure_experiment("nm-test", tmp_path) == exp_id
    exp = MlflowClient(tracking_uri=tracking_uri(tmp_path)).get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path.resolve() / "mlruns" / "nm-test").as_uri()


def test_bootstrap_prints_what_happened_and_no_library_chatter(tmp_path: Path) -> None:
    """``python -m neuralmark.runtime.stack`` on a fresh ZenML store and a new project."""
    import os
    import subprocess
    import sys

    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zen-home"),
           "ZENML_REPOSITORY_PATH": str(project)}
    done = subprocess.run([sys.executable, "-m", "neuralmark.runtime.stack", str(project)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert f"ZenML stack {STACK_NAME} active (initialized {project}" in done.stdout
    assert f"mlflow ui --backend-store-uri {tracking_uri(project)}" in done.stdout
    for chatter in ("active stack to default", "Creating initial MLflow database tables",
                    "Updating database tables"):
        assert chatter not in printed
    assert len(printed.strip().splitlines()) == 4


def test_tracker_autolog_warning_is_dropped_and_nothing_else(caplog) -> None:
    import logging

    from neuralmark.runtime.stack import quiet_tracker_warnings

    quiet_tracker_warnings()
    quiet_tracker_warnings()  # idempotent: one filter
    tracker = logging.getLogger(
        "zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker")
    assert len(tracker.filters) == 1
    with caplog.at_level(logging.WARNING, logger=tracker.name):
        tracker.warning("Failed to disable MLflow autologging for the following frameworks: "
                        "['fastai'].")
        tracker.warning("Failed to log metrics")
    assert [r.getMessage() for r in caplog.records] == ["Failed to log metrics"]
