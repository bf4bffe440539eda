"""Varied clean images for an extractor's clean term, and never-seen photos to measure it.

Issue #19: output_mark's extractor R flagged clean outputs of photos unlike the few it
was trained on (``retina``: 9 of 12 crops on one seed) while the held-out calibration
saw none of them. :func:`varied_clean_images` gives the clean term more variety from
what a training run may use — never a photo of the test splits:

* crops of the **training split's photos** at scales from a tenth of the short side to
  the whole photo, made *directly* at the working size (the pairs are cropped at the
  data size and downsampled, so R saw one scale and one resampling only);
* **procedural images** (noise, gradients, shapes, textures, mixtures:
  :func:`neuralmark.components.data.sample.procedural_image`) under a seed the dataset
  does not use;
* **other tasks' outputs**: a share of both passed through one generic restoration-like
  operation (Gaussian blur, unsharp mask, JPEG, noise then median filter), kornia's; the
  JPEG through ``attacks/jpeg_codec.jpeg_differentiable`` (``jpeg_impl``: kornia's codec
  by default, every output_mark figure; ``blockdct`` ~3× cheaper).

Each image has a group (its photo, or ``variety:procedural:<i>``), so a training run
can drop the photos of its held-out part (their clean images calibrate the null and
must stay unseen).

:func:`unseen_photos` reads the scikit-image files that no split of the sample dataset
uses (cell, clock, colour wheel, microaneurysms, phantom, text, faces of ``lfw_subset``,
…): out-of-distribution clean images for measuring false positives, never for training.

Shapes: ``N×3×S×S`` float32 in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import kornia
import numpy as np
import torch
from PIL import Image

from neuralmark.components.attacks.jpeg_codec import JPEG_IMPLS, JpegImpl, jpeg_differentiable
from neuralmark.components.data.manifest import read_manifest
from neuralmark.components.data.sample import (
    BUNDLED_PHOTOS,
    BundledPhoto,
    load_bundled_photo,
    procedural_image,
    random_crops,
)
from neuralmark.components.errors import InputError

#: the generic operations whose outputs join the clean images ("other tasks' outputs")
OPERATIONS = ("blur", "sharpen", "jpeg", "denoise")
#: scikit-image files no split of the sample dataset uses (greyscale ones replicated)
UNSEEN_FILES = ("cell.png", "clock_motion.png", "color.png", "microaneurysms.png",
                "phantom.png", "text.png", "horse.png", "chessboard_RGB.png")


def _to_tensor(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """``n`` H×W×3 uint8 arrays → n×3×H×W float32 in [0, 1]."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x.float().div(255.0).contiguous()


def generic_operation(x: torch.Tensor, op: str, rng: np.random.Generator,
                      jpeg_impl: JpegImpl = "kornia") -> torch.Tensor:
    """One restoration-like operation on N×3×S×S images in [0, 1] (same shape out).

    Args:
        x: the images.
        op: one of :data:`OPERATIONS`.
        rng: draws the operation's strength.
        jpeg_impl: the differentiable JPEG codec of ``jpeg`` (``jpeg_codec.JPEG_IMPLS``).

    Raises:
        InputError: unknown ``op`` or ``jpeg_impl``.
    """
    if jpeg_impl not in JPEG_IMPLS:
        raise InputError(f"unknown jpeg_impl {jpeg_impl!r}; expected one of {JPEG_IMPLS}")
    if op == "blur":
        s = float(rng.uniform(0.5, 1.5))
        return kornia.filters.gaussian_blur2d(x, (5, 5), (s, s))
    if op == "sharpen":
        s = float(rng.uniform(0.6, 1.5))
        return kornia.filters.unsharp_mask(x, (5, 5), (s, s)).clamp(0, 1)
    if op == "jpeg":
        q = torch.full((x.shape[0],), float(rng.uniform(30, 90)))
        return jpeg_differentiable(x, q, jpeg_impl).clamp(0, 1)
    if op == "denoise":
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        noisy = (x + float(rng.uniform(0.01, 0.05)) * torch.randn(x.shape, generator=g))
        return kornia.filters.median_blur(noisy.clamp(0, 1), (3, 3))
    raise InputError(f"unknown operation {op!r}; expected one of {OPERATIONS}")


