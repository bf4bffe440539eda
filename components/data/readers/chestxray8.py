"""ChestX-ray8 (NIH Clinical Center) and the ``chestxray8_debone`` recipe.

Published layout (https://nihcc.app.box.com/v/ChestXray-NIHCC)::

    <source>/
      Data_Entry_2017.csv        # or Data_Entry_2017_v2020.csv
      images/00000001_000.png …  # from images_001.tar.gz … images_012.tar.gz
      train_val_list.txt         # optional: the publisher's patient-wise split
      test_list.txt              # optional

The Kaggle mirror's ``images_001/images/*.png`` … is accepted as well. Images
are 1024×1024 8-bit grayscale PNGs (a few are stored as RGBA; they are turned
into gray). The CSV header is, verbatim::

    Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,
    View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],

(one line, with a trailing comma): the commas inside the brackets are *not*
quoted, so a CSV parser sees ``OriginalImage[Width`` and ``Height]`` as two
columns. :func:`parse_header` joins such bracket fragments back into one
logical column; a properly quoted header works too.

Items: ``item_id`` = the image index (``00000001_000.png``), ``group`` = the
Patient ID (no patient in two splits), ``split`` from the publisher's lists
when present (see :class:`ChestXray8Reader`), ``extra`` = findings, view
position, follow-up, age, gender, original size and pixel spacing.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from neuralmark.components.data.bone_suppression import TARGET_KIND, suppress_ribs
from neuralmark.components.data.datasets import PrepareConfig, register_dataset
from neuralmark.components.data.readers.base import (
    DatasetLayoutError,
    DatasetReader,
    ItemError,
    SourceItem,
    describe,
)

log = logging.getLogger(__name__)

CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
#: Other spellings seen in the wild, mapped to the names used here.
COLUMN_ALIASES = {"Patient Sex": "Patient Gender"}
LIST_NAMES = {"train_val_list.txt": "trainval", "test_list.txt": "test"}
#: ``target_kind`` when B comes from the user's ``--targets`` folder.
SUPPLIED_TARGET_KIND = "supplied"
TARGET_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class BoneTargetError(ItemError):
    """One item's bone-suppressed target is unusable: quarantine this item only.

    Raised by :func:`debone_pair` (the transform, after the radiograph decoded);
    an ``ItemError``, which the prepare engine quarantines.
    """


class MissingTargetError(BoneTargetError, FileNotFoundError):
    """The ``--targets`` folder has no file for this item.

    Per-item, not a layout error: the engine should catch
    :class:`BoneTargetError` from the transform, quarantine the item with this
    message and go on with the others. It is also a ``FileNotFoundError``
    (``OSError``), so a handler written for unreadable files catches it too.
    """


# -- CSV ------------------------------------------------------------------------

def parse_header(fields: list[str]) -> dict[str, tuple[int, int]]:
    """Map logical column names to ``(first raw field, number of raw fields)``.

    Unquoted bracketed names that contain a comma arrive split
    (``OriginalImage[Width``, ``Height]``); the fragments are joined back
    (``OriginalImage[Width,Height]`` → ``(7, 2)``). Empty names (the trailing
    comma) are dropped; a BOM and surrounding spaces are stripped.

    Args:
        fields: the header row as a CSV reader returns it.

    Returns:
        ``{name: (start, width)}`` in header order.
    """
    columns: dict[str, tuple[int, int]] = {}
    i = 0
    while i < len(fields):
        name = fields[i].lstrip("\ufeff").strip()
        start, width = i, 1
        if "[" in name and "]" not in name:
            j = i + 1
            while j < len(fields) and "]" not in fields[j]:
                j += 1
            if j < len(fields):
                name = ",".join(f.strip() for f in [name, *fields[i + 1:j + 1]])
                width = j - i + 1
        i += width
        if name:
            columns[COLUMN_ALIASES.get(name, name)] = (start, width)
    return columns


@dataclass(frozen=True)
class DataEntry:
    """One row of ``Data_Entry_2017.csv`` (the fields this project keeps)."""

    image_index: str
    finding_labels: str
    patient_id: str
    view_position: str
    follow_up: int | None = None
    patient_age: int | None = None
    patient_gender: str | None = None
    original_size: tuple[int, int] | None = None
    pixel_spacing: tuple[float, float] | None = None

    def extra(self) -> dict[str, Any]:
        """JSON-able fields for the manifest's ``extra`` column."""
        return {
            "findings": [f for f in self.finding_labels.split("|") if f],
            "view_position": self.view_position,
            "follow_up": self.follow_up,
            "patient_age": self.patient_age,
            "patient_gender": self.patient_gender,
            "original_size": list(self.original_size) if self.original_size else None,
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
        }


