"""Scheduled retraining offline: the CronJob ZenML's Kubernetes orchestrator creates, through
its own code path (``neuralmark.pipelines.cron_spec``), validated, and the scheduled run's
steps gated.

The build runs in the Kubeflow environment (``.venv-kfp``: the remote stack's S3 artifact
store needs ``s3fs``, which only that environment installs), importing this checkout's code
(``tests.kfp_env``); the checks run here.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.k8s_runs import K8S_CONFIGS_DIR, load_cluster_config
from neuralmark.runtime.manifests import KUBERNETES_VERSION
from tests.kfp_env import run_module

WEEKLY = K8S_CONFIGS_DIR / "pgd_signer_weekly.yaml"
IMAGE = "registry.example.com/neuralmark:0.1.0"


def _ancestors(steps: dict[str, list[str]], step: str) -> set[str]:
    seen: set[str] = set()
    todo = list(steps[step])
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += steps[s]
    return seen


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict, dict[str, list[str]], dict]:
    """(CronJob, the scheduled snapshot's steps, the JSON row), built in ``.venv-kfp`` from
    this checkout's code (``tests.kfp_env``)."""
    out = tmp_path_factory.mktemp("cron")
    proc = run_module("neuralmark.pipelines.cron_spec",
                      ["--config", str(WEEKLY), "--out", str(out)],
                      tmp_path_factory.mktemp("pythonpath"))
    row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    cron = yaml.safe_load(Path(row["cronjob"]).read_text())
    steps = json.loads((out / "pgd_signer_weekly.steps.json").read_text())
    return cron, steps, row


def test_zenml_builds_a_valid_cronjob_for_the_schedule(built):
    cron, _, row = built
    config = load_cluster_config(WEEKLY)
    kubernetes_validate.validate(cron, KUBERNETES_VERSION, strict=True)
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    assert cron["spec"]["schedule"] == config.schedule.cron_expression == row["schedule"]
    assert row["namespace"] == "neuralmark-pipelines" and row["pipeline"] == "training"
    # the pipeline's CronJob settings, as configured
    assert cron["spec"]["concurrencyPolicy"] == config.pipeline.concurrency_policy == "Forbid"
    assert cron["spec"]["successfulJobsHistoryLimit"] == 3
    assert cron["spec"]["failedJobsHistoryLimit"] == 3
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "zenml-orchestrator"
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    # ZenML's orchestrator entrypoint on the scheduled snapshot: every run starts the
    # pipeline's steps as their own pods
    assert container["command"][-1].endswith("kubernetes_orchestrator_entrypoint")
    assert "--snapshot_id" in container["args"]


def test_every_scheduled_run_passes_the_gate_before_the_registry(built):
    """The scheduled snapshot (the one the CronJob runs) has the gate between evaluation and
    the registry step, which takes the gate's decision as input: a failing gate's decision
    registers a challenger without moving ``champion``, and a run whose gate or any earlier
    step crashes never reaches the registry step (the decision and the alias themselves:
    tests/test_gate.py, tests/test_model_registry.py)."""
    _, steps, _ = built
    assert "gate" in steps["register_and_promote"]
    assert {"build_dataset", "validate_dataset", "train_model", "sign_heldout",
            "evaluate_robustness", "gate"} <= _ancestors(steps, "register_and_promote")
    assert "evaluate_robustness" in steps["gate"]
    # the same steps as the unscheduled run (the schedule changes nothing else)
    assert set(steps) == set(load_cluster_config(K8S_CONFIGS_DIR / "pgd_signer.yaml").steps)


def test_missing_config_and_wrong_stack_are_refused(tmp_path):
    """Named before any ZenML store is touched (no .venv-kfp needed to refuse)."""
    from neuralmark.pipelines.cron_spec import cron_specs

    with pytest.raises(InputError, match=r"run config .*nope\.yaml does not exist"):
        cron_specs([tmp_path / "nope.yaml"], tmp_path / "out")
    from neuralmark.runtime.settings import CONFIGS_DIR

    with pytest.raises(InputError, match=r"components\.orchestrator\.flavor must be "
                                         r"'kubernetes' to build a CronJob, got 'nm_kubeflow'"):
        cron_specs([WEEKLY], tmp_path / "out", CONFIGS_DIR / "stacks" / "kubeflow.yaml")
    assert not (tmp_path / "out").exists()
