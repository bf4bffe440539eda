"""Compile the pipelines to Kubeflow Pipelines specs offline, with ZenML's own code.

Runs in the Kubeflow environment (``make kfp-venv`` → ``.venv-kfp``; kfp 2.x cannot be
installed beside the main pins)::

    .venv-kfp/bin/python -m neuralmark.pipelines.kfp_spec \\
        --config configs/k8s/pgd_signer.yaml [--config ...] --out build/kfp

writes ``build/kfp/<config name>.yaml``, the KFP IR YAML (``PipelineSpec`` + platform spec)
that ZenML's ``KubeflowOrchestrator.submit_pipeline`` builds for that run config, and
``<config name>.steps.json`` (the snapshot's steps and their upstream steps), and prints one
JSON line per spec. Every pipeline compiles: ``configs/k8s/<method>.yaml`` runs the training
pipeline, ``configs/k8s/<name>_pipeline.yaml`` the pipeline ``name`` (output_mark,
trigger_key, benchmark, data_preparation: ``neuralmark.runtime.k8s_runs.PIPELINES``).
``neuralmark.runtime.kfp_check`` checks it (in any environment).

How, with no ZenML server and no cluster: a throwaway ZenML store (a temporary folder) gets
the stack of ``configs/stacks/kubeflow.yaml`` (validated by
``neuralmark.runtime.remote_stack``; its ZenML secrets are created there with placeholder
values, and a kubeconfig naming the file's ``kubernetes_context`` stands in for the user's);
the pipeline with the run config becomes a real snapshot in that store
(``Pipeline.create_snapshot``: ZenML's compiler, settings resolution, stack validation and
the Docker build record of ``skip_build``); ``Stack.submit_pipeline`` then runs the
orchestrator's own ``submit_pipeline`` (one KFP container component per step, the DAG from
the snapshot, resources from the step settings, ``kfp.compiler.Compiler().compile``). Only
the last call, ``_upload_and_run_pipeline`` (the KFP client talking to the cluster), is
replaced: it keeps the compiled file instead of uploading it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from zenml.utils import source_utils

from neuralmark.components.files import atomic_write_text
from neuralmark.components.methods.base import InputError
from neuralmark.integrations.kubeflow_flavor import FLAVOR as KUBEFLOW_FLAVOR
from neuralmark.runtime.k8s_runs import load_cluster_config, pipeline_of
from neuralmark.runtime.kfp_check import steps_path
from neuralmark.runtime.remote_stack import (
    ensure_remote_stack,
    load_stack_file,
    secret_references,
)

ROOT = Path(__file__).resolve().parents[1]
KUBEFLOW_STACK = ROOT / "configs" / "stacks" / "kubeflow.yaml"
#: the value every ZenML secret of the stack file gets in the throwaway store: compiling
#: reads no secret, and nothing compiled here is ever submitted
PLACEHOLDER_SECRET = "offline-compile-placeholder"


def _kubeconfig(context: str) -> dict[str, Any]:
    """A kubeconfig with one context named ``context`` (the orchestrator's validator lists
    the contexts; nothing connects to the server it names)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:6443"}}],
            "users": [{"name": "offline", "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": "offline",
                                                        "user": "offline"}}]}


