"""DVC versioning: ``version_data`` adds and pushes; the project's own DVC setup."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

import pytest

from neuralmark.integrations.versioning import version_data


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _in_remote(remote: Path, md5: str) -> bool:
    """DVC 3 layout: ``<remote>/files/md5/<first 2>/<rest>`` (``.dir`` kept)."""
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.fixture()
def dvc_repo(tmp_path) -> tuple[Path, Path]:
    """A git + DVC repo with a local default remote and a small ``data/`` folder."""
    from dvc.repo import Repo

    root, remote = tmp_path / "repo", tmp_path / "remote"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    with Repo.init(str(root)) as repo, repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["site_cache_dir"] = str(tmp_path / "site-cache")
        conf["core"]["remote"] = "local"
        conf["remote"]["local"] = {"url": str(remote)}
    (root / "data" / "sample").mkdir(parents=True)
    (root / "data" / "sample" / "a.bin").write_bytes(b"alpha" * 100)
    (root / "data" / "sample" / "b.bin").write_bytes(b"beta" * 100)
    return root, remote


def test_version_data_adds_and_pushes(dvc_repo):
    root, remote = dvc_repo
    md5 = version_data(root)
    assert md5 is not None and md5.endswith(".dir")
    dvc_file = (root / "data.dvc").read_text()
    assert f"md5: {md5}" in dvc_file and "path: data" in dvc_file
    assert _in_remote(remote, md5)  # the directory listing, stored as <md5>.dir
    for name in ("a.bin", "b.bin"):
        assert _in_remote(remote, _md5((root / "data" / "sample" / name).read_bytes()))
    assert "/data" in (root / ".gitignore").read_text()  # data stays out of git

    assert version_data(root) == md5  # unchanged data, same version
    (root / "data" / "sample" / "c.bin").write_bytes(b"gamma")
    changed = version_data(root)
    assert changed != md5 and _in_remote(remote, _md5(b"gamma"))


def test_version_data_prints_no_git_hint(dvc_repo, caplog):
    """DVC's "To track the changes with git, run: git add data.dvc" is not for our users."""
    root, _ = dvc_repo
    with caplog.at_level(logging.INFO, logger="dvc"):
        assert version_data(root, push=False) is not None
    assert not [r for r in caplog.records if "git add" in r.getMessage()
                or "autostage" in r.getMessage()]


def test_version_data_without_push_leaves_remote_empty(dvc_repo):
    root, remote = dvc_repo
    md5 = version_data(root, push=False)
    assert md5 is not None and (root / "data.dvc").is_file()
    assert not remote.exists() or not any(remote.rglob("*"))


def test_version_data_outside_dvc_repo_returns_none(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    with caplog.at_level(logging.WARNING, logger="neuralmark.integrations.versioning"):
        assert version_data(tmp_path) is None
    assert "not a DVC repository" in caplog.text
    assert not (tmp_path / "data.dvc").exists()


def test_version_data_missing_target_is_named(dvc_repo):
    root, _ = dvc_repo
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        version_data(root, target="nothing_here")


def test_project_remote_resolves_inside_repo(repo_root):
    from dvc.repo import Repo

    if not (repo_root / ".dvc").is_dir():
        pytest.fail("the project is not a DVC repository: run `dvc init`")
    with Repo(str(repo_root)) as repo:
        default = repo.config["core"]["remote"]
        url = repo.config["remote"][default]["url"]
        assert repo.config["core"]["analytics"] is False
    assert Path(url).resolve() == (repo_root / ".dvc-remote").resolve()
