"""Labelled image datasets for the training pipeline: procedural classes and prepared sets.

Two sources of class labels, one manifest format (``prepare.PREPARED_COLUMNS``: the
manifest's columns + ``domain``, ``pair``, ``label``, ``extra``), so every downstream step
reads both the same way (``load_labels``, ``training_data``):

* **Procedural classes** (``build_procedural_classes``): ten families of synthetic
  32² images (stripes of two orientations × two frequencies, diagonal stripes, checkers,
  rings, discs, polygons, blobs) with random colours, orientation / frequency jitter, a
  faint distractor from another family and sensor grain — a labelled task that a small
  classifier learns on a CPU in a minute but does not solve perfectly, for the ``tiny``
  profile (the sample photos have no labels). Every class is closed under horizontal
  flips (the classifiers train with flip augmentation), so ±45° stripes are one class.
* **Prepared datasets** (``neuralmark data prepare cifar10``): ``training_view`` writes,
  beside the prepared manifest, a view of it with a ``val`` split carved out of ``train``
  when the publisher has none (CIFAR-10 publishes train / test), by the hash rank of
  each row's group (``splits.split_by_name_hash``), so the same seed gives the same view.

Both write a ``.prepared.json`` marker holding the recipe's expectations (size, label
range), which the validation suite checks the files against.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuralmark.components.data.datasets import RecipeExpectations
from neuralmark.components.data.manifest import SPLITS, load_split
from neuralmark.components.data.prepare import MARKER, PREPARED_COLUMNS, write_prepared_manifest
from neuralmark.components.data.sample import palette, smooth_noise
from neuralmark.components.data.splits import split_by_name_hash, split_counts
from neuralmark.components.errors import InputError
from neuralmark.components.files import atomic_write_dir

#: bump when the generator changes in a way that changes bytes
CLASSES_FORMAT_VERSION = 1
PNG_COMPRESS_LEVEL = 6
#: the ten procedural classes, label = index
CLASS_NAMES = ("stripes_h_low", "stripes_h_high", "stripes_v_low", "stripes_v_high",
               "stripes_diagonal", "checkers", "rings", "discs", "polygons", "blobs")
#: file name of the view ``training_view`` writes beside a prepared manifest
VIEW_NAME = "training_view.csv"


class ProceduralClassesConfig(BaseModel):
    """How to build the procedural classes dataset.

    Attributes:
        size: side of every square image (CIFAR's 32 by default).
        images_per_class: images of each of the 10 classes, over all splits.
        seed: seed of every random draw.
        fractions: train/val/test share of each class (sums to 1).
        distractor: largest weight of the other-family image blended over each image.
        grain: largest standard deviation of the additive sensor grain.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(32, ge=16, le=512)
    images_per_class: int = Field(100, ge=3)
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    distractor: float = Field(0.35, ge=0.0, lt=1.0)
    grain: float = Field(0.06, ge=0.0, le=0.5)

    @field_validator("fractions")
    @classmethod
    def _shares(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v) or not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must be > 0 and sum to 1, got {v}")
        return v


# -- the ten families (each returns H×W×3 float64 in [0, 1]) -----------------------------------


def _rng(seed: int, *names: Any) -> np.random.Generator:
    digest = hashlib.sha256(":".join(str(n) for n in (seed, *names)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="xy")


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least a little apart (a pattern must stay visible)."""
    c0 = rng.random(3)
    c1 = rng.random(3)
    while np.abs(c1 - c0).sum() < 0.45:
        c1 = rng.random(3)
    return c0, c1


def _wave(rng: np.random.Generator, size: int, angle: float, cycles: float,
          square: bool = False) -> np.ndarray:
    """A (soft-)square wave across ``angle`` with ``cycles`` periods over the image: H×W."""
    x, y = _coords(size)
    u = x * np.cos(angle) + y * np.sin(angle)
    w = np.sin(2 * np.pi * cycles * u + rng.uniform(0, 2 * np.pi))
    sharp = float(rng.uniform(1.0, 6.0))
    w = np.tanh(sharp * w) / np.tanh(sharp)
    if square:
        v = -x * np.sin(angle) + y * np.cos(angle)
        w = w * np.tanh(sharp * np.sin(2 * np.pi * cycles * v + rng.uniform(0, 2 * np.pi)))
    return 0.5 + 0.5 * w


def _stripes(rng: np.random.Generator, size: int, base_angle: float,
             cycles: tuple[float, float]) -> np.ndarray:
    angle = base_angle + np.deg2rad(rng.uniform(-15, 15))
    w = _wave(rng, size, angle, float(rng.uniform(*cycles)))[..., None]
    c0, c1 = _two_colours(rng)
    return c0 * (1 - w) + c1 * w


def _diagonal(rng: np.random.Generator, size: int) -> np.ndarray:
    sign = 1 if rng.random() < 0.5 else -1
    return _stripes(rng, size, sign * np.pi / 4, (2.0, 7.0))


def _checkers(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-20, 20))
    w = _wave(rng, size, angle, float(rng.uniform(1.5, 4.5)), square=True)
    w = np.clip(w, 0, 1)[..., None]
    c0, c1 = _two_colours(rng)
    return c0 * (1 - w) + c1 * w


def _rings(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    r = np.hypot(x - cx, y - cy)
    w = 0.5 + 0.5 * np.sin(2 * np.pi * float(rng.uniform(2.0, 6.0)) * r + rng.uniform(0, 6.3))
    c0, c1 = _two_colours(rng)
    return c0 * (1 - w[..., None]) + c1 * w[..., None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    theta = rng.uniform(0, 2 * np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    c0, c1 = rng.random(3), rng.random(3)
    return c0 * (1 - u[..., None]) + c1 * u[..., None]


def _drawn(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """Discs (ellipses) or polygons (rectangles, triangles) over a gradient, antialiased."""
    big = 4 * size
    canvas = Image.fromarray(np.uint8(np.rint(_background(rng, size) * 255))).resize(
        (big, big), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        cx, cy = rng.uniform(0.1, 0.9, size=2) * big
        r = float(rng.uniform(0.12, 0.3)) * big
        if kind == "discs":
            ry = r * float(rng.uniform(0.7, 1.3))
            draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=colour)
        else:
            n = int(rng.integers(3, 5))
            start = rng.uniform(0, 2 * np.pi)
            pts = [(cx + r * np.cos(start + 2 * np.pi * k / n),
                    cy + r * np.sin(start + 2 * np.pi * k / n)) for k in range(n)]
            draw.polygon([(float(px), float(py)) for px, py in pts], fill=colour)
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64) / 255.0


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    field = smooth_noise(rng, size, 1, octaves=3, base_cells=2)[..., 0]
    return palette(rng, field)


FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "stripes_h_low": lambda rng, s: _stripes(rng, s, np.pi / 2, (1.5, 3.5)),
    "stripes_h_high": lambda rng, s: _stripes(rng, s, np.pi / 2, (4.5, 8.0)),
    "stripes_v_low": lambda rng, s: _stripes(rng, s, 0.0, (1.5, 3.5)),
    "stripes_v_high": lambda rng, s: _stripes(rng, s, 0.0, (4.5, 8.0)),
    "stripes_diagonal": _diagonal,
    "checkers": _checkers,
    "rings": _rings,
    "discs": lambda rng, s: _drawn(rng, s, "discs"),
    "polygons": lambda rng, s: _drawn(rng, s, "polygons"),
    "blobs": _blobs,
}


def class_image(label: int, index: int, config: ProceduralClassesConfig) -> np.ndarray:
    """The ``index``-th image of class ``label``: ``size×size×3`` uint8.

    A family image, blended with a random image of another family (weight up to
    ``distractor``) and overlaid with grain (σ up to ``grain``).

    Raises:
        InputError: ``label`` outside 0..9.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise InputError(f"class label {label} outside 0..{len(CLASS_NAMES) - 1}")
    rng = _rng(config.seed, "class", label, index)
    img = FAMILIES[CLASS_NAMES[label]](rng, config.size)
    other = (label + int(rng.integers(1, len(CLASS_NAMES)))) % len(CLASS_NAMES)
    weight = float(rng.uniform(0.0, config.distractor))
    img = (1 - weight) * img + weight * FAMILIES[CLASS_NAMES[other]](rng, config.size)
    img = img + rng.normal(0.0, float(rng.uniform(0.0, config.grain)), size=img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _marker_record(expectations: RecipeExpectations, fingerprint: str,
                   counts: dict[str, dict[str, int]]) -> str:
    """``.prepared.json`` in the prepare engine's shape (what validation reads)."""
    return json.dumps({"fingerprint": fingerprint, "splits": sorted(counts),
                       "report": {"expectations": expectations.to_dict(), "counts": counts}},
                      indent=2, sort_keys=True) + "\n"


def classes_expectations(config: ProceduralClassesConfig) -> RecipeExpectations:
    """What every row of a procedural classes dataset satisfies (the validation suite's facts)."""
    return RecipeExpectations(dataset="procedural_classes", domains=("image",),
                              size=config.size, label_range=(0, len(CLASS_NAMES) - 1))


def build_procedural_classes(root: str | os.PathLike,
                             config: ProceduralClassesConfig | None = None) -> Path:
    """Build (or reuse) the procedural classes dataset under ``root``.

    Layout: ``root/manifest.csv`` (``PREPARED_COLUMNS``, labels set),
    ``root/<split>/<class>_<index>.png``, ``root/.prepared.json`` (the config's
    fingerprint and the expectations). Each class is cut into train/val/test by
    ``fractions`` (exact counts), so every split holds every class. Idempotent (same
    config: nothing is done) and atomic (built beside ``root``, then renamed).

    Returns:
        The manifest path.
    """
    root = Path(root)
    config = config or ProceduralClassesConfig()
    record = json.dumps({"format": CLASSES_FORMAT_VERSION,
                         "config": config.model_dump(mode="json")}, sort_keys=True)
    fingerprint = hashlib.sha256(record.encode()).hexdigest()
    try:
        if (json.loads((root / MARKER).read_text()).get("fingerprint") == fingerprint
                and (root / "manifest.csv").is_file()):
            return root / "manifest.csv"
    except (OSError, ValueError):
        pass
    n_train, n_val, _ = split_counts(config.images_per_class, config.fractions)

    def write(tmp: Path) -> None:
        rows: list[dict[str, Any]] = []
        counts: dict[str, dict[str, int]] = {}
        for label, name in enumerate(CLASS_NAMES):
            for index in range(config.images_per_class):
                split = ("train" if index < n_train else
                         "val" if index < n_train + n_val else "test")
                png = _png(class_image(label, index, config))
                rel = f"{split}/{name}_{index:05d}.png"
                (tmp / split).mkdir(exist_ok=True)
                (tmp / rel).write_bytes(png)
                group = f"{name}_{index:05d}"
                rows.append({"path": rel, "sha256": hashlib.sha256(png).hexdigest(),
                             "width": config.size, "height": config.size, "mode": "RGB",
                             "split": split, "source": f"procedural_classes:{name}",
                             "group": group, "domain": "image", "pair": "", "label": label,
                             "extra": json.dumps({"label_name": name})})
                counts.setdefault(split, {"image": 0})["image"] += 1
        write_prepared_manifest(rows, tmp / "manifest.csv")
        (tmp / MARKER).write_text(_marker_record(classes_expectations(config), fingerprint,
                                                 counts))

    atomic_write_dir(root, write)
    return root / "manifest.csv"


# -- prepared datasets --------------------------------------------------------------------------


def _read_prepared(manifest: Path) -> list[dict[str, str]]:
    if not manifest.is_file():
        raise InputError(f"prepared manifest {manifest} does not exist (prepare the dataset "
                         "first, e.g. `neuralmark data prepare cifar10 --source …`)")
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != PREPARED_COLUMNS:
            raise InputError(f"{manifest} is not a prepared manifest: columns "
                             f"{reader.fieldnames}, expected {PREPARED_COLUMNS}")
        return list(reader)


def prepared_expectations(manifest: str | os.PathLike) -> RecipeExpectations:
    """The expectations recorded in ``.prepared.json`` beside ``manifest``.

    Raises:
        InputError: no marker, or one without expectations (an unfinished prepare).
    """
    marker = Path(manifest).parent / MARKER
    try:
        data = json.loads(marker.read_text())
        return RecipeExpectations.from_dict(data["report"]["expectations"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{marker} is missing or holds no expectations ({err}); the dataset "
                         "was not prepared to the end: prepare it again") from None


def training_view(manifest: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """A train/val/test view of a prepared single-domain dataset with labels.

    Written beside ``manifest`` as ``training_view.csv`` (same folder, so the paths stay
    valid; the marker beside it still applies). A dataset with a ``val`` split is viewed
    as it is; otherwise ``val_fraction`` of the train groups, ranked by
    ``sha256("<seed>:<group>")``, become ``val``.

    Args:
        manifest: the prepared ``manifest.csv`` (or its folder).
        val_fraction: share of the train groups moved to val when there is no val split.
        seed: salt of the group ranking.

    Returns:
        The view's path.

    Raises:
        InputError: not a prepared manifest, a paired one, rows without labels, or no
            train / test split.
    """
    path = Path(manifest)
    path = path / "manifest.csv" if path.is_dir() else path
    rows = _read_prepared(path)
    domains = sorted({r["domain"] for r in rows})
    if domains != ["image"]:
        raise InputError(f"{path} holds domains {domains}: the training pipeline reads "
                         "single-domain image datasets (paired ones go to output_mark)")
    unlabelled = sum(1 for r in rows if r["label"] == "")
    if unlabelled:
        raise InputError(f"{path}: {unlabelled} of {len(rows)} rows have no label")
    present = {r["split"] for r in rows}
    missing = sorted({"train", "test"} - present)
    if missing:
        raise InputError(f"{path} has no {' / '.join(missing)} split (it has {sorted(present)})")
    if "val" not in present:
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1) to carve val out of train, got "
                             f"{val_fraction}")
        groups = sorted({r["group"] for r in rows if r["split"] == "train"})
        if len(groups) < 2:
            raise InputError(f"{path}: {len(groups)} train group(s) cannot give a val split")
        split_of = split_by_name_hash(groups, (1.0 - val_fraction, val_fraction / 2,
                                               val_fraction / 2), seed)
        # the hash cut gives train / val / test shares; val and "test" of the cut both go to val
        for r in rows:
            if r["split"] == "train" and split_of[r["group"]] != "train":
                r["split"] = "val"
    out = path.parent / VIEW_NAME
    write_prepared_manifest(rows, out)
    return out


# -- reading labels -----------------------------------------------------------------------------


def load_labels(manifest: str | os.PathLike, split: str, limit: int | None = None
                ) -> torch.Tensor | None:
    """Labels of one split, in ``manifest.load_split``'s order: ``N`` int64, or ``None``.

    ``None`` when the manifest has no ``label`` column or the split's labels are empty.

    Raises:
        InputError: some rows of the split are labelled and others not, or a label is not
            an integer.
    """
    with Path(manifest).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "label" not in (reader.fieldnames or []):
            return None
        values = [r["label"] for r in reader if r["split"] == split]
    if limit is not None:
        values = values[: max(limit, 0)]
    if not any(values):
        return None
    if not all(values):
        raise InputError(f"{manifest}: split {split!r} has rows without a label")
    try:
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    except ValueError as err:
        raise InputError(f"{manifest}: split {split!r} has a non-integer label ({err})") from None


def training_data(manifest: str | os.PathLike, size: int | None = None,
                  calibration: bool = False) -> dict[str, torch.Tensor]:
    """What ``fit`` takes from a manifest: ``train`` and ``val`` (``N×3×S×S`` in [0, 1]).

    With labels in the manifest also ``train_labels`` / ``val_labels`` and the held-out
    ``test`` / ``test_labels`` (int64, ``N``); with ``calibration`` also ``calibration``
    (the val images at their own resolution, for detectors calibrated as they verify).

    Args:
        manifest: a validated manifest (sample, procedural classes or a prepared view).
        size: side the images are resized to (``None``: as stored).
        calibration: add the ``calibration`` images.
    """
    splits = ("train", "val")
    labels = {s: load_labels(manifest, s) for s in SPLITS}
    if labels["train"] is not None:
        splits = SPLITS
    data: dict[str, torch.Tensor] = {s: load_split(manifest, s, size=size) for s in splits}
    for s in splits:
        if labels[s] is not None:
            data[f"{s}_labels"] = labels[s]
    if calibration:
        data["calibration"] = load_split(manifest, "val")
    return data

