"""The CronJob ZenML's Kubernetes orchestrator creates for a scheduled run, produced offline.

Runs in the Kubeflow environment (``.venv-kfp``: it has the S3 artifact store's ``s3fs``,
which the remote stack file names and the main environment does not install)::

    .venv-kfp/bin/python -m neuralmark.pipelines.cron_spec \\
        --config configs/k8s/pgd_signer_weekly.yaml --out build/k8s

writes ``build/k8s/<config name>.cronjob.yaml`` (the CronJob, as the API server would receive
it) and ``<config name>.steps.json`` (the scheduled snapshot's steps → the steps each waits
for), and prints one JSON line per config. ``kubernetes-validate`` checks the manifest in any
environment (``tests/test_cron_spec.py``).

How, with no ZenML server and no cluster: the same throwaway ZenML store as
``neuralmark.pipelines.kfp_spec`` (``throwaway_stack``), holding the stack of
``configs/stacks/k8s.yaml`` (ZenML's Kubernetes orchestrator); the run config, with its
``schedule.cron_expression``, runs its pipeline as ``zenml pipeline run -c`` does (the
pipeline called with ``config_path``: ZenML's compiler, settings resolution, stack
validation, the schedule registered in the store, a real snapshot, then ZenML's own
``KubernetesOrchestrator.submit_pipeline``: orchestrator pod, Job,
``build_cron_job_manifest``). Only the API client's last call,
``BatchV1Api.create_namespaced_cron_job``, is replaced: it keeps the body it is given
instead of sending it; and ``Stack.prepare_pipeline_submission`` validates the stack
without its refusal of a local ZenML store (a remote stack needs a server to *run*; the
store here only has to hold the snapshot). The steps come from the snapshot the CronJob names
(``--snapshot_id``), read back from the store. Unlike ``neuralmark.runtime.k8s_runs.
cron_job`` (which calls ZenML's manifest builders in the orchestrator's order), nothing here
re-states what the orchestrator does.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import yaml
from zenml.utils import source_utils

from neuralmark.components.files import atomic_write_text
from neuralmark.components.methods.base import InputError
from neuralmark.pipelines.kfp_spec import ROOT, run_cli, throwaway_stack
from neuralmark.runtime.k8s_runs import load_cluster_config, pipeline_of

K8S_STACK = ROOT / "configs" / "stacks" / "k8s.yaml"


def scheduled_cron_job(config: Path, client: Any) -> tuple[dict[str, Any], str,
                                                          dict[str, list[str]]]:
    """The CronJob body ZenML's Kubernetes orchestrator sends for the scheduled run config.

    Args:
        config: a cluster run config with ``schedule.cron_expression``.
        client: a ZenML client whose active stack has the Kubernetes orchestrator
            (``throwaway_stack``).

    Returns:
        ``(cron job as a dict, its namespace, the snapshot's steps → upstream steps)``.

    Raises:
        InputError: the config is invalid (named) or has no schedule.
    """
    from kubernetes.client import ApiClient, BatchV1Api
    from zenml.constants import ENV_ZENML_DISABLE_PIPELINE_LOGS_STORAGE
    from zenml.stack import Stack

    cluster = load_cluster_config(config)
    if cluster.schedule is None:
        raise InputError(f"{config} has no schedule: add schedule.cron_expression")
    pipeline = source_utils.load(cluster.spec.source).with_options(config_path=str(config))
    sent: list[tuple[Any, str]] = []

    def keep_instead_of_create(api: Any, namespace: str, body: Any, **_: Any) -> Any:
        sent.append((body, namespace))
        return SimpleNamespace(metadata=SimpleNamespace(name=body.metadata.name))

    def validate_without_a_server(stack: Any, snapshot: Any) -> None:
        # ZenML's check minus its last line: a remote stack needs a ZenML server, and
        # this store is a throwaway local one
        stack.validate(fail_if_secrets_missing=True)

    # what `zenml pipeline run ... -c config` does: the pipeline called with its run config
    # (snapshot, schedule registered in the store, submission); the Kubernetes API call is
    # kept instead of sent, and any other call to the cluster fails (no server)
    # (the client's logs would go to the stack's S3 bucket: none here)
    with mock.patch.object(BatchV1Api, "create_namespaced_cron_job", keep_instead_of_create), \
            mock.patch.object(Stack, "prepare_pipeline_submission", validate_without_a_server), \
            mock.patch.dict(os.environ, {ENV_ZENML_DISABLE_PIPELINE_LOGS_STORAGE: "true"}):
        pipeline()
    if len(sent) != 1:
        raise RuntimeError(f"ZenML's Kubernetes orchestrator created {len(sent)} CronJobs for "
                           f"{config}, expected 1")
    body, namespace = sent[0]
    cron = ApiClient().sanitize_for_serialization(body)
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = container.get("args") or []
    snapshot = client.get_snapshot(args[args.index("--snapshot_id") + 1])
    if snapshot.schedule is None or snapshot.schedule.cron_expression != \
            cluster.schedule.cron_expression:
        raise RuntimeError(f"the CronJob's snapshot {snapshot.id} is not the scheduled run")
    steps = {name: list(step.spec.upstream_steps)
             for name, step in snapshot.step_configurations.items()}
    return cron, namespace, steps


def cron_specs(configs: Sequence[Path], out_dir: Path,
               stack_file: Path = K8S_STACK) -> list[dict[str, Any]]:
    """Write ``out_dir/<config stem>.cronjob.yaml`` and ``.steps.json`` per run config.

    Raises:
        InputError: a missing or invalid run config or stack file (named).
    """
    for config in configs:
        if not Path(config).is_file():
            raise InputError(f"run config {config} does not exist")
    written = []
    with tempfile.TemporaryDirectory(prefix="nm-cron-") as tmp, \
            throwaway_stack(Path(stack_file), Path(tmp), flavor="kubernetes",
                            purpose="build a CronJob") as client:
        for config in configs:
            cron, namespace, steps = scheduled_cron_job(Path(config), client)
            stem = Path(config).stem
            out = atomic_write_text(Path(out_dir) / f"{stem}.cronjob.yaml",
                                    yaml.safe_dump(cron, sort_keys=False))
            atomic_write_text(Path(out_dir) / f"{stem}.steps.json",
                              json.dumps(steps, indent=1, sort_keys=True))
            written.append({"config": str(config), "pipeline": pipeline_of(config),
                            "cronjob": str(out), "namespace": namespace,
                            "schedule": cron["spec"]["schedule"]})
    return written


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, prog="python -m neuralmark.pipelines.cron_spec",
                   description="Build, offline, the CronJob ZenML's Kubernetes orchestrator "
                               "creates for a scheduled cluster run config.",
                   what="<config name>.cronjob.yaml and .steps.json", stack=K8S_STACK,
                   build=cron_specs)


if __name__ == "__main__":
    sys.exit(main())
