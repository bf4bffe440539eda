"""Run ZenML pipelines in tests without touching any other ZenML or MLflow state."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _mlflow_state() -> tuple[Any, dict[str, str | None]]:
    import mlflow

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return mlflow.get_tracking_uri(), env


def _restore_mlflow(state: tuple[Any, dict[str, str | None]]) -> None:
    """Put MLflow's URIs back through its public setters.

    ``mlflow.set_registry_uri`` exports ``MLFLOW_REGISTRY_URI`` whenever it sets one, so
    the variable says whether a registry URI was set: set it again, or clear it (the
    registry then follows the tracking URI again).
    """
    import mlflow

    tracking, env = state
    mlflow.set_registry_uri(env["MLFLOW_REGISTRY_URI"])
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    mlflow.set_tracking_uri(tracking)


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[str]:
    """Point MLflow (tracking, and the registry with it) at ``uri`` inside the block.

    What this process's CLI and ``mlflow.pyfunc.load_model`` read, as a user's
    ``MLFLOW_TRACKING_URI`` would; MLflow's URIs are put back afterwards.
    """
    import mlflow

    state = _mlflow_state()
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    mlflow.set_registry_uri(None)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        _restore_mlflow(state)


@contextlib.contextmanager
def isolated_zenml_project(root: Path) -> Iterator[Path]:
    """A project at ``root`` with its own ZenML store, put back as it was afterwards.

    ZenML's global configuration and client singletons are swapped for ones
    reading ``<root>/.zen-home`` and ``<root>/.zen``, so a stack registered here
    is invisible to other test modules; MLflow's URIs are restored too.
    """
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    mlflow_state = _mlflow_state()
    previous = GlobalConfiguration.get_instance(), Client.get_instance()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZENML_CONFIG_PATH", str(root / ".zen-home"))
        mp.setenv("ZENML_REPOSITORY_PATH", str(root))
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        GlobalConfiguration._reset_instance()
        Client._reset_instance()  # the next Client() looks at ZENML_REPOSITORY_PATH only
        try:
            yield root
        finally:
            GlobalConfiguration._reset_instance(previous[0])
            Client._reset_instance(previous[1])
            _restore_mlflow(mlflow_state)


@contextlib.contextmanager
def pipeline_project(root: Path) -> Iterator[Path]:
    """``isolated_zenml_project`` run on one torch thread, put back afterwards.

    The pipeline tests share the machine with the rest of the suite, and one thread makes
    a run's numbers the same from run to run.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with isolated_zenml_project(root):
            yield root
    finally:
        torch.set_num_threads(threads)
