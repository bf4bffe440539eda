"""The float path a figure depends on: ``components.environment`` names it, and every MLflow run
the pipelines open carries it as ``env.*`` tags."""

from __future__ import annotations

import importlib
import platform

import pytest
import torch

from neuralmark.components.environment import FLOAT_PATH_VARIABLES, cpu_model, environment

PIPELINES = {
    "benchmark": "benchmark_pipeline",
    "training": "training_pipeline",
    "output_mark": "output_mark_pipeline",
    "trigger_key": "trigger_key_pipeline",
    "data_preparation": "data_preparation_pipeline",
}


def test_environment_names_this_process_float_path(monkeypatch):
    for name in FLOAT_PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = environment()
    assert env["torch"] == torch.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["python"] == platform.python_version()
    assert env["threads"] == str(torch.get_num_threads())
    assert env["cpu"] == cpu_model() and env["cpu"]
    assert not set(FLOAT_PATH_VARIABLES) & set(env)  # unset variables are not recorded
    assert ("cuda" in env) == torch.cuda.is_available()
    assert all(isinstance(v, str) for v in env.values())


def test_set_variables_are_recorded_under_their_names(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env = environment()
    assert env["ATEN_CPU_CAPABILITY"] == "default"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_cpu_model_reads_the_first_model_name_else_falls_back(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9454\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9454\n"
    )
    assert cpu_model(info) == "AMD EPYC 9454"
    assert cpu_model(tmp_path / "absent") == (platform.processor() or "unknown")
    info.write_text("processor\t: 0\nmodel name\t:\n")  # empty name: fall back
    assert cpu_model(info) == (platform.processor() or "unknown")


def test_record_environment_tags_the_active_run_and_starts_none(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from neuralmark.integrations.tracking import record_environment
    from tests.isolation import mlflow_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_store(uri):
        experiment_id = mlflow.create_experiment("env", artifact_location=tmp_path.as_uri())
        record_environment()  # no active run: nothing is logged, no run is started
        assert mlflow.active_run() is None
        assert MlflowClient(uri).search_runs([experiment_id]) == []
        with mlflow.start_run(experiment_id=experiment_id) as run:
            record_environment()
        tags = MlflowClient(uri).get_run(run.info.run_id).data.tags
    expected = {f"env.{k}": v for k, v in environment().items()}
    assert {k: v for k, v in tags.items() if k.startswith("env.")} == expected


@pytest.mark.parametrize("module", sorted(PIPELINES))
def test_every_pipeline_runs_record_environment_as_its_steps_start_hook(module):
    pipe = getattr(importlib.import_module(f"neuralmark.pipelines.{module}"), PIPELINES[module])
    source = pipe.configuration.start_hook_source
    assert source is not None, f"{module}: no on_start hook"
    assert source.import_path == "neuralmark.integrations.tracking.record_environment"