@contextlib.contextmanager
def throwaway_stack(stack_file: Path, workdir: Path, flavor: str = KUBEFLOW_FLAVOR,
                    purpose: str = "compile a KFP spec") -> Iterator[Any]:
    """ZenML pointed at a new store in ``workdir`` whose active stack is ``stack_file``'s
    (its orchestrator of flavor ``flavor``, else an ``InputError`` saying it cannot
    ``purpose``).

    Yields the ZenML ``Client``. Environment variables and ZenML's configuration and client
    singletons are put back afterwards.
    """
    # the kubernetes client reads KUBECONFIG once, when it is first imported, and loading
    # the stack file imports it: set the variable first (from the file's plain YAML)
    raw = yaml.safe_load(stack_file.read_text()) if stack_file.is_file() else None
    orchestrator = ((raw or {}).get("components") or {}).get("orchestrator") or {}
    context = (orchestrator.get("config") or {}).get("kubernetes_context")
    env = {"ZENML_CONFIG_PATH": str(workdir / "zen-home"),
           "ZENML_REPOSITORY_PATH": str(workdir / "repo"),
           "KUBECONFIG": str(workdir / "kubeconfig.yaml")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    previous = GlobalConfiguration.get_instance(), Client.get_instance()
    try:
        if context:
            (workdir / "kubeconfig.yaml").write_text(yaml.safe_dump(_kubeconfig(str(context))))
        spec = load_stack_file(stack_file)
        if spec.components["orchestrator"].flavor != flavor:
            raise InputError(f"stack file {stack_file}: components.orchestrator.flavor must be "
                             f"{flavor!r} to {purpose}, got "
                             f"{spec.components['orchestrator'].flavor!r}")
        (workdir / "repo").mkdir()
        GlobalConfiguration._reset_instance()
        Client._reset_instance()
        client = Client()
        secrets: dict[str, dict[str, str]] = {}
        for secret, key in secret_references({c: s.config for c, s in
                                              spec.components.items()}):
            secrets.setdefault(secret, {})[key] = PLACEHOLDER_SECRET
        for secret, values in sorted(secrets.items()):
            client.create_secret(secret, values=values)
        ensure_remote_stack(stack_file, workdir / "repo", activate=True)
        Client._reset_instance()  # the next one reads the repository made above
        client = Client()
        if client.active_stack_model.name != spec.name:
            raise RuntimeError(f"the throwaway ZenML store did not activate {spec.name}")
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        GlobalConfiguration._reset_instance(previous[0])
        Client._reset_instance(previous[1])


def compile_pipeline_spec(config: Path, client: Any) -> tuple[str, dict[str, list[str]]]:
    """The KFP IR YAML ZenML's Kubeflow orchestrator submits for the run config ``config``,
    and the snapshot's steps (invocation → the invocations it waits for).

    ``client`` is a ZenML client whose active stack has the Kubeflow orchestrator
    (``throwaway_stack``). The run config is validated first
    (``load_cluster_config``: settings classes, GPUs per step, cron); its pipeline is
    ``PIPELINES[pipeline_of(config)]`` (``configs/k8s/<name>_pipeline.yaml``, else training).
    """
    cluster = load_cluster_config(config)
    pipeline = source_utils.load(cluster.spec.source).with_options(config_path=str(config))
    snapshot = pipeline.create_snapshot(name=f"kfp-{config.stem}")
    steps = {name: list(step.spec.upstream_steps)
             for name, step in snapshot.step_configurations.items()}
    stack = client.active_stack
    compiled: dict[str, str] = {}

    def keep_instead_of_upload(snapshot: Any, pipeline_file_path: str, run_name: str) -> None:
        compiled["path"] = pipeline_file_path
        return None

    # the orchestrator's KFP client call; everything before it is ZenML's own code
    stack.orchestrator._upload_and_run_pipeline = keep_instead_of_upload
    stack.submit_pipeline(snapshot=snapshot)
    if "path" not in compiled:
        raise RuntimeError(f"ZenML's Kubeflow orchestrator compiled no spec for {config}")
    return Path(compiled["path"]).read_text(), steps


def compile_specs(configs: Sequence[Path], out_dir: Path,
                  stack_file: Path = KUBEFLOW_STACK) -> list[dict[str, Any]]:
    """Compile each run config to ``out_dir/<config stem>.yaml`` and its snapshot's steps to
    ``out_dir/<config stem>.steps.json`` (atomic writes).

    Returns:
        one ``{"config", "spec", "tasks"}`` per config.

    Raises:
        InputError: a missing or invalid run config or stack file (named).
    """
    for config in configs:
        if not Path(config).is_file():
            raise InputError(f"run config {config} does not exist")
    written = []
    with tempfile.TemporaryDirectory(prefix="nm-kfp-") as tmp, \
            throwaway_stack(Path(stack_file), Path(tmp)) as client:
        for config in configs:
            text, steps = compile_pipeline_spec(Path(config), client)
            out = atomic_write_text(Path(out_dir) / f"{Path(config).stem}.yaml", text)
            atomic_write_text(steps_path(out), json.dumps(steps, indent=1, sort_keys=True))
            spec = next(yaml.safe_load_all(text))
            written.append({"config": str(config), "spec": str(out),
                            "pipeline": pipeline_of(config),
                            "tasks": sorted(spec["root"]["dag"]["tasks"])})
    return written


def run_cli(argv: list[str] | None, *, prog: str, description: str, what: str,
            stack: Path, build: Any) -> int:
    """The command line of an offline build (``kfp_spec``, ``cron_spec``): ``--config``
    (repeatable), ``--out``, ``--stack``; one JSON line per config from ``build(configs,
    out, stack)``; exit 2 with the error on bad input."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action="append", required=True, type=Path,
                        help="cluster run config (configs/k8s/<method>.yaml or "
                             "<name>_pipeline.yaml); repeatable")
    parser.add_argument("--out", required=True, type=Path, help=f"folder for {what}")
    parser.add_argument("--stack", type=Path, default=stack,
                        help=f"stack file (default: {stack.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    try:
        for row in build(args.config, args.out, args.stack):
            print(json.dumps(row))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, prog="python -m neuralmark.pipelines.kfp_spec",
                   description="Compile the pipelines to KFP pipeline specs (IR YAML) offline "
                               "through ZenML's Kubeflow orchestrator.",
                   what="<config name>.yaml and .steps.json", stack=KUBEFLOW_STACK,
                   build=compile_specs)


if __name__ == "__main__":
    sys.exit(main())
