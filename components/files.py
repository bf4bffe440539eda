"""Atomic writes: a file or folder is either the old one or the complete new one, never half.

Everything the project writes for people or other programs (images, bundles, manifests,
CSV tables, reports) goes through these, so a crash, a full disk or Ctrl-C never leaves a
truncated file where a good one was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a hidden temporary file beside ``path``; on success move it over ``path``.

    The temporary file is created with ``open(..., "x")``, so it honours the umask (a
    ``mkstemp`` file would stay private after the rename), and is flushed and fsynced
    before ``os.replace``. On any exception it is removed and ``path`` is left as it was.

    Args:
        path: the file to (re)write; its folder is created if needed.
        mode: ``"wb"`` or ``"w"`` (text; pass ``encoding`` / ``newline`` as keywords).
        **open_kwargs: passed to ``open``.

    Yields:
        The open temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_file``); returns ``path``."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_file``); returns ``path``."""
    with atomic_file(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_dir(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write a folder atomically: ``write(tmpdir)`` fills a temporary sibling, then renames.

    A crash inside ``write`` leaves ``target`` untouched (its old content, or absent). An
    existing ``target`` is swapped out through a backup that is removed afterwards.

    Args:
        target: the folder to (re)write.
        write: fills the temporary folder it is given.

    Returns:
        ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle or dataset is meant to be shared
    try:
        write(tmp)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rmdir(backup)
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
