"""Shared test setup: no telemetry, no network, an isolated ZenML/MLflow home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports zenml/mlflow/dvc.
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
_ZEN_HOME = tempfile.mkdtemp(prefix="nm-test-zenml-")
os.environ["ZENML_CONFIG_PATH"] = _ZEN_HOME  # never touch the user's ZenML store
# ...nor this checkout's .zen/: ZenML would otherwise find the repo's .zen/ from the
# working directory and reset its active stack to one the isolated store knows
os.environ["ZENML_REPOSITORY_PATH"] = _ZEN_HOME

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one intra-op thread each, or the workers' thread
    # pools oversubscribe the cores (DDP tests set their own processes' threads).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread while a module's tests run (the machine is shared), then
    the previous count back. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph shipped with scikit-image (H×W×3 uint8)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture()
def photo_batch(photo) -> torch.Tensor:
    """Two 96×128 crops of a real photo as a 2×3×96×128 float batch in [0, 1]."""
    x = torch.from_numpy(photo[100:196, 150:278]).permute(2, 0, 1).float() / 255
    y = torch.from_numpy(photo[300:396, 200:328]).permute(2, 0, 1).float() / 255
    return torch.stack([x, y])


@pytest.fixture(scope="session")
def registered_models(tmp_path_factory):
    """A real MLflow store with every content method registered and promoted
    (``tests/registry_models.py``); shared by the registry and serving tests."""
    from tests.registry_models import register_all

    return register_all(tmp_path_factory.mktemp("nm-registry"))
