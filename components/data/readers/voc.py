"""PASCAL VOC 2012 for the derain task (seed 001): clean B, synthesised rainy A.

Layout (as ``VOCtrainval_11-May-2012.tar`` extracts)::

    VOCdevkit/VOC2012/JPEGImages/2008_000008.jpg …
    VOCdevkit/VOC2012/ImageSets/Main/train.txt, val.txt, trainval.txt

The source may be the folder holding ``VOCdevkit/``, ``VOCdevkit/`` itself or
``VOC2012/``. The tar is not streamed: pass it and the error says to extract it
first. Images are the ids listed in ``ImageSets/Main/{train,val}.txt`` (or
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
the seed's proportions ``(6000, 6000, 100) / 12100``; the engine then cuts a
hash of each id at those fractions (deterministic, disjoint). A profile scales
them by setting ``fractions`` (and ``limit``) — e.g. ``(0.45, 0.45, 0.1)`` on a
tiny run, so the test split is not empty.

Recipe ``voc_derain`` (domains ``A``, ``B``): B = the clean image, short side
resized and centre-cropped to ``config.size``²; A = ``add_rain(B, …)`` with
parameters and drops seeded by ``item_seed(item_id, config.seed)``, so each
pair is reproducible. Options: ``rain_haze`` (bool, default ``False``) adds the
haze term; ``rain`` (dict of ``RainParams`` fields) fixes those fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from PIL import Image

from components.data.datasets import PrepareConfig, register_dataset
from components.data.rain import REFERENCE_SIZE, RainParams, add_rain, item_seed, sample_rain_params
from components.data.readers.base import DatasetReader, SourceItem, describe
from components.data.readers.mirflickr import center_square, to_rgb

#: engine split → role in seed 001's two-stage training
VOC_DERAIN_ROLES: dict[str, str] = {"train": "watermark", "val": "surrogate", "test": "test"}

#: seed 001: 6,000 watermark-training, 6,000 surrogate-training, 100 test images
SEED_SPLIT_SIZES: tuple[int, int, int] = (6000, 6000, 100)
SEED_FRACTIONS: tuple[float, float, float] = tuple(  # type: ignore[assignment]
    n / sum(SEED_SPLIT_SIZES) for n in SEED_SPLIT_SIZES)


def _read_ids(path: Path) -> list[str]:
    """Ids of one ``ImageSets/Main/*.txt`` (first column, blank lines skipped)."""
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


class VocReader(DatasetReader):
    """Streams the VOC2012 ``ImageSets/Main`` images from an extracted ``VOCdevkit``."""

    name = "voc2012"
    layout = ("VOCdevkit/VOC2012/JPEGImages/*.jpg and VOCdevkit/VOC2012/ImageSets/Main/"
              "{train,val,trainval}.txt (the extracted VOCtrainval_11-May-2012.tar)")

    def find_root(self, source: Path) -> Path:
        """The ``VOC2012`` folder inside ``source``.

        Raises:
            DatasetLayoutError: a tar (extract it first) or no ``VOC2012`` folder.
        """
        source = Path(source)
        if source.is_file() and (source.suffix == ".tar" or source.name.endswith((".tar.gz",
                                                                                   ".tgz"))):
            raise self.layout_error(
                source, "a tar archive, which is not streamed: extract it first "
                        f"(tar -xf {source.name}) and pass the folder holding VOCdevkit/")
        for root in (source, source / "VOC2012", source / "VOCdevkit" / "VOC2012"):
            if (root / "JPEGImages").is_dir():
                return root
        raise self.layout_error(source, describe(source))

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Yield one ``SourceItem`` per listed id, in sorted id order.

        Raises:
            DatasetLayoutError: a tar, a wrong folder, no ``ImageSets/Main`` lists,
                or listed ids whose JPEG is missing.
        """
        root = self.find_root(Path(source))
        main = root / "ImageSets" / "Main"
        voc_split: dict[str, str] = {}
        for name in ("train", "val"):
            if (main / f"{name}.txt").is_file():
                for item_id in _read_ids(main / f"{name}.txt"):
                    voc_split.setdefault(item_id, name)
        if not voc_split and (main / "trainval.txt").is_file():
            voc_split = dict.fromkeys(_read_ids(main / "trainval.txt"), "trainval")
        if not voc_split:
            found = describe(main) if main.exists() else f"{describe(root)} (no ImageSets/Main)"
            raise self.layout_error(root, f"no train.txt/val.txt/trainval.txt ids: {found}")
        jpegs = root / "JPEGImages"
        missing = [i for i in sorted(voc_split) if not (jpegs / f"{i}.jpg").is_file()]
        if missing:
            raise self.layout_error(
                root, f"{len(missing)} of {len(voc_split)} listed ids have no "
                      f"JPEGImages/<id>.jpg (e.g. {', '.join(missing[:3])}): "
                      "incomplete extraction?")
        for item_id in sorted(voc_split):
            yield SourceItem(item_id=item_id, location=str((jpegs / f"{item_id}.jpg").resolve()),
                             extra={"voc_split": voc_split[item_id]})


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
