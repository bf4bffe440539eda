"""Metafaces (seed 004): a folder of 1024×1024 face images, resized to 400².

Seed 004 gets it "from github" (NVlabs' MetFaces layout: ``images/*.png`` at
1024², beside ``unprocessed/`` full paintings and a JSON). Accepted sources: the
folder of faces itself, or the dataset root — then only its ``images/`` folder
is read, so the ``unprocessed/`` originals never leak in. Files are found
recursively (``.png``, ``.jpg``, ``.jpeg``, any case) and stream in sorted
relative-path order; ``item_id`` is the relative path without suffix, with
``/`` replaced by ``__``.

Recipe ``metafaces``: RGB, resize to ``config.size``² (a non-square input is
centre-cropped first), Lanczos.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from neuralmark.components.data.datasets import PrepareConfig, register_dataset
from neuralmark.components.data.readers.base import DatasetReader, SourceItem, describe
from neuralmark.components.data.readers.mirflickr import center_square, to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class MetafacesReader(DatasetReader):
    """Streams every face image under the folder (or under its ``images/``)."""

    name = "metafaces"
    layout = "a folder (searched recursively) of 1024×1024 face images (*.png / *.jpg)"

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Yield one ``SourceItem`` per image file, in sorted relative-path order.

        Raises:
            DatasetLayoutError: the source is not a folder, holds no images, or two
                files map to the same ``item_id``.
        """
        source = Path(source)
        if not source.is_dir():
            raise self.layout_error(source, describe(source))
        root = source / "images" if (source / "images").is_dir() else source
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise self.layout_error(source, describe(source))
        seen: dict[str, Path] = {}
        for path in files:
            rel = path.relative_to(root).with_suffix("")
            item_id = "__".join(rel.parts)
            if item_id in seen:
                raise self.layout_error(
                    source, f"two files with the same id {item_id!r}: {seen[item_id]} and {path}")
            seen[item_id] = path
        for item_id, path in seen.items():
            yield SourceItem(item_id=item_id, location=str(path.resolve()))


@register_dataset("metafaces", reader=MetafacesReader, domains=("image",),
                  description="Metafaces faces resized from 1024² to size² RGB (seed 004)")
def metafaces_transform(image: Image.Image, item: SourceItem,
                        config: PrepareConfig) -> dict[str, Image.Image]:
    """Resize one face.

    Args:
        image: decoded 1024×1024 face (any mode).
        item: its ``SourceItem`` (unused).
        config: uses ``size``.

    Returns:
        ``{"image": RGB size×size}``.
    """
    return {"image": center_square(to_rgb(image), config.size)}
