"""What every dataset reader yields, so one prepare engine serves them all.

A reader takes the dataset exactly as its publisher distributes it (the archive
or its extracted folder) and *streams* ``SourceItem``s: nothing is decoded
until the engine calls ``item.open()``, so memory stays bounded whatever the
dataset size, and the engine can decode items in parallel worker processes
(items must therefore be picklable: plain data, no open file handles).

Layout problems (a wrong folder, a missing CSV, a truncated archive) raise
``DatasetLayoutError`` saying what was expected and what was found, before any
work. A single unreadable image is *not* a layout problem: the engine
quarantines it and lists it in the report.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from neuralmark.components.data.readers.archives import read_tar_span, read_zip_member
from neuralmark.components.errors import InputError


class DatasetLayoutError(InputError):
    """The source does not have the layout its publisher distributes."""


class ItemError(InputError):
    """One item cannot be prepared (e.g. its paired target is missing).

    Raised by a recipe's transform; the prepare engine quarantines the item and
    lists it in the report, like an undecodable file.
    """


@dataclass(frozen=True)
class SourceItem:
    """One image of a source dataset (not decoded yet).

    Attributes:
        item_id: stable id inside the dataset (e.g. ``im123``, ``2008_000123``,
            ``00000001_000.png``, ``data_batch_1:42``); the output file stem.
        location: where the bytes are: a file path, ``zip://<zip>!<member>`` or
            ``tar://<tar>!<member>`` (an uncompressed tar; ``span`` says where).
        group: the split unit (defaults to ``item_id``); items of one group
            always land in the same split.
        split: a publisher-defined split to keep (``train``/``val``/``test``),
            or ``None`` to split by content hash.
        label: class label where the dataset has one (CIFAR-10), else ``None``.
        pair: id of the paired target where the dataset has pairs (A→B).
        extra: any other JSON-able fields kept in the manifest's ``extra`` column.
        raw: for datasets stored as arrays (CIFAR pickles) the pixels themselves
            as ``bytes`` of an H×W×3 uint8 array, with ``raw_shape``.
        span: for ``tar://`` locations, ``(offset, size)`` of the member's data
            in the tar, so any process reads it in place (``archives.read_tar_span``).
    """

    item_id: str
    location: str
    group: str = ""
    split: str | None = None
    label: int | None = None
    pair: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    raw_shape: tuple[int, int, int] | None = None
    span: tuple[int, int] | None = None

    def read_bytes(self) -> bytes:
        """The encoded file bytes (for hashing and decoding).

        Archive members are read through the process's open handle of the
        archive (``neuralmark.components.data.readers.archives``), not by re-opening it.
        """
        if self.location.startswith("zip://"):
            archive, member = self.location[len("zip://"):].split("!", 1)
            return read_zip_member(archive, member)
        if self.location.startswith("tar://"):
            if self.span is None:
                raise ValueError(f"{self.item_id}: a tar:// location needs span=(offset, size)")
            archive = self.location[len("tar://"):].split("!", 1)[0]
            return read_tar_span(archive, *self.span)
        return Path(self.location).read_bytes()

    def open(self) -> Image.Image:
        """Decode fully (``.load()``), so truncation surfaces here, not later."""
        if self.raw is not None:
            import numpy as np

            arr = np.frombuffer(self.raw, dtype=np.uint8).reshape(self.raw_shape)
            return Image.fromarray(arr, "RGB")
        img = Image.open(io.BytesIO(self.read_bytes()))
        img.load()
        return img


class DatasetReader(abc.ABC):
    """Base class: ``name``, ``describe_layout()`` and ``items(source)``."""

    name: ClassVar[str]
    #: what the publisher's layout looks like, for error messages and --help
    layout: ClassVar[str] = ""

    @abc.abstractmethod
    def items(self, source: Path) -> Iterator[SourceItem]:
        """Stream the dataset's items; raise ``DatasetLayoutError`` on a wrong layout."""

    def layout_error(self, source: Path, found: str) -> DatasetLayoutError:
        return DatasetLayoutError(
            f"{source} does not look like {self.name}: expected {self.layout}; found {found}")


def describe(path: Path, limit: int = 8) -> str:
    """A short listing of what is at ``path`` (for layout errors)."""
    if not path.exists():
        return "nothing (the path does not exist)"
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" … (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "an empty folder"
