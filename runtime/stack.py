"""Idempotent bootstrap of the local ZenML stack and the MLflow store.

``ensure_stack(project_root)`` does what these CLI commands would, but only the
parts that are missing (ZenML's store is per *user*, so names collide across
checkouts and test runs; ``register`` of an existing name fails):

    zenml init
    zenml experiment-tracker register nm_mlflow_tracker --flavor=mlflow \\
        --tracking_uri=sqlite:////ABS/PROJECT/mlflow.db
    zenml model-registry register nm_mlflow_registry --flavor=mlflow
    zenml stack register neuralmark_local -o default -a default \\
        -e nm_mlflow_tracker -r nm_mlflow_registry --set

Run ``python -m neuralmark.runtime.stack [PROJECT_ROOT]`` to bootstrap and print the
``mlflow ui`` command for this project. ``--stack configs/stacks/k8s.yaml`` registers a
remote stack from a file instead (``neuralmark.runtime.remote_stack``); the local stack
stays the default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neuralmark.runtime.names import REGISTRY_NAME, STACK_NAME, TRACKER_NAME

MLFLOW_FLAVOR = "mlflow"
#: MLflow experiments (ZenML's tracker names them after the pipeline) created by
#: ``ensure_stack`` with artifacts inside the project, so that
#: ``zenml pipeline run ...`` from any working directory never scatters ``./mlruns``.
PIPELINE_EXPERIMENTS = ("training_pipeline", "data_preparation_pipeline",
                        "output_mark_pipeline")

logger = logging.getLogger(__name__)

#: ZenML's source root while neuralmark pipelines are compiled and run: a folder that holds
#: no Python. ZenML names an object in a file under its source root by the file's path
#: (``steps/training.py`` → ``steps.training``), which is not how neuralmark installs
#: (``neuralmark.steps.training``): the same module would be imported twice under two
#: names (seen: "method 'output_mark' is registered twice"). With no code under the source
#: root, ZenML names every neuralmark object by its import name, in a checkout and in an
#: installed wheel alike; remote images install the package.
SOURCE_ROOT = Path(__file__).resolve().parents[1] / "configs"


#: ZenML's MLflow tracker, which after every step tries to switch off MLflow's autologging for
#: eight frameworks and warns about those whose MLflow module fails to import (fastai here).
#: neuralmark never switches autologging on, so the warning says nothing to our users.
_TRACKER_LOGGER = "zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker"
_AUTOLOG_WARNING = "Failed to disable MLflow autologging"
#: what the bootstrap makes libraries say that is not news to a user of ``ensure_stack``:
#: ZenML choosing its default stack on a fresh store (``ensure_stack`` activates ours right
#: after) and MLflow creating the tables of a new ``mlflow.db``
_BOOTSTRAP_CHATTER = {
    "zenml.zen_stores.base_zen_store": ("Setting the %s active stack to default.",),
    "mlflow.store.db.utils": ("Creating initial MLflow database tables",
                              "Updating database tables"),
}


class _DropMessages(logging.Filter):
    """Drops log records whose message (format string) starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_tracker_warnings() -> None:
    """Silence the MLflow tracker's autologging warning (idempotent; other records pass)."""
    tracker_logger = logging.getLogger(_TRACKER_LOGGER)
    if not any(isinstance(f, _DropMessages) and f.prefixes == (_AUTOLOG_WARNING,)
               for f in tracker_logger.filters):
        tracker_logger.addFilter(_DropMessages(_AUTOLOG_WARNING))


@contextlib.contextmanager
def _without_bootstrap_chatter() -> Iterator[None]:
    """While the block runs, drop the ``_BOOTSTRAP_CHATTER`` records (and only those)."""
    added = [(logging.getLogger(name), _DropMessages(*prefixes))
             for name, prefixes in _BOOTSTRAP_CHATTER.items()]
    for target, drop in added:
        target.addFilter(drop)
    try:
        yield
    finally:
        for target, drop in added:
            target.removeFilter(drop)