def _int(value: str | None) -> int | None:
    """``"58"``, ``"058Y"`` (the 2017 file's older age format) → 58; junk → None."""
    if value is None:
        return None
    digits = value.strip().rstrip("YyMmDd")
    return int(digits) if digits.isdigit() else None


def _pair(values: list[str], cast: type) -> tuple | None:
    if len(values) == 1 and "," in values[0]:  # a quoted "2682,2749"
        values = values[0].split(",")
    try:
        return tuple(cast(v.strip()) for v in values) if len(values) == 2 else None
    except ValueError:
        return None


def read_data_entry(path: Path) -> list[DataEntry]:
    """Parse ``Data_Entry_2017.csv`` robustly (see :func:`parse_header`).

    Args:
        path: the CSV file.

    Returns:
        One :class:`DataEntry` per non-empty row, in file order.

    Raises:
        DatasetLayoutError: required columns missing, a row too short, an empty
            or duplicated image index, or no rows at all; the message names what
            was expected and what was found.
    """
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            raise DatasetLayoutError(f"{path} is empty: expected the header "
                                     f"{', '.join(REQUIRED_COLUMNS)}, …")
        columns = parse_header(header)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetLayoutError(
                f"{path} lacks the required column(s) {missing}: expected at least "
                f"{list(REQUIRED_COLUMNS)}; found {list(columns)}")
        raw_total = sum(w for _, w in columns.values())
        logical = {name: i for i, name in enumerate(columns)}

        def field(row: list[str], name: str) -> list[str] | None:
            if name not in columns:
                return None
            if len(row) >= raw_total:  # raw (unquoted) layout
                start, width = columns[name]
                return row[start:start + width]
            position = logical[name]  # quoted composite values
            return [row[position]] if position < len(row) else None

        needed = max(columns[c][0] for c in REQUIRED_COLUMNS) + 1
        entries: list[DataEntry] = []
        seen: set[str] = set()
        for lineno, row in enumerate(rows, start=2):
            if not any(v.strip() for v in row):
                continue
            if len(row) < min(needed, len(logical)):
                raise DatasetLayoutError(
                    f"{path}, line {lineno}: expected at least {needed} fields "
                    f"({', '.join(REQUIRED_COLUMNS)}); found {len(row)}: {row!r}")

            def get(name: str, row: list[str] = row) -> str | None:
                values = field(row, name)
                return values[0].strip() if values else None

            index = get("Image Index") or ""
            if not index:
                raise DatasetLayoutError(f"{path}, line {lineno}: expected an Image Index "
                                         f"(e.g. 00000001_000.png); found an empty field")
            if index in seen:
                raise DatasetLayoutError(f"{path}, line {lineno}: expected each Image Index "
                                         f"once; found {index} again")
            seen.add(index)
            size = field(row, "OriginalImage[Width,Height]")
            spacing = field(row, "OriginalImagePixelSpacing[x,y]")
            entries.append(DataEntry(
                image_index=index,
                finding_labels=get("Finding Labels") or "",
                patient_id=get("Patient ID") or "",
                view_position=get("View Position") or "",
                follow_up=_int(get("Follow-up #")),
                patient_age=_int(get("Patient Age")),
                patient_gender=get("Patient Gender") or None,
                original_size=_pair(size, int) if size else None,
                pixel_spacing=_pair(spacing, float) if spacing else None,
            ))
    if not entries:
        raise DatasetLayoutError(f"{path}: expected one row per image after the header; "
                                 f"found none")
    return entries


