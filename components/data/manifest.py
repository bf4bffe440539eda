"""The dataset manifest: one CSV row per image file, and readers over it.

A manifest is a CSV beside its images with the columns of
``MANIFEST_COLUMNS``:

- ``path``: file path relative to the manifest's folder (POSIX separators),
- ``sha256``: hex digest of the file bytes,
- ``width``, ``height``, ``mode``: as PIL reports them,
- ``split``: ``train``, ``val`` or ``test``,
- ``source``: where the pixels came from (``skimage:astronaut.png``,
  ``procedural:noise``, ...),
- ``group``: the split unit (all crops of one photo share a group, so a photo
  never leaks from ``train`` into ``test``).

Images are returned as ``float32`` tensors in ``[0, 1]``, ``N×3×H×W``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from neuralmark.components.files import atomic_write_text

MANIFEST_COLUMNS = ["path", "sha256", "width", "height", "mode", "split", "source", "group"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest (see the module docstring for the fields)."""

    path: str
    sha256: str
    width: int
    height: int
    mode: str
    split: str
    source: str
    group: str

    def sort_key(self) -> tuple[str, str]:
        """Rows are stored sorted by split, then path, so bytes are deterministic."""
        return (self.split, self.path)


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read a manifest CSV (or a single-domain prepared one: its extra columns are ignored).

    Args:
        path: the ``manifest.csv`` file.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: the header does not start with ``MANIFEST_COLUMNS``, a number is
            malformed, or a row has a paired domain (``A`` / ``B``).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if fields[:len(MANIFEST_COLUMNS)] != MANIFEST_COLUMNS:
            raise ValueError(
                f"{path}: manifest columns are {reader.fieldnames}, expected {MANIFEST_COLUMNS}"
                " (a prepared manifest may add columns after them)"
            )
        rows = []
        for lineno, rec in enumerate(reader, start=2):
            if rec.get("domain") not in (None, "", "image"):
                raise ValueError(f"{path}:{lineno}: domain {rec['domain']!r}: a paired "
                                 "prepared manifest is read with data.pairs.load_prepared_pairs")
            try:
                rows.append(ManifestRow(
                    path=rec["path"], sha256=rec["sha256"], width=int(rec["width"]),
                    height=int(rec["height"]), mode=rec["mode"], split=rec["split"],
                    source=rec["source"], group=rec["group"],
                ))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}:{lineno}: malformed manifest row ({err})") from err
    return rows


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows to a manifest CSV atomically (``files.atomic_write_text``).

    Rows are sorted by (split, path) and written with ``\\n`` line endings, so
    the same rows always give the same bytes.

    Args:
        rows: the manifest rows.
        path: destination ``manifest.csv``.

    Returns:
        ``path`` as a ``Path``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in sorted(rows, key=ManifestRow.sort_key):
        writer.writerow([getattr(row, c) for c in MANIFEST_COLUMNS])
    return atomic_write_text(path, buf.getvalue())


def manifest_to_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest as a list of dicts (``pandas.DataFrame(records)`` ready)."""
    return [asdict(row) for row in read_manifest(path)]


def _split_rows(manifest_path: Path, split: str) -> list[ManifestRow]:
    """Rows of one split; a standard split with no rows is empty, not unknown."""
    rows = read_manifest(manifest_path)
    present = sorted({r.split for r in rows})
    if split not in SPLITS and split not in present:
        raise ValueError(
            f"unknown split {split!r} for {manifest_path}; expected one of {list(SPLITS)}"
            f" (the manifest has {present or 'no rows'})"
        )
    selected = [r for r in rows if r.split == split]
    if not selected:
        raise ValueError(f"split {split!r} of {manifest_path} is empty")
    return selected


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Read one image file as a ``3×H×W`` float32 tensor in ``[0, 1]``.

    Args:
        path: an image file PIL can read; converted to RGB.
        size: if given, resize to ``size×size`` (bilinear, antialiased).

    Returns:
        ``3×H×W`` (or ``3×size×size``) float32 in ``[0, 1]``.
    """
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # 3 h w
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
    return x


def load_split(manifest_path: str | os.PathLike, split: str, size: int | None = None,
               limit: int | None = None) -> torch.Tensor:
    """Load every image of one split into a single batch.

    Args:
        manifest_path: the ``manifest.csv`` file.
        split: ``train``, ``val`` or ``test`` (any split the manifest names).
        size: resize each image to ``size×size`` (antialiased); required when
            the split's images differ in size.
        limit: keep only the first ``limit`` rows (manifest order).

    Returns:
        ``N×3×H×W`` float32 in ``[0, 1]``.

    Raises:
        ValueError: the split is unknown or empty, or images differ in size
            and ``size`` is None.
    """
    manifest_path = Path(manifest_path)
    rows = _split_rows(manifest_path, split)
    if limit is not None:
        rows = rows[: max(limit, 0)]
    if not rows:
        raise ValueError(f"limit={limit} leaves no image of split {split!r}")
    images = [load_image(manifest_path.parent / r.path, size) for r in rows]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(
            f"split {split!r} holds images of different sizes {sorted(shapes)}; pass size="
        )
    return torch.stack(images)


class ManifestImages(torch.utils.data.Dataset):
    """A map-style dataset over one split of a manifest.

    Each item is a ``3×size×size`` float32 tensor in ``[0, 1]``; files are
    read lazily, so a ``DataLoader`` with workers scales to large splits.

    Args:
        manifest_path: the ``manifest.csv`` file.
        split: the split to serve.
        size: side of the square images returned.

    Raises:
        ValueError: the split is unknown or empty.
    """

    def __init__(self, manifest_path: str | os.PathLike, split: str, size: int) -> None:
        self.manifest_path = Path(manifest_path)
        self.split = split
        self.size = size
        self.rows = _split_rows(self.manifest_path, split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.manifest_path.parent / self.rows[index].path, self.size)
