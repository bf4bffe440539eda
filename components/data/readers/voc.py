"""PASCAL VOC 2012 for the derain task (seed 001): clean B, synthesised rainy A.

Layout (of ``VOCtrainval_11-May-2012.tar`` as published, and of its extraction)::

    VOCdevkit/VOC2012/JPEGImages/2008_000008.jpg …
    VOCdevkit/VOC2012/ImageSets/Main/train.txt, val.txt, trainval.txt
    VOCdevkit/VOC2012/Annotations/…, SegmentationClass/…, …   (ignored)

The source may be the tar itself (read in place, never extracted: one pass
over its member headers records each JPEG's offset and size, and workers read
the bytes at that offset — see ``archives``), the folder holding ``VOCdevkit/``,
``VOCdevkit/`` itself or ``VOC2012/``. The published tar is uncompressed; a
gzip/bz2/xz-compressed copy has no random access and is refused with what to
do. Images are the ids listed in ``ImageSets/Main/{train,val}.txt`` (or
``trainval.txt`` when those are absent): the 11,540 images of the VOC2012
classification/detection set, in sorted id order; an id whose JPEG is missing
is a layout error (an incomplete extraction). VOC's own train/val membership is
kept in ``extra["voc_split"]``.

Splits (seed 001: 12,100 VOC images = 6,000 for the initial *and* the
adversarial training stage, 6,000 to train the surrogate model, 100 for
testing). The engine keeps only ``train``/``val``/``test``, so the roles map as
``VOC_DERAIN_ROLES``:

* ``train`` → ``watermark``: train the protected model M, embedder H and
  extractor R (stage 1) and fine-tune R (stage 2);
* ``val``   → ``surrogate``: the attacker's data for the surrogate SM;
* ``test``  → ``test``: held-out evaluation.

The reader leaves ``split`` unset and the recipe's default ``fractions`` are
the seed's proportions ``(6000, 6000, 100) / 12100``; the engine then ranks the
ids by hash and cuts them at exact counts (deterministic, disjoint: 12,100
images give exactly 6,000 / 6,000 / 100, and any run of >= 3 images keeps a
non-empty test split). A profile scales them by setting ``fractions`` (and
``limit``).

Recipe ``voc_derain`` (domains ``A``, ``B``): B = the clean image, short side
resized and centre-cropped to ``config.size``²; A = ``add_rain(B, …)`` with
parameters and drops seeded by ``item_seed(item_id, config.seed)``, so each
pair is reproducible. Options: ``rain_haze`` (bool, default ``False``) adds the
haze term; ``rain`` (dict of ``RainParams`` fields) fixes those fields.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from PIL import Image

from neuralmark.components.data.datasets import PrepareConfig, register_dataset
from neuralmark.components.data.rain import (
    REFERENCE_SIZE,
    RainParams,
    add_rain,
    item_seed,
    sample_rain_params,
)
from neuralmark.components.data.readers.base import DatasetReader, SourceItem, describe
from neuralmark.components.data.readers.mirflickr import center_square, to_rgb

#: engine split → role in seed 001's two-stage training
VOC_DERAIN_ROLES: dict[str, str] = {"train": "watermark", "val": "surrogate", "test": "test"}

#: seed 001: 6,000 watermark-training, 6,000 surrogate-training, 100 test images
SEED_SPLIT_SIZES: tuple[int, int, int] = (6000, 6000, 100)
SEED_FRACTIONS: tuple[float, float, float] = tuple(  # type: ignore[assignment]
    n / sum(SEED_SPLIT_SIZES) for n in SEED_SPLIT_SIZES)


def _ids(text: str) -> list[str]:
    """Ids of one ``ImageSets/Main/*.txt`` (first column, blank lines skipped)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


#: ``ImageSets/Main`` lists that define the image set, in order of preference
LIST_NAMES = ("train", "val", "trainval")
_TAR_JPEG = re.compile(r"^(?P<root>(?:.*/)?)JPEGImages/(?P<id>[^/]+)\.jpg$")
_TAR_LIST = re.compile(r"^(?P<root>(?:.*/)?)ImageSets/Main/(?P<name>train|val|trainval)\.txt$")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZ": "bzip2", b"\xfd7": "xz"}


