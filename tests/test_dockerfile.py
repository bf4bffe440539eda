"""The Dockerfile installs what pyproject.toml pins, as a non-root user, on a CUDA base."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _pins() -> dict[str, str]:
    """``name -> version`` of every ``name==version`` dependency of pyproject.toml."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, flags=re.M))


def test_torch_pins_match():
    pins, args = _pins(), _args()
    assert pins["torch"] == args["TORCH_VERSION"], "Dockerfile TORCH_VERSION != pyproject"
    assert pins["torchvision"] == args["TORCHVISION_VERSION"]
    assert '"torch==${TORCH_VERSION}"' in DOCKERFILE
    assert '"torchvision==${TORCHVISION_VERSION}"' in DOCKERFILE


def test_every_pin_written_in_the_dockerfile_matches_pyproject():
    """A ``name==version`` (or ``ARG NAME_VERSION=``) in the Dockerfile equals pyproject's pin."""
    pins = _pins()
    written = dict((n.lower(), v) for n, v in
                   re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"'\]]*)", DOCKERFILE))
    written |= {name[: -len("_VERSION")].lower(): v for name, v in _args().items()
                if name.endswith("_VERSION") and name[: -len("_VERSION")].lower() in pins}
    assert {"torch", "torchvision"} <= set(written), "no pins found in the Dockerfile"
    for name, version in written.items():
        if name in pins:
            assert version == pins[name], f"Dockerfile pins {name}=={version}, " \
                                          f"pyproject {pins[name]}"


def test_project_installed_from_pyproject_with_the_remote_extra():
    assert re.search(r'uv pip install --no-cache "\.\[remote\]"', DOCKERFILE)
    assert "COPY pyproject.toml" in DOCKERFILE
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert {"remote", "kubeflow"} <= set(extras)


def test_python_version_fits_requires_python():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    assert _args()["PYTHON_VERSION"].startswith("3.11.")


def test_cuda_base_and_non_root_user():
    base = _args()["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:") and "runtime" in base and not base.endswith("latest")
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_data_and_secrets_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "mlruns", "mlflow.db", ".zen"):
        assert entry in ignored
