"""The photos a benchmark runs on: a folder of any images, or the held-out split.

Every usable photo is brought to one ``size×size`` batch (centre square crop, then an
antialiased resize), so every method sees the same pixels. A file that cannot be read, or
is smaller than ``size`` on a side (upscaling would hand the methods flat, easy images),
becomes a row of the table saying why; the run goes on with the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from neuralmark.components.errors import InputError
from neuralmark.components.imageio import iter_images, load_image


@dataclass
class PhotoSet:
    """Photos ready for the benchmark.

    Attributes:
        images: N×3×S×S float32 in [0, 1] (N may be 0 when nothing was usable).
        names: where each image came from (file name or ``split:index``).
        skipped: ``(name, reason)`` of every file left out.
    """

    images: torch.Tensor
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One ``input`` row per skipped file (table columns of ``runner.COLUMNS``)."""
        return [{"method": "*", "family": "input", "attack": "none", "strength": None,
                 "label": "input", "metric": "skipped_image", "value": None, "n": 1,
                 "note": f"{name}: {reason}"} for name, reason in self.skipped]


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop of a 1×3×H×W image, resized to 1×3×size×size (antialiased)."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[..., top:top + side, left:left + side]
    if side == size:
        return crop
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)


def load_folder(folder: str | os.PathLike, size: int = 256, limit: int | None = None,
                recursive: bool = False) -> PhotoSet:
    """Every image file of ``folder`` as a ``size²`` batch; bad files become skip rows.

    Args:
        folder: a folder (or one file).
        size: side of the benchmark images, px.
        limit: keep at most this many usable photos (files in sorted order).
        recursive: descend into sub-folders.

    Raises:
        InputError: the folder does not exist, ``size`` < 8, or ``limit`` < 1.
    """
    if size < 8:
        raise InputError(f"benchmark size must be at least 8 px, got {size}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    images, names, skipped = [], [], []
    for path in iter_images(Path(folder), recursive=recursive):
        if limit is not None and len(images) >= limit:
            break
        try:
            loaded = load_image(path, min_size=size)
        except InputError as err:  # ImageReadError: unreadable, corrupt, too small, ...
            skipped.append((path.name, str(err).replace(str(path), path.name)))
            continue
        images.append(square(loaded.tensor, size))
        names.append(path.name)
    batch = torch.cat(images) if images else torch.empty(0, 3, size, size)
    return PhotoSet(batch, names, skipped)


def load_heldout(manifest: str | os.PathLike, size: int = 256, limit: int | None = 8,
                 split: str = "test") -> PhotoSet:
    """The held-out split of a prepared dataset's ``manifest.csv`` at ``size²``."""
    from neuralmark.components.data.manifest import load_split

    try:
        images = load_split(manifest, split, size=size, limit=limit)
    except ValueError as err:
        raise InputError(f"{manifest}: {err}") from err
    return PhotoSet(images, [f"{split}:{i}" for i in range(len(images))])