def use_import_names() -> None:
    """Make ZenML refer to neuralmark's steps, materializers and types by import name.

    Called when ``neuralmark.pipelines`` is imported (before any pipeline compiles), so
    ``zenml pipeline run neuralmark.pipelines.…`` and the ``neuralmark`` CLI agree.
    """
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(SOURCE_ROOT))


def tracking_uri(project_root: str | Path) -> str:
    """The MLflow tracking URI of a project: its ``mlflow.db`` (absolute sqlite URI).

    Args:
        project_root: the project directory.

    Returns:
        ``sqlite:////<abs project_root>/mlflow.db``.
    """
    db = Path(project_root).resolve() / "mlflow.db"
    return f"sqlite:///{db.as_posix()}"


def artifact_location(name: str, project_root: str | Path) -> str:
    """File URI where the runs of experiment ``name`` keep their artifacts.

    Args:
        name: MLflow experiment name.
        project_root: the project directory.

    Returns:
        ``file:///<abs project_root>/mlruns/<name>``.
    """
    return (Path(project_root).resolve() / "mlruns" / name).as_uri()


def ensure_experiment(name: str, project_root: str | Path) -> str:
    """Get or create MLflow experiment ``name`` with artifacts inside the project.

    With a sqlite backend MLflow would otherwise put artifacts under ``./mlruns``
    of whatever the working directory is at creation time. The experiment is
    created in the project's tracking store (``tracking_uri(project_root)``)
    without changing the process-wide tracking URI.

    Args:
        name: experiment name (ZenML's MLflow tracker uses the pipeline name
            unless ``experiment_name`` is set in its settings).
        project_root: the project directory.

    Returns:
        The experiment id.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(project_root))
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        wanted = artifact_location(name, project_root)
        if existing.artifact_location != wanted:
            logger.warning("MLflow experiment %r keeps artifacts at %s, not %s",
                           name, existing.artifact_location, wanted)
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(name, project_root))


def ensure_stack(project_root: str | Path) -> dict[str, Any]:
    """Make ``project_root`` a ZenML repository with the ``neuralmark_local`` stack active.

    Looks everything up before registering, so a second call changes nothing.
    A tracker of the same name left by another checkout (the ZenML store is
    per user) is re-pointed at this project's ``mlflow.db``.

    Args:
        project_root: the repository root (where ``.zen/`` lives or will live).

    Returns:
        What happened: ``initialized`` (bool), ``registered`` / ``updated``
        (component and stack names), ``active_stack``, ``tracking_uri``,
        ``repository`` (path). Also creates the MLflow experiments of
        ``PIPELINE_EXPERIMENTS`` (artifacts under ``<root>/mlruns``).
    """
    with _without_bootstrap_chatter():
        return _ensure_stack(Path(project_root).resolve())


def _ensure_stack(root: Path) -> dict[str, Any]:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    uri = tracking_uri(root)
    report: dict[str, Any] = {"initialized": False, "registered": [], "updated": [],
                              "active_stack": STACK_NAME, "tracking_uri": uri,
                              "repository": str(root)}

    if not Client.is_repository_directory(root):
        Client.initialize(root=root)
        report["initialized"] = True
    # An anonymous client rooted at the project: the process-wide singleton
    # (and its source root) is left alone; the active stack is written to
    # ``<root>/.zen/config.yaml``.
    client = Client(root=root)

    def ensure_component(name: str, ctype: StackComponentType, config: dict[str, str]) -> None:
        try:
            comp = client.get_stack_component(ctype, name, allow_name_prefix_match=False)
        except KeyError:
            client.create_stack_component(name=name, flavor=MLFLOW_FLAVOR, component_type=ctype,
                                          configuration=config)
            report["registered"].append(name)
            return
        if comp.flavor_name != MLFLOW_FLAVOR:
            raise RuntimeError(f"ZenML component {name!r} exists with flavor "
                               f"{comp.flavor_name!r}, expected {MLFLOW_FLAVOR!r}")
        if any(comp.configuration.get(k) != v for k, v in config.items()):
            logger.warning("re-pointing ZenML component %s at %s", name, config)
            client.update_stack_component(name, ctype, configuration=config)
            report["updated"].append(name)

    ensure_component(TRACKER_NAME, StackComponentType.EXPERIMENT_TRACKER, {"tracking_uri": uri})
    ensure_component(REGISTRY_NAME, StackComponentType.MODEL_REGISTRY, {})

    wanted = {
        StackComponentType.ORCHESTRATOR: "default",
        StackComponentType.ARTIFACT_STORE: "default",
        StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
        StackComponentType.MODEL_REGISTRY: REGISTRY_NAME,
    }
    try:
        stack = client.get_stack(STACK_NAME, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=STACK_NAME, components=wanted)
        report["registered"].append(STACK_NAME)
    else:
        have = {ctype: [c.name for c in comps] for ctype, comps in stack.components.items()}
        if any(have.get(ctype) != [name] for ctype, name in wanted.items()):
            client.update_stack(STACK_NAME, component_updates=wanted)
            report["updated"].append(STACK_NAME)

    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
    for experiment in PIPELINE_EXPERIMENTS:
        ensure_experiment(experiment, root)
    # Keep the process-wide client in step when it is rooted at this project.
    singleton = Client()
    if singleton.root is not None and singleton.root.resolve() == root \
            and singleton.active_stack_model.name != STACK_NAME:
        singleton.activate_stack(STACK_NAME)
    return report


def mlflow_ui_command(project_root: str | Path, port: int = 5055) -> str:
    """The command that serves the project's MLflow UI on localhost."""
    return (f"mlflow ui --backend-store-uri {tracking_uri(project_root)} "
            f"--host 127.0.0.1 --port {port} --workers 1")


