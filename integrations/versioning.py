"""Version prepared data with DVC: ``dvc add`` + ``dvc push`` through the Python API.

DVC tracks ``data/`` (``data.dvc`` at the repository root, committed to git);
the files themselves live in the DVC cache and the default remote, never in
git. ``dvc`` is imported inside the function so importing ``steps`` stays
cheap. The ZenML step wrapping ``version_data`` lives elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _recorded_md5(dvc_file: Path) -> str:
    """The ``md5`` of the single output recorded in a ``.dvc`` file."""
    from dvc.utils.serialize import load_yaml

    outs = load_yaml(str(dvc_file)).get("outs") or []
    if len(outs) != 1 or "md5" not in outs[0]:
        raise ValueError(f"{dvc_file} does not record exactly one output with an md5")
    return str(outs[0]["md5"])


def version_data(repo_root: Path, target: str = "data", push: bool = True) -> str | None:
    """Track ``target`` with DVC and push it to the default remote.

    Equivalent to ``dvc add <target> && dvc push <target>.dvc`` run in
    ``repo_root``. Unchanged data is a no-op for both (DVC compares hashes).

    Args:
        repo_root: root of the DVC repository (the folder holding ``.dvc/``).
        target: path to track, relative to ``repo_root`` (file or folder).
        push: also upload the tracked files to the default remote.

    Returns:
        The md5 recorded in ``<target>.dvc`` (a folder's ends in ``.dir``), or
        ``None`` with a logged warning when ``repo_root`` is not a DVC repository.

    Raises:
        FileNotFoundError: ``target`` does not exist.
        dvc.config.NoRemoteError: ``push`` is set and no default remote is
            configured (``dvc remote add -d <name> <url>``).
    """
    repo_root = Path(repo_root).resolve()
    if not (repo_root / ".dvc").is_dir():
        logger.warning("%s is not a DVC repository (no .dvc/); data not versioned", repo_root)
        return None
    path = repo_root / target
    if not path.exists():
        raise FileNotFoundError(f"cannot version {path}: it does not exist")

    from dvc.repo import Repo

    dvc_file = path.with_name(path.name + ".dvc")
    with Repo(str(repo_root)) as repo:
        # no "To track the changes with git, run: git add data.dvc" hint: the caller (a
        # pipeline run) says what it versioned; data.dvc is committed by whoever changes data
        repo.scm_context.quiet = True
        repo.add(str(path))
        if push:
            pushed = repo.push(targets=[str(dvc_file)])
            logger.info("pushed %s file(s) of %s to the default DVC remote", pushed, target)
    md5 = _recorded_md5(dvc_file)
    logger.info("versioned %s with DVC: md5 %s", target, md5)
    return md5


def version_dataset(project: Path, dvc_target: str, data_root: str | Path,
                    push: bool = True) -> str | None:
    """Version ``data_root`` by ``dvc add`` (+ push) of the DVC target that holds it.

    Args:
        project: the project (DVC repository) root.
        dvc_target: the DVC-tracked folder, relative to ``project``.
        data_root: the dataset just built or prepared; must lie inside ``dvc_target``.
        push: also push to the default remote.

    Returns:
        The md5 DVC recorded, or ``None`` (with a logged warning) when ``data_root`` lies
        outside the target or ``project`` is not a DVC repository.
    """
    target = (project / dvc_target).resolve()
    if not Path(data_root).resolve().is_relative_to(target):
        logger.warning("data root %s is outside the DVC target %s; not versioned",
                       data_root, target)
        return None
    return version_data(project, dvc_target, push=push)
