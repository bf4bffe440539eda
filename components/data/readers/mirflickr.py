"""MIRFlickr25k (seed 004): ``mirflickr25k.zip`` or its extracted folder.

The publisher (press.liacs.nl, ``mirflickr25k.v3b``) ships one zip whose
members are ``mirflickr/im1.jpg`` … ``mirflickr/im25000.jpg`` plus licence,
EXIF and tag files (``mirflickr/meta/…``, ``mirflickr/doc/…``), which we ignore.
Accepted sources: the zip itself, a folder holding ``mirflickr25k.zip``, the
extracted folder's parent (``mirflickr/im*.jpg``) or the ``mirflickr/`` folder.
Items stream in numeric order (``im1``, ``im2``, …, ``im25000``).

Recipe ``mirflickr25k``: centre-crop to a square, resize to ``config.size``
(400 by default, as seed 004's ``Image_Processing.ipynb`` does), RGB.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps

from neuralmark.components.data.datasets import PrepareConfig, register_dataset
from neuralmark.components.data.readers.archives import open_zip
from neuralmark.components.data.readers.base import DatasetReader, SourceItem, describe

_MEMBER = re.compile(r"^(?:.*/)?mirflickr/im(\d+)\.jpg$")
_FILE = re.compile(r"^im(\d+)\.jpg$")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode → ``RGB`` (L, CMYK, P, I;16 …; alpha composited on ``background``).

    Args:
        img: a decoded image of any mode.
        background: colour under transparent pixels.

    Returns:
        An ``RGB`` image of the same size.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grey: scale to 8 bits rather than clip
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def center_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to the largest square, then resize to ``size×size`` (Lanczos).

    Args:
        img: any size.
        size: output side.

    Returns:
        ``size×size`` image, same mode.
    """
    return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


class MirflickrReader(DatasetReader):
    """Streams ``im1`` … ``im25000`` from the zip (``zip://…!member``) or the folder."""

    name = "mirflickr25k"
    layout = ("mirflickr25k.zip with members mirflickr/im1.jpg … mirflickr/im25000.jpg, "
              "or its extracted folder mirflickr/im*.jpg")

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Yield one ``SourceItem`` per ``im<N>.jpg``, in numeric order.

        Raises:
            DatasetLayoutError: a corrupt/truncated zip, or no ``mirflickr/im*.jpg``.
        """
        source = Path(source)
        if source.is_dir() and not any(source.glob("im*.jpg")) and not (
                source / "mirflickr").is_dir() and (source / "mirflickr25k.zip").is_file():
            source = source / "mirflickr25k.zip"
        if source.is_file():
            yield from self._zip_items(source)
        elif source.is_dir():
            yield from self._folder_items(source)
        else:
            raise self.layout_error(source, describe(source))

    def _zip_items(self, archive: Path) -> Iterator[SourceItem]:
        try:
            names = open_zip(str(archive.resolve())).namelist()  # kept open for the items
        except zipfile.BadZipFile as err:
            raise self.layout_error(
                archive, f"a file of {archive.stat().st_size} bytes that is not a readable "
                         f"zip ({err}; truncated or corrupt download?)") from None
        found = sorted((int(m.group(1)), n) for n in names if (m := _MEMBER.match(n)))
        if not found:
            sample = ", ".join(names[:6]) or "no members"
            raise self.layout_error(archive, f"a zip with {len(names)} members and no "
                                             f"mirflickr/im*.jpg ({sample})")
        loc = archive.resolve()
        for number, member in found:
            yield SourceItem(item_id=f"im{number}", location=f"zip://{loc}!{member}")

    def _folder_items(self, folder: Path) -> Iterator[SourceItem]:
        images = folder
        if not any(_FILE.match(p.name) for p in folder.glob("im*.jpg")):
            images = folder / "mirflickr"
        found = sorted((int(m.group(1)), p) for p in images.glob("im*.jpg")
                       if (m := _FILE.match(p.name))) if images.is_dir() else []
        if not found:
            raise self.layout_error(folder, describe(folder))
        for number, path in found:
            yield SourceItem(item_id=f"im{number}", location=str(path.resolve()))


@register_dataset("mirflickr25k", reader=MirflickrReader, domains=("image",),
                  description="MIRFlickr25k photos, centre-crop-resized to size² RGB (seed 004)")
def mirflickr_transform(image: Image.Image, item: SourceItem,
                        config: PrepareConfig) -> dict[str, Image.Image]:
    """Centre-crop + resize one photo.

    Args:
        image: decoded source photo (any mode, any size; EXIF orientation applied).
        item: its ``SourceItem`` (unused: the transform is deterministic).
        config: uses ``size``.

    Returns:
        ``{"image": RGB size×size}``.
    """
    return {"image": center_square(to_rgb(ImageOps.exif_transpose(image)), config.size)}