def main(argv: list[str] | None = None) -> None:
    """``python -m neuralmark.runtime.stack [PROJECT_ROOT]``: bootstrap and print what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project_root", nargs="?", default=Path(__file__).resolve().parents[1],
                        type=Path, help="repository root (default: this checkout)")
    parser.add_argument("--json", action="store_true", help="print what happened as JSON")
    parser.add_argument("--stack", type=Path, default=None,
                        help="a remote stack file (configs/stacks/k8s.yaml, kubeflow.yaml) to "
                             "register instead of the local stack")
    parser.add_argument("--activate", action="store_true",
                        help="with --stack: make it the active stack (default: unchanged)")
    args = parser.parse_args(argv)
    if args.stack is not None:
        from neuralmark.components.methods.base import InputError
        from neuralmark.runtime.remote_stack import ensure_remote_stack

        try:
            with _without_bootstrap_chatter():
                remote = ensure_remote_stack(args.stack, args.project_root,
                                             activate=args.activate)
        except InputError as err:
            parser.exit(2, f"error: {err}\n")
        if args.json:
            print(json.dumps(remote, indent=2))
            return
        changes = [*(f"registered {n}" for n in remote["registered"]),
                   *(f"updated {n}" for n in remote["updated"])]
        print(f"ZenML stack {remote['stack']} ({'; '.join(changes) or 'unchanged'}); "
              f"active: {remote['active_stack']}")
        return
    done = ensure_stack(args.project_root)
    if args.json:
        print(json.dumps(done, indent=2))
        return
    changes = [*(f"registered {name}" for name in done["registered"]),
               *(f"updated {name}" for name in done["updated"])]
    if done["initialized"]:
        changes.insert(0, f"initialized {done['repository']}")
    print(f"ZenML stack {done['active_stack']} active ({'; '.join(changes) or 'unchanged'})")
    print(f"MLflow tracking: {done['tracking_uri']}")
    print("MLflow UI (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false recommended):")
    print("  " + mlflow_ui_command(args.project_root))


if __name__ == "__main__":
    main()
