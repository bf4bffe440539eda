"""Plain image folders (DIV2K, KTH-TIPS, …): the "new data" of fine-tuning attacks.

Published layouts this reads (recursively; ``.jpg .jpeg .png .bmp .tif .tiff``,
any case; hidden files skipped)::

    DIV2K_train_HR/0001.png …             # flat: each image is its own group
    KTH_TIPS/aluminium_foil/15-scale_1_im_1_col.png …
                                          # class folders: the folder is the group

With class folders every image of one folder lands in the same split: a
KTH-TIPS class is one material sample photographed at several scales and
illuminations, so its images are near-duplicates that must not straddle
train and test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from neuralmark.components.data.datasets import PrepareConfig, register_dataset
from neuralmark.components.data.readers.base import DatasetReader, SourceItem, describe

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class ImageFolderReader(DatasetReader):
    """Every image file under a folder, in sorted relative-path order."""

    name = "image_folder"
    layout = ("a folder of images (" + ", ".join(sorted(EXTENSIONS)) +
              "), flat or with one sub-folder per class")

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Stream the images; the immediate sub-folder (if any) is the group.

        Raises:
            DatasetLayoutError: ``source`` is not a folder or holds no image.
        """
        source = Path(source)
        if not source.is_dir():
            raise self.layout_error(source, describe(source))
        files = sorted(
            (p for p in source.rglob("*")
             if p.suffix.lower() in EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(source).parts)),
            key=lambda p: p.relative_to(source).as_posix(),
        )
        if not files:
            raise self.layout_error(source, describe(source))
        for path in files:
            rel = path.relative_to(source)
            item_id = rel.with_suffix("").as_posix()
            group = rel.parts[0] if len(rel.parts) > 1 else item_id
            yield SourceItem(item_id=item_id, location=str(path), group=group)


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and crop the centre ``size×size`` (Lanczos)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.resize((size, size), Image.Resampling.LANCZOS,
                        box=(left, top, left + side, top + side), reducing_gap=3.0)


@register_dataset("image_folder", reader=ImageFolderReader, domains=("image",),
                  description="DIV2K / KTH-TIPS-style folders, centre square at config.size")
def image_folder_transform(image: Image.Image, item: SourceItem,
                           config: PrepareConfig) -> dict[str, Image.Image]:
    """RGB, short side resized to ``config.size``, centre-cropped to a square."""
    return {"image": centre_square(image.convert("RGB"), config.size)}
