"""A small, offline, byte-deterministic image dataset for tests and the tiny profile.

Photos come only from files bundled inside installed packages (nothing is
downloaded): the scikit-image sample photos under ``skimage/data/`` and the two
scikit-learn sample images (``china.jpg``, ``flower.jpg``). The files are read
directly with PIL, so neither package is imported and no pooch fetcher runs.
Grayscale photos are replicated to three channels.

Each photo gives ``crops_per_photo`` random square crops (side a random
fraction in ``[min_scale, 1]`` of the short side, random position), resized to
``size×size`` with Lanczos. ``n_procedural`` synthetic images (multi-octave
value noise, colour gradients, random shapes, stripe/checker textures and
masked mixtures of those) add content no photo has.

Layout under ``root``::

    manifest.csv               # see neuralmark.components.data.manifest
    .config.json               # the config that built it (idempotence check)
    train/<sha256[:16]>.png    # also val/, test/

Splits are made per *group* (all crops of one photo, or one procedural image),
so a photo never appears in two splits. Groups are ordered by a content hash
(photo: the source file bytes; procedural: the PNG bytes) and cut by
``fractions``, separately for photo and procedural groups, so every split gets
photos and synthetic images.

The same config gives byte-identical PNGs and manifest: every random draw comes
from a ``numpy`` generator seeded from ``(seed, name)``, resampling uses PIL's
C code, and PNGs are written without metadata at a fixed compression level.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuralmark.components.data.manifest import ManifestRow, write_manifest
from neuralmark.components.data.splits import assign_splits, split_counts  # noqa: F401 (re-exported)
from neuralmark.components.files import atomic_write_dir

#: bump when the generator changes in a way that changes bytes
SAMPLE_FORMAT_VERSION = 1
PNG_COMPRESS_LEVEL = 6

Progress = Callable[[int, int], None]


class SampleDataConfig(BaseModel):
    """How to build the sample dataset.

    Attributes:
        size: side of every square output image, in pixels.
        crops_per_photo: random crops taken from each bundled photo.
        n_procedural: number of synthetic images (at least 3, one per split).
        seed: seed of every random draw.
        fractions: train/val/test share of the groups (sums to 1).
        min_scale: smallest crop side as a fraction of the photo's short side.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(256, ge=16, le=4096)
    crops_per_photo: int = Field(6, ge=1)
    n_procedural: int = Field(24, ge=3)
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    min_scale: float = Field(0.35, gt=0.0, le=1.0)

    @field_validator("fractions")
    @classmethod
    def _fractions_are_shares(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v):
            raise ValueError(f"every split fraction must be > 0, got {v}")
        if not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1, got {v} (sum {sum(v)})")
        return v


@dataclass(frozen=True)
class BundledPhoto:
    """A photo file shipped inside an installed package.

    Attributes:
        package: top-level package holding the file (``skimage``, ``sklearn``).
        relpath: path inside the package directory.
        group: split unit; the two stereo motorcycle views share one group.
    """

    package: str
    relpath: str
    group: str

    @property
    def source(self) -> str:
        """Manifest ``source`` label, e.g. ``skimage:astronaut.png``."""
        return f"{self.package}:{Path(self.relpath).name}"

    def file(self) -> Path:
        """Absolute path of the file (the package is located, not imported).

        Raises:
            FileNotFoundError: the package is not installed or lacks the file.
        """
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"sample photo {self.source}: package {self.package!r} is not installed"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        if not path.is_file():
            raise FileNotFoundError(f"sample photo {self.source}: {path} does not exist")
        return path


def _skimage(name: str, group: str | None = None) -> BundledPhoto:
    return BundledPhoto("skimage", f"data/{name}", group or f"photo:{Path(name).stem}")


BUNDLED_PHOTOS: tuple[BundledPhoto, ...] = (
    # colour photos
    _skimage("astronaut.png"),
    _skimage("chelsea.png"),
    _skimage("coffee.png"),
    _skimage("hubble_deep_field.jpg"),
    _skimage("ihc.png", "photo:immunohistochemistry"),
    _skimage("motorcycle_left.png", "photo:stereo_motorcycle"),
    _skimage("motorcycle_right.png", "photo:stereo_motorcycle"),
    _skimage("retina.jpg"),
    _skimage("rocket.jpg"),
    # grayscale photos, replicated to RGB
    _skimage("camera.png"),
    _skimage("coins.png"),
    _skimage("moon.png"),
    _skimage("brick.png"),
    _skimage("grass.png"),
    _skimage("gravel.png"),
    _skimage("page.png"),
    # scikit-learn's load_sample_images()
    BundledPhoto("sklearn", "datasets/images/china.jpg", "photo:china"),
    BundledPhoto("sklearn", "datasets/images/flower.jpg", "photo:flower"),
)