def training_photos(manifest: str | os.PathLike, split: str = "train") -> list[BundledPhoto]:
    """The bundled photos whose crops are in ``split`` of a sample-dataset manifest.

    Raises:
        InputError: the manifest has no photo in that split.
    """
    groups = {r.group for r in read_manifest(manifest) if r.split == split}
    photos = [p for p in BUNDLED_PHOTOS if p.group in groups]
    if not photos:
        raise InputError(f"{manifest}: no bundled photo in split {split!r}")
    return photos


def varied_clean_images(manifest: str | os.PathLike, size: int, crops_per_photo: int = 8,
                        n_procedural: int = 64, processed: float = 0.5, seed: int = 0,
                        split: str = "train", jpeg_impl: JpegImpl = "kornia"
                        ) -> tuple[torch.Tensor, list[str]]:
    """Clean images for the clean term: photo crops of ``split``, procedural, processed.

    Args:
        manifest: a sample-dataset manifest (its ``split`` rows name the photos allowed).
        size: side of the images (the method's working size).
        crops_per_photo: crops of each photo of ``split``, scales 0.1–1 of the short side.
        n_procedural: procedural images (seed ``seed + 1000``, not the dataset's).
        processed: share of the images replaced by a generic operation's output.
        seed: every draw.
        split: whose photos may be used (never a test split).
        jpeg_impl: the differentiable JPEG codec of the ``jpeg`` operation.

    Returns:
        ``(images N×3×size×size, groups)``, one group per image.
    """
    if size < 8 or crops_per_photo < 0 or n_procedural < 0 or not 0 <= processed <= 1:
        raise InputError("varied_clean_images: size ≥ 8, counts ≥ 0, processed in [0, 1]")
    if jpeg_impl not in JPEG_IMPLS:
        raise InputError(f"unknown jpeg_impl {jpeg_impl!r}; expected one of {JPEG_IMPLS}")
    rng = np.random.default_rng([seed, 19])
    arrays, groups = [], []
    for photo in training_photos(manifest, split):
        arrays += random_crops(load_bundled_photo(photo), crops_per_photo, size, 0.1, rng)
        groups += [photo.group] * crops_per_photo
    for i in range(n_procedural):
        arrays.append(procedural_image(seed + 1000, i, size)[1])
        groups.append(f"variety:procedural:{i}")
    if not arrays:
        raise InputError("varied_clean_images: nothing to make (all counts are 0)")
    x = _to_tensor(arrays)
    pick = rng.random(x.shape[0]) < processed
    ops = rng.integers(0, len(OPERATIONS), x.shape[0])
    for k, op in enumerate(OPERATIONS):
        rows = torch.from_numpy(np.flatnonzero(pick & (ops == k)))
        if rows.numel():
            x[rows] = generic_operation(x[rows], op, rng, jpeg_impl)
    return x.clamp(0, 1), groups


def unseen_photos(size: int, crops_per_photo: int = 4, faces: int = 32, seed: int = 0
                  ) -> tuple[torch.Tensor, list[str]]:
    """Out-of-distribution clean images: scikit-image files no sample split uses.

    Args:
        size: side of the images.
        crops_per_photo: random crops (scales 0.35–1) of each of :data:`UNSEEN_FILES`.
        faces: images of ``lfw_subset.npy`` (25×25 greyscale faces, upsampled).
        seed: the crops' draw.

    Returns:
        ``(images N×3×size×size, sources)`` (the file name of each image).
    """
    root = Path(BUNDLED_PHOTOS[0].file()).parent
    rng = np.random.default_rng([seed, 23])
    arrays, sources = [], []
    for name in UNSEEN_FILES:
        with Image.open(root / name) as im:
            photo = im.convert("RGB")
        arrays += random_crops(photo, crops_per_photo, size, 0.35, rng)
        sources += [name] * crops_per_photo
    if faces:
        lfw = np.load(root / "lfw_subset.npy", allow_pickle=False)[:faces]  # n 25 25, [0, 1]
        for face in lfw:
            img = Image.fromarray((np.clip(face, 0, 1) * 255).round().astype(np.uint8))
            arrays.append(np.asarray(img.convert("RGB").resize((size, size),
                                                              Image.Resampling.LANCZOS)))
            sources.append("lfw_subset.npy")
    return _to_tensor(arrays), sources


__all__ = ["OPERATIONS", "UNSEEN_FILES", "generic_operation", "training_photos",
           "unseen_photos", "varied_clean_images"]