# -- reader ---------------------------------------------------------------------

class ChestXray8Reader(DatasetReader):
    """Streams ChestX-ray8 as the NIH publishes it.

    Splits: with ``train_val_list.txt`` / ``test_list.txt`` present, images in
    the test list get ``split="test"``; those in the train/val list get
    ``"train"`` or ``"val"`` by a hash of their Patient ID (a share
    ``val_share`` of the train/val patients, default 1/9 = val / (train + val) of
    the default 0.8/0.1/0.1 fractions) — the publisher has no separate val list.
    An image in neither list follows its patient if the lists place the
    patient, else the hash. Without the lists every ``split`` is ``None`` and the
    engine splits by content hash over ``group`` (= Patient ID).

    After :meth:`items` has started, ``missing_images`` lists the CSV rows whose
    PNG is absent (e.g. only some of the twelve archives were extracted): they
    are skipped and logged; if *all* are absent it is a layout error.

    Attributes:
        val_share: share of the train/val patients sent to ``val``.
        missing_images: image indices listed in the CSV but not found.
    """

    name = "chestxray8"
    layout = ("a folder with Data_Entry_2017.csv (columns Image Index, Finding Labels, "
              "Patient ID, View Position, …) and images/*.png extracted from "
              "images_001.tar.gz … images_012.tar.gz, optionally train_val_list.txt and "
              "test_list.txt")

    def __init__(self, val_share: float = 1 / 9) -> None:
        if not 0 <= val_share < 1:
            raise ValueError(f"val_share must be in [0, 1), got {val_share}")
        self.val_share = val_share
        self.missing_images: tuple[str, ...] = ()
        self._warned: tuple[str, ...] = ()

    # layout discovery ---------------------------------------------------------

    def find_root(self, source: Path) -> tuple[Path, Path]:
        """The dataset folder and its CSV: ``source``, or a sub-folder of it (e.g. ``CXR8/``)."""
        source = Path(source)
        if not source.is_dir():
            hint = (" (extract the images_*.tar.gz archives into one folder beside the CSV)"
                    if source.name.endswith((".tar.gz", ".tgz", ".tar")) else "")
            raise self.layout_error(source, describe(source) + hint)
        candidates = [source] + sorted(p for p in source.iterdir() if p.is_dir())
        for root in candidates:
            for name in CSV_NAMES:
                if (root / name).is_file():
                    return root, root / name
        raise DatasetLayoutError(
            f"{source} does not look like {self.name}: expected {' or '.join(CSV_NAMES)} "
            f"in it (or in one sub-folder); found {describe(source)}")

    def index_images(self, root: Path) -> dict[str, Path]:
        """``{file name: path}`` of ``images/*.png`` and ``images_*/images/*.png``."""
        folders = [root / "images"] + sorted(p / "images" for p in root.glob("images_*")
                                             if p.is_dir())
        folders = [f for f in folders if f.is_dir()]
        if not folders:
            archives = sorted(p.name for p in root.glob("images_*.tar.gz"))
            found = (f"the archives {', '.join(archives)} but no images/ folder: extract them "
                     f"(for f in images_*.tar.gz; do tar -xzf $f; done)" if archives
                     else describe(root))
            raise DatasetLayoutError(
                f"{root} does not look like {self.name}: expected an images/ folder of "
                f"PNGs beside {', '.join(CSV_NAMES[:1])}; found {found}")
        index: dict[str, Path] = {}
        for folder in folders:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.lower().endswith(".png") and entry.is_file():
                        index.setdefault(entry.name, Path(entry.path))
        return index

    def publisher_lists(self, root: Path) -> dict[str, str] | None:
        """``{image index: "trainval" | "test"}`` from the list files, or None without them."""
        present = [(root / n, kind) for n, kind in LIST_NAMES.items() if (root / n).is_file()]
        if not present:
            return None
        listed: dict[str, str] = {}
        for path, kind in present:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                name = line.strip()
                if not name:
                    continue
                if listed.get(name, kind) != kind:
                    raise DatasetLayoutError(
                        f"{root}: expected train_val_list.txt and test_list.txt to be "
                        f"disjoint; found {name} in both")
                listed[name] = kind
        return listed

    def _val(self, patient: str) -> bool:
        digest = hashlib.sha256(f"chestxray8:patient:{patient}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.val_share

    def _splits(self, root: Path, entries: list[DataEntry]) -> dict[str, str | None]:
        listed = self.publisher_lists(root)
        if listed is None:
            return {e.image_index: None for e in entries}
        patient_kind: dict[str, str] = {}
        for e in entries:
            kind = listed.get(e.image_index)
            if kind is None:
                continue
            if patient_kind.setdefault(e.patient_id, kind) != kind:
                raise DatasetLayoutError(
                    f"{root}: expected the publisher's lists to split by patient; found "
                    f"patient {e.patient_id} in both train_val_list.txt and test_list.txt")
        kinds = {k for n, k in LIST_NAMES.items() if (root / n).is_file()}
        # an image in no list and of no listed patient: the complement of the one list
        # present; with both lists present (never in the NIH files) it goes to train/val
        unlisted = "test" if kinds == {"trainval"} else "trainval"
        splits: dict[str, str | None] = {}
        for e in entries:
            kind = listed.get(e.image_index) or patient_kind.get(e.patient_id) or unlisted
            if kind == "test":
                splits[e.image_index] = "test"
            else:
                splits[e.image_index] = "val" if self._val(e.patient_id) else "train"
        return splits

    # the contract ---------------------------------------------------------------

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Stream one :class:`SourceItem` per CSV row whose PNG exists.

        Layout checks (CSV, columns, images folder, files present, lists) all run
        before the first item is yielded.

        Args:
            source: the dataset folder (see the module docstring).

        Yields:
            Items in CSV order; ``location`` is the PNG path.

        Raises:
            DatasetLayoutError: no CSV, a CSV without the required columns, no
                images folder, none of the CSV's images present, contradictory
                split lists; each message says what was expected and found.
        """
        root, csv_path = self.find_root(Path(source))
        entries = read_data_entry(csv_path)
        images = self.index_images(root)
        present = [e for e in entries if e.image_index in images]
        self.missing_images = tuple(e.image_index for e in entries
                                    if e.image_index not in images)
        if not present:
            example = ", ".join(e.image_index for e in entries[:3])
            raise DatasetLayoutError(
                f"{root}: expected the {len(entries)} images listed in {csv_path.name} "
                f"(e.g. {example}) under images/; found none of them "
                f"(images/ holds {describe(root / 'images')})")
        if self.missing_images and self.missing_images != self._warned:
            self._warned = self.missing_images  # the engine streams twice: warn once
            n_missing = len(self.missing_images)
            shown = ", ".join(self.missing_images[:5])
            more = f" (+{n_missing - 5} more)" if n_missing > 5 else ""
            log.warning("chestxray8: %d of %d images listed in %s are missing and skipped: %s%s",
                        n_missing, len(entries), csv_path.name, shown, more)
        splits = self._splits(root, entries)
        for e in present:
            yield SourceItem(item_id=e.image_index, location=str(images[e.image_index]),
                             group=e.patient_id, split=splits[e.image_index], extra=e.extra())


# -- recipe ---------------------------------------------------------------------

def target_kind(config: PrepareConfig) -> str:
    """What the B images of this prepare are: ``"supplied"`` or ``TARGET_KIND``.

    A dataset-level fact (one config, one kind): the config, the GX suite and the
    report should state it; the transform also writes it into each item's extra.
    """
    return SUPPLIED_TARGET_KIND if config.options.get("targets") else TARGET_KIND


def to_gray(image: Image.Image) -> Image.Image:
    """Any decoded radiograph → 8-bit ``L`` (RGBA/RGB/LA via luminance, 16-bit rescaled)."""
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("L")


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then Lanczos-resize to ``size × size`` (same mode)."""
    w, h = image.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def find_target(targets: Path, item_id: str) -> Path:
    """The target file for ``item_id``: same name, else same stem with an image suffix.

    Raises:
        DatasetLayoutError: ``targets`` is not a folder (a config problem, not an item's).
        MissingTargetError: no file for this item.
    """
    if not targets.is_dir():
        raise DatasetLayoutError(
            f"--targets {targets}: expected a folder of bone-suppressed images named like "
            f"the radiographs (00000001_000.png, …); found {describe(targets)}")
    path = targets / item_id
    if path.is_file():
        return path
    stem = Path(item_id).stem
    for suffix in TARGET_SUFFIXES:
        for candidate in (targets / f"{stem}{suffix}", targets / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise MissingTargetError(
        f"{item_id}: no bone-suppressed target in {targets} (expected {item_id} or "
        f"{stem}.<png|jpg|tif|bmp>); the item is quarantined")


def _approximate_target(gray: Image.Image) -> Image.Image:
    """Rib-suppression approximation of an ``L`` image (same size, ``L``)."""
    x = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None]
    y = suppress_ribs(x)[0, 0].numpy()
    return Image.fromarray(np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8), "L")