PROCEDURAL_KINDS = ("noise", "gradient", "shapes", "texture", "mixture")


def load_bundled_photo(photo: BundledPhoto) -> Image.Image:
    """Decode a bundled photo as an RGB PIL image (grayscale is replicated)."""
    with Image.open(photo.file()) as im:
        return im.convert("RGB")


# -- random helpers -----------------------------------------------------------

def _rng(seed: int, *names: str | int) -> np.random.Generator:
    """A generator seeded from ``seed`` and stable names (independent streams)."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    for name in names:
        digest = hashlib.sha256(str(name).encode()).digest()
        words.extend(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))
    return np.random.default_rng(words)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """``H×W×3`` float in [0, 1] → ``H×W×3`` uint8."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    """Encode ``H×W×3`` uint8 as a metadata-free PNG."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


# -- photo crops --------------------------------------------------------------

def random_crops(image: Image.Image, n: int, size: int, min_scale: float,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Random square crops of a photo, resized to ``size×size``.

    Args:
        image: an RGB PIL image.
        n: number of crops.
        size: output side in pixels.
        min_scale: smallest crop side as a fraction of the short side.
        rng: source of the crop scales and positions.

    Returns:
        ``n`` arrays of shape ``size×size×3``, uint8.
    """
    w, h = image.size
    short = min(w, h)
    crops = []
    for _ in range(n):
        side = max(1, min(short, round(float(rng.uniform(min_scale, 1.0)) * short)))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        crop = image.resize((size, size), Image.Resampling.LANCZOS,
                            box=(x0, y0, x0 + side, y0 + side))
        crops.append(np.asarray(crop, dtype=np.uint8))
    return crops


# -- procedural images (all return H×W×3 float64 in [0, 1]) -------------------

def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of a small 2-D float grid to ``size×size`` (PIL, mode F)."""
    im = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def smooth_noise(rng: np.random.Generator, size: int, channels: int = 1,
                 octaves: int = 5, base_cells: int = 2,
                 persistence: float = 0.55) -> np.ndarray:
    """Multi-octave value noise, stretched to ``[0, 1]`` per channel.

    Returns:
        ``size×size×channels`` float64.
    """
    acc = np.zeros((size, size, channels))
    amp, total = 1.0, 0.0
    for octave in range(octaves):
        cells = base_cells * 2**octave + 1
        if cells > size:
            break
        grid = rng.random((cells, cells, channels))
        for c in range(channels):
            acc[..., c] += amp * _upsample(grid[..., c], size)
        total += amp
        amp *= persistence
    acc /= max(total, 1e-12)
    lo = acc.min(axis=(0, 1), keepdims=True)
    hi = acc.max(axis=(0, 1), keepdims=True)
    return (acc - lo) / np.maximum(hi - lo, 1e-6)


def palette(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map a scalar field ``H×W`` in [0, 1] through a random piecewise-linear palette.

    Returns:
        ``H×W×3`` float64 in [0, 1].
    """
    n = int(rng.integers(2, 6))
    stops = np.sort(rng.random(n))
    stops[0], stops[-1] = 0.0, 1.0
    colours = rng.random((n, 3))
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], axis=-1)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): ``(x, y)``, each ``size×size``."""
    axis = (np.arange(size) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="xy")


def noise_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth coloured noise: a palette over one field, or three fields as RGB."""
    octaves = int(rng.integers(3, 7))
    base = int(rng.integers(1, 5))
    persistence = float(rng.uniform(0.4, 0.75))
    if rng.random() < 0.5:
        field = smooth_noise(rng, size, 1, octaves, base, persistence)[..., 0]
        return palette(rng, field)
    return smooth_noise(rng, size, 3, octaves, base, persistence)


def gradient_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear or radial multi-colour gradient with faint smooth noise."""
    x, y = _coords(size)
    if rng.random() < 0.5:
        theta = rng.uniform(0, 2 * np.pi)
        u = x * np.cos(theta) + y * np.sin(theta)
    else:
        cx, cy = rng.uniform(-0.2, 1.2, size=2)
        u = np.hypot(x - cx, y - cy)
    u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    u = u ** float(rng.uniform(0.5, 2.0))
    img = palette(rng, u)
    wobble = smooth_noise(rng, size, 3, octaves=4, base_cells=2) - 0.5
    return np.clip(img + float(rng.uniform(0.0, 0.12)) * wobble, 0.0, 1.0)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    return (r, g, b)


def shapes_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random ellipses, rectangles, polygons, chords and lines over a background.

    Drawn at twice the size and downsampled (Lanczos) for antialiased edges.
    """
    big = 2 * size
    if rng.random() < 0.5:
        background = Image.fromarray(_to_uint8(gradient_image(rng, size)))
        canvas = background.resize((big, big), Image.Resampling.BICUBIC)
    else:
        canvas = Image.new("RGB", (big, big), _colour(rng))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(6, 30))):
        kind = int(rng.integers(0, 5))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(-big // 8, big + big // 8, size=4))
        box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
        outline = _colour(rng) if rng.random() < 0.3 else None
        width = int(rng.integers(1, 8))
        if kind == 0:
            draw.ellipse(box, fill=_colour(rng), outline=outline, width=width)
        elif kind == 1:
            draw.rectangle(box, fill=_colour(rng), outline=outline, width=width)
        elif kind == 2:
            n = int(rng.integers(3, 8))
            pts = [(int(px), int(py)) for px, py in rng.integers(0, big, size=(n, 2))]
            draw.polygon(pts, fill=_colour(rng), outline=outline, width=width)
        elif kind == 3:
            start, end = (float(a) for a in rng.uniform(0, 360, size=2))
            draw.chord(box, start, end, fill=_colour(rng), outline=outline, width=width)
        else:
            draw.line([box[:2], box[2:]], fill=_colour(rng), width=int(rng.integers(2, 24)))
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64) / 255.0


def texture_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes, checkers or plaid at a random angle and frequency, optionally warped."""
    x, y = _coords(size)
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    if rng.random() < 0.4:  # domain warp: wavy stripes, marble-like
        warp = smooth_noise(rng, size, 2, octaves=3, base_cells=2) - 0.5
        strength = float(rng.uniform(0.02, 0.15))
        u = u + strength * warp[..., 0]
        v = v + strength * warp[..., 1]
    freq = float(rng.uniform(3.0, 40.0))
    phase = rng.uniform(0, 2 * np.pi, size=2)
    su = np.sin(2 * np.pi * freq * u + phase[0])
    sv = np.sin(2 * np.pi * freq * v + phase[1])
    pattern = int(rng.integers(0, 3))
    if pattern == 0:
        w = su
    elif pattern == 1:
        w = su * sv
    else:
        w = 0.5 * (su + sv)
    sharpness = float(rng.uniform(1.0, 12.0))
    w = 0.5 + 0.5 * np.tanh(sharpness * w) / np.tanh(sharpness)
    c0, c1 = rng.random(3), rng.random(3)
    return c0 * (1 - w[..., None]) + c1 * w[..., None]


_LAYERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "noise": noise_image,
    "gradient": gradient_image,
    "shapes": shapes_image,
    "texture": texture_image,
}


def mixture_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two different layers blended through a soft, noise-shaped mask."""
    names = sorted(_LAYERS)
    first, second = rng.choice(len(names), size=2, replace=False)
    a = _LAYERS[names[int(first)]](rng, size)
    b = _LAYERS[names[int(second)]](rng, size)
    field = smooth_noise(rng, size, 1, octaves=int(rng.integers(2, 5)), base_cells=2)[..., 0]
    mask = np.clip((field - 0.5) * float(rng.uniform(2.0, 12.0)) + 0.5, 0.0, 1.0)[..., None]
    return a * (1 - mask) + b * mask


def procedural_image(seed: int, index: int, size: int) -> tuple[str, np.ndarray]:
    """The ``index``-th synthetic image: kinds cycle, content is seeded.

    Args:
        seed: dataset seed.
        index: image number (0-based).
        size: output side in pixels.

    Returns:
        ``(kind, image)`` with ``image`` ``size×size×3`` uint8.
    """
    kind = PROCEDURAL_KINDS[index % len(PROCEDURAL_KINDS)]
    rng = _rng(seed, "procedural", index)
    img = mixture_image(rng, size) if kind == "mixture" else _LAYERS[kind](rng, size)
    if rng.random() < 0.5:  # faint sensor-like grain
        img = img + rng.normal(0.0, float(rng.uniform(0.003, 0.02)), size=img.shape)
    return kind, _to_uint8(img)


# -- build --------------------------------------------------------------------

@dataclass(frozen=True)
class _Item:
    png: bytes
    sha256: str
    source: str
    group: str


def _config_record(config: SampleDataConfig) -> dict:
    return {"format": SAMPLE_FORMAT_VERSION, "config": config.model_dump(mode="json")}


def _is_built(root: Path, config: SampleDataConfig) -> bool:
    marker = root / ".config.json"
    if not (root / "manifest.csv").is_file() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _config_record(config)
    except (OSError, ValueError):
        return False


def _generate(config: SampleDataConfig, progress: Progress | None) -> list[_Item]:
    total = len(BUNDLED_PHOTOS) * config.crops_per_photo + config.n_procedural
    done = 0
    items: list[_Item] = []

    def add(arr: np.ndarray, source: str, group: str) -> None:
        nonlocal done
        png = _png_bytes(arr)
        items.append(_Item(png, hashlib.sha256(png).hexdigest(), source, group))
        done += 1
        if progress is not None:
            progress(done, total)

    for photo in BUNDLED_PHOTOS:
        image = load_bundled_photo(photo)
        rng = _rng(config.seed, "photo", photo.source)
        for crop in random_crops(image, config.crops_per_photo, config.size,
                                 config.min_scale, rng):
            add(crop, photo.source, photo.group)
    for index in range(config.n_procedural):
        kind, arr = procedural_image(config.seed, index, config.size)
        add(arr, f"procedural:{kind}", f"procedural:{index:04d}")
    return items


def _group_hashes(items: list[_Item], procedural: bool) -> dict[str, str]:
    """Content hash per group: photo file bytes, or the procedural PNG bytes."""
    if procedural:
        return {it.group: it.sha256 for it in items if it.group.startswith("procedural:")}
    digests: dict[str, list[str]] = {}
    for photo in BUNDLED_PHOTOS:
        digests.setdefault(photo.group, []).append(
            hashlib.sha256(photo.file().read_bytes()).hexdigest())
    return {g: hashlib.sha256("".join(sorted(d)).encode()).hexdigest()
            for g, d in digests.items()}


def build_sample_dataset(root: str | os.PathLike, config: SampleDataConfig | None = None,
                         progress: Progress | None = None) -> Path:
    """Build (or reuse) the sample dataset under ``root``.

    Idempotent: when ``root/manifest.csv`` exists and ``root/.config.json``
    records the same config, nothing is done. Otherwise everything is built in
    a temporary directory beside ``root`` and renamed into place, so a crash
    never leaves a half-written dataset.

    Args:
        root: dataset directory (created; replaced if built with another config).
        config: what to build; defaults to ``SampleDataConfig()``.
        progress: optional ``progress(done, total)`` called after each image.

    Returns:
        The manifest path, ``root/manifest.csv``.

    Raises:
        FileNotFoundError: a bundled photo is missing from its package.
        RuntimeError: two generated images have identical bytes.
    """
    root = Path(root)
    config = config or SampleDataConfig()
    if _is_built(root, config):
        return root / "manifest.csv"

    items = _generate(config, progress)
    seen: dict[str, str] = {}
    for it in items:
        if it.sha256 in seen:
            raise RuntimeError(
                f"duplicate image content from {seen[it.sha256]} and {it.source}; change seed"
            )
        seen[it.sha256] = it.source
    split_of = assign_splits(_group_hashes(items, procedural=False), config.fractions)
    split_of.update(assign_splits(_group_hashes(items, procedural=True), config.fractions))

    def write(tmp: Path) -> None:
        rows = []
        for it in items:
            split = split_of[it.group]
            rel = f"{split}/{it.sha256[:16]}.png"
            (tmp / split).mkdir(exist_ok=True)
            (tmp / rel).write_bytes(it.png)
            rows.append(ManifestRow(path=rel, sha256=it.sha256, width=config.size,
                                    height=config.size, mode="RGB", split=split,
                                    source=it.source, group=it.group))
        write_manifest(rows, tmp / "manifest.csv")
        (tmp / ".config.json").write_text(
            json.dumps(_config_record(config), indent=2, sort_keys=True) + "\n")

    atomic_write_dir(root, write)
    return root / "manifest.csv"
