"""Read members of the publishers' archives in place: one open handle per process.

Items of an archive carry only *where* their bytes are (``zip://<archive>!<member>``,
or ``tar://<archive>!<member>`` with the member's ``(offset, size)`` in the
uncompressed tar), never an open handle: they cross process boundaries. Each
process — the main one with ``workers=1``, or every pool worker — opens an
archive the first time one of its members is read and keeps it open for the
next ones, instead of re-opening (and, for a zip, re-parsing the central
directory of 25,000 members) per item.

Memory stays bounded: at most ``MAX_OPEN`` archives are open per process
(least recently used closed first), a ``ZipFile`` holds only its central
directory, a tar is read with ``os.pread`` at the member's offset (no
``TarInfo`` list kept), and only the requested member's bytes are ever in memory.
A handle inherited through ``fork`` is never reused (the cache is per pid).
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict

#: archives kept open per process
MAX_OPEN = 4

_pid = os.getpid()
_zips: OrderedDict[str, zipfile.ZipFile] = OrderedDict()
_fds: OrderedDict[str, int] = OrderedDict()


def _own_process() -> None:
    """Forget handles inherited from a parent process (``fork``); they are the parent's."""
    global _pid
    if os.getpid() != _pid:
        _zips.clear()
        _fds.clear()
        _pid = os.getpid()


def _evict() -> None:
    while len(_zips) + len(_fds) > MAX_OPEN:
        # least recently used first (zips, then tars: a prepare reads one archive anyway)
        if _zips:
            _, zf = _zips.popitem(last=False)
            zf.close()
        else:
            _, fd = _fds.popitem(last=False)
            os.close(fd)


def open_zip(archive: str) -> zipfile.ZipFile:
    """The process's open ``ZipFile`` for ``archive`` (opened on first use)."""
    _own_process()
    zf = _zips.get(archive)
    if zf is None:
        zf = zipfile.ZipFile(archive)
        _zips[archive] = zf
        _evict()
    else:
        _zips.move_to_end(archive)
    return zf


def read_zip_member(archive: str, member: str) -> bytes:
    """The bytes of ``member`` in the zip ``archive`` (CRC-checked by ``zipfile``)."""
    return open_zip(archive).read(member)


def read_tar_span(archive: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of an uncompressed tar (a member's data).

    Raises:
        EOFError: the archive ends before ``offset + size`` (truncated download).
    """
    _own_process()
    fd = _fds.get(archive)
    if fd is None:
        fd = os.open(archive, os.O_RDONLY)
        _fds[archive] = fd
        _evict()
    else:
        _fds.move_to_end(archive)
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise EOFError(f"{archive} ends after {offset + len(data)} bytes; expected a member of "
                       f"{size} bytes at offset {offset} (truncated archive?)")
    return data


def open_archives() -> int:
    """How many archives this process holds open."""
    _own_process()
    return len(_zips) + len(_fds)


def close_archives() -> None:
    """Close every archive this process holds open (the prepare engine calls it when done)."""
    _own_process()
    while _zips:
        _zips.popitem()[1].close()
    while _fds:
        os.close(_fds.popitem()[1])