class VocReader(DatasetReader):
    """Streams the VOC2012 ``ImageSets/Main`` images from the tar or an extracted ``VOCdevkit``."""

    name = "voc2012"
    layout = ("VOCdevkit/VOC2012/JPEGImages/*.jpg and VOCdevkit/VOC2012/ImageSets/Main/"
              "{train,val,trainval}.txt (VOCtrainval_11-May-2012.tar or its extracted folder)")

    def find_root(self, source: Path) -> Path:
        """The ``VOC2012`` folder inside the folder ``source``.

        Raises:
            DatasetLayoutError: no ``VOC2012`` folder (with ``JPEGImages/``) there.
        """
        source = Path(source)
        for root in (source, source / "VOC2012", source / "VOCdevkit" / "VOC2012"):
            if (root / "JPEGImages").is_dir():
                return root
        raise self.layout_error(source, describe(source))

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Yield one ``SourceItem`` per listed id, in sorted id order.

        Raises:
            DatasetLayoutError: a compressed, truncated or foreign tar, a wrong folder,
                no ``ImageSets/Main`` lists, or listed ids whose JPEG is missing.
        """
        source = Path(source)
        if source.is_file():
            lists, jpegs, where = self._index_tar(source)
        else:
            root = self.find_root(source)
            main = root / "ImageSets" / "Main"
            lists = {n: _ids((main / f"{n}.txt").read_text(encoding="utf-8"))
                     for n in LIST_NAMES if (main / f"{n}.txt").is_file()}
            jpegs = _FolderJpegs(root / "JPEGImages")
            where = (describe(main) if main.exists()
                     else f"{describe(root)} (no ImageSets/Main)")
            source = root
        voc_split = _voc_splits(lists)
        if not voc_split:
            raise self.layout_error(source, f"no train.txt/val.txt/trainval.txt ids: {where}")
        missing = [i for i in sorted(voc_split) if i not in jpegs]
        if missing:
            raise self.layout_error(
                source, f"{len(missing)} of {len(voc_split)} listed ids have no "
                        f"JPEGImages/<id>.jpg (e.g. {', '.join(missing[:3])}): "
                        "incomplete extraction or download?")
        for item_id in sorted(voc_split):
            location, span = jpegs[item_id]
            yield SourceItem(item_id=item_id, location=location, span=span,
                             extra={"voc_split": voc_split[item_id]})

    def _index_tar(self, archive: Path) -> tuple[dict[str, list[str]],
                                                dict[str, tuple[str, tuple[int, int]]], str]:
        """One pass over the tar's headers: the id lists and every JPEG's data span.

        Returns:
            ``(lists, jpegs, found)``: ids per list name, ``{id: (tar:// location,
            (offset, size))}``, and a description of the members for errors.

        Raises:
            DatasetLayoutError: compressed, unreadable or truncated, or two VOC2012
                roots in one tar.
        """
        with archive.open("rb") as f:
            magic = f.read(2)
        if magic in _COMPRESSED:
            raise self.layout_error(
                archive, f"a {_COMPRESSED[magic]}-compressed archive, which has no random "
                         "access; expected the uncompressed tar as published: decompress it "
                         "(it is then read in place) or extract it and pass the folder")
        loc = archive.resolve()
        total = archive.stat().st_size
        lists: dict[str, list[str]] = {}
        jpegs: dict[str, tuple[str, tuple[int, int]]] = {}
        roots: set[str] = set()
        sample: list[str] = []
        try:
            with tarfile.open(archive, "r:") as tf:
                while (member := tf.next()) is not None:
                    tf.members.clear()  # keep no TarInfo list: memory stays flat
                    if len(sample) < 6:
                        sample.append(member.name)
                    if not member.isreg():
                        continue
                    if m := _TAR_JPEG.match(member.name):
                        roots.add(m["root"])
                        if member.offset_data + member.size > total:
                            raise self.layout_error(
                                archive, f"a truncated archive: {member.name} ends at byte "
                                         f"{member.offset_data + member.size}, the file has "
                                         f"{total} bytes")
                        jpegs[m["id"]] = (f"tar://{loc}!{member.name}",
                                          (member.offset_data, member.size))
                    elif m := _TAR_LIST.match(member.name):
                        roots.add(m["root"])
                        data = tf.extractfile(member)
                        assert data is not None  # a regular file
                        lists[m["name"]] = _ids(data.read().decode("utf-8"))
        except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as err:
            raise self.layout_error(archive, f"an unreadable or truncated tar "
                                             f"({type(err).__name__}: {err})") from None
        if not jpegs:
            raise self.layout_error(archive, "a tar with no VOC2012/JPEGImages/*.jpg (members: "
                                             f"{', '.join(sample) or 'none'})")
        if len(roots) > 1:
            raise self.layout_error(archive, f"several VOC2012 roots in one tar: {sorted(roots)}")
        found = (f"a tar holding {len(jpegs)} JPEGImages/*.jpg and ImageSets/Main lists "
                 f"{sorted(lists) or 'none'}")
        return {n: lists[n] for n in LIST_NAMES if n in lists}, jpegs, found


class _FolderJpegs:
    """``id in jpegs`` / ``jpegs[id]`` over an extracted ``JPEGImages/`` (like the tar's index)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __contains__(self, item_id: str) -> bool:
        return (self.folder / f"{item_id}.jpg").is_file()

    def __getitem__(self, item_id: str) -> tuple[str, None]:
        return str((self.folder / f"{item_id}.jpg").resolve()), None


def _voc_splits(lists: dict[str, list[str]]) -> dict[str, str]:
    """``{id: "train" | "val" | "trainval"}`` from train/val lists, else from trainval."""
    voc_split: dict[str, str] = {}
    for name in ("train", "val"):
        for item_id in lists.get(name, []):
            voc_split.setdefault(item_id, name)
    if not voc_split:
        voc_split = dict.fromkeys(lists.get("trainval", []), "trainval")
    return voc_split


def rain_params_for(item_id: str, config: PrepareConfig) -> tuple[RainParams, int]:
    """The rain condition and drop seed of one pair (recomputable from the manifest).

    Args:
        item_id: the VOC id, e.g. ``2008_000008``.
        config: uses ``size``, ``seed`` and ``options["rain_haze"]``/``options["rain"]``.

    Returns:
        ``(params, seed)`` for ``add_rain``.
    """
    seed = item_seed(item_id, config.seed)
    params = sample_rain_params(seed, scale=config.size / REFERENCE_SIZE,
                                haze=bool(config.options.get("rain_haze", False)))
    fixed = config.options.get("rain") or {}
    if fixed:
        params = replace(params, **fixed)
    return params, seed ^ 0x5EED


@register_dataset("voc_derain", reader=VocReader, domains=("A", "B"),
                  description="PASCAL VOC 2012 derain pairs: A = synthesised rain, B = clean "
                              "(seed 001); train/val/test = watermark/surrogate/test roles",
                  defaults={"fractions": SEED_FRACTIONS, "rain_haze": False},
                  options=("rain_haze", "rain"))
def voc_derain_transform(image: Image.Image, item: SourceItem,
                         config: PrepareConfig) -> dict[str, Image.Image]:
    """One derain pair.

    Args:
        image: decoded VOC JPEG (any size, typically ≤ 500×500).
        item: its ``SourceItem`` (``item_id`` seeds the rain).
        config: uses ``size``, ``seed`` and the rain options.

    Returns:
        ``{"A": rainy RGB size×size, "B": clean RGB size×size}``, pixel-aligned.
    """
    clean = center_square(to_rgb(image), config.size)
    params, seed = rain_params_for(item.item_id, config)
    return {"A": add_rain(clean, params, seed), "B": clean}