@register_dataset(
    "chestxray8_debone", reader=ChestXray8Reader, domains=("A", "B"),
    description=("ChestX-ray8 radiographs (A) and bone-suppressed targets (B): real ones "
                 "from options.targets when given, else a classical rib-suppression "
                 f"approximation (target_kind={TARGET_KIND!r}), not seed 001's network"),
    defaults={"size": 256}, options=("targets",),
    extra_values={"target_kind": (SUPPLIED_TARGET_KIND, TARGET_KIND)})
def debone_pair(image: Image.Image, item: SourceItem,
                config: PrepareConfig) -> dict[str, Image.Image]:
    """One debone pair: A = the radiograph, B = its bone-suppressed target.

    Both go through the same steps: gray (``L``) → centre-crop to a square (a
    no-op for the 1024² originals) → Lanczos resize to ``config.size`` → gray
    replicated to RGB (R = G = B), because every network and tensor in this
    project is ``B×3×H×W``; a consumer wanting one channel takes any of them.

    The recipe's default size is 256 (``defaults={"size": 256}``): seed 001 does
    not state its working resolution, but its H, R, D and surrogates are
    pix2pix-family networks (UNet, CEILNet-style, PatchGAN) whose standard size
    is 256², and 1024 → 256 is an exact factor 4; profiles may override it.

    B is, with ``config.options["targets"] = DIR``, the same-named image of DIR
    processed identically (a different size is fine if the aspect ratio
    matches); otherwise the :mod:`neuralmark.components.data.bone_suppression`
    approximation computed on the resized A. ``item.extra["target_kind"]`` is set
    to ``"supplied"`` or ``"classical-approximation"`` (see :func:`target_kind`).

    Args:
        image: the decoded radiograph (``L``, or RGBA for a few NIH files).
        item: the reader's item (``item_id`` names the target file).
        config: prepare options; reads ``size`` and ``options["targets"]``.

    Returns:
        ``{"A": RGB size×size, "B": RGB size×size}``.

    Raises:
        MissingTargetError: targets given, but none for this item (per item).
        BoneTargetError: the target cannot be decoded or its aspect ratio differs
            from the radiograph's (per item).
        DatasetLayoutError: ``options["targets"]`` is not a folder.
    """
    gray = to_gray(image)
    a = square_resize(gray, config.size)
    targets = config.options.get("targets")
    if targets:
        path = find_target(Path(targets), item.item_id)
        try:
            with Image.open(path) as target_file:
                target_file.load()
                target = to_gray(target_file)
        except OSError as err:
            raise BoneTargetError(f"{item.item_id}: target {path} cannot be decoded "
                                  f"({err}); the item is quarantined") from err
        (wa, ha), (wb, hb) = gray.size, target.size
        if abs(wa / ha - wb / hb) > 0.01:
            raise BoneTargetError(
                f"{item.item_id}: target {path} is {wb}×{hb}, expected the radiograph's "
                f"aspect ratio ({wa}×{ha}); the item is quarantined")
        b = square_resize(target, config.size)
    else:
        b = _approximate_target(a)
    item.extra["target_kind"] = target_kind(config)
    return {"A": a.convert("RGB"), "B": b.convert("RGB")}
