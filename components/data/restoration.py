"""Task data of the restoration hosts: patches, denoising and SR pairs, the attacker's new data.

The hosts of seed 002 (DnCNN, RED, VDSR; ``components/nets/restoration``) learn one of
two tasks (:data:`RESTORATION_TASKS`):

* ``denoise`` — :func:`denoise_pairs`: clean → (clean + N(0, σ²), clean), σ in [0, 1]
  units (the seed: σ = 25/255). Not clipped by default (the DnCNN convention: additive
  white Gaussian noise on the [0, 1] image); ``clip=True`` clips the noisy input.
* ``sr`` — :func:`sr_pairs`: HR → (bicubic ↑ of bicubic ↓ by the scale, HR), the VDSR /
  DnCNN-3 input convention (the host sees an upsampled image of the target size).
  Both resamplings are ``F.interpolate(mode="bicubic", antialias=True)`` (Keys' kernel
  with a = −0.5, as MATLAB's ``imresize`` the papers used, and antialiased when
  shrinking), clamped to [0, 1]; HR is first cropped to a multiple of the scale
  (MATLAB ``modcrop``).

Patches (:func:`extract_patches`, :func:`split_patches`) are random crops, seeded by a
torch generator, from the images of a manifest split — the sample set's manifest or a
prepared dataset's (``neuralmark data prepare``). Channels: 3 (RGB, the project's
images) or 1 (gray: BT.601 luma, kornia's ``rgb_to_grayscale``; DnCNN, VDSR and the
seed work on gray/luma images — ``channels=1`` reproduces that).

:func:`new_data_patches` is the fine-tuning attack's "new data": patches from a prepared
texture set (KTH-TIPS layout, ``configs/data/kth_tips.yaml``) or photo set (DIV2K layout,
``configs/data/div2k.yaml``) when one is given, else procedural textures (stripes,
checkers, plaid and multi-octave noise of ``components/data/sample``); it says which.

Shapes: images ``N×C×H×W`` float32; clean images and targets in [0, 1].
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components.data.manifest import load_image
from neuralmark.components.data.sample import mixture_image, noise_image, texture_image
from neuralmark.components.errors import InputError

RESTORATION_TASKS: tuple[str, ...] = ("denoise", "sr")
#: the seed's SR scales (VDSR: one net for ×2, ×3, ×4)
SR_SCALES: tuple[int, ...] = (2, 3, 4)
#: the seed's noise level (in [0, 1] units)
SEED_SIGMA = 25 / 255
#: what the procedural "new data" cycles through (texture-like, as KTH-TIPS)
_PROCEDURAL = (texture_image, noise_image, mixture_image)


def _check_clean(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise InputError(f"{what}: expected a float tensor N×C×H×W")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise InputError(f"{what}: expected N×C×H×W with N >= 1 and C 1 or 3, "
                         f"got {tuple(images.shape)}")
    if images.min() < -1e-4 or images.max() > 1 + 1e-4 or not torch.isfinite(images).all():
        raise InputError(f"{what}: image values must be finite and lie in [0, 1]")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``N×C×H×W`` → ``N×channels×H×W``: RGB → gray is BT.601 luma, gray → RGB repeats.

    Raises:
        InputError: ``channels`` not 1 or 3, or input channels not 1 or 3.
    """
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    c = images.shape[1]
    if c == channels:
        return images
    if c == 3:
        from kornia.color import rgb_to_grayscale  # here: importing kornia costs ~0.3 s

        return rgb_to_grayscale(images)  # n 1 h w
    if c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise InputError(f"images must have 1 or 3 channels, got {c}")


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """``x`` if it is one ``C×H×W`` image, else ``InputError`` naming its shape."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"extract_patches: expected C×H×W images, got {shape}")
    return x


def extract_patches(images: torch.Tensor | Sequence[torch.Tensor], size: int, n: int,
                    generator: torch.Generator, channels: int = 3) -> torch.Tensor:
    """``n`` random ``size×size`` crops: an image drawn uniformly, then a position.

    Args:
        images: an ``N×C×H×W`` batch or a sequence of ``C×H×W`` images (sizes and C ∈
            {1, 3} may differ), values in [0, 1].
        size: patch side in pixels.
        n: how many patches.
        generator: a CPU generator (the draws: image index, top, left per patch).
        channels: 1 (gray) or 3 (RGB) in the output.

    Returns:
        ``n×channels×size×size`` float32 in [0, 1].

    Raises:
        InputError: no image, a patch larger than an image, or bad sizes.
    """
    imgs = list(images)
    if not imgs:
        raise InputError("extract_patches: no image to crop from")
    if size < 1 or n < 1:
        raise InputError(f"extract_patches: size and n must be >= 1, got size={size}, n={n}")
    small = [tuple(x.shape[-2:]) for x in imgs if min(x.shape[-2:]) < size]
    if small:
        raise InputError(f"extract_patches: {size}×{size} patches do not fit images of "
                         f"size {sorted(set(small))[0]} (H×W)")
    # each image converted on its own first: a folder may mix grey and colour images
    imgs = [to_channels(_as_image(x).float()[None], channels)[0] for x in imgs]
    out = []
    for _ in range(n):
        img = imgs[int(torch.randint(0, len(imgs), (1,), generator=generator))]
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        out.append(img[:, top:top + size, left:left + size])
    patches = torch.stack(out)  # n channels s s
    _check_clean(patches, "extract_patches")
    return patches


def _manifest_file(manifest: str | os.PathLike) -> Path:
    """``manifest`` itself, or the ``manifest.csv`` inside a dataset folder."""
    path = Path(manifest).expanduser()
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise InputError(f"no manifest at {path}: give a manifest.csv or a prepared dataset "
                         f"folder (e.g. data/kth_tips/image_folder)")
    return path


def load_split_images(manifest: str | os.PathLike, split: str,
                      limit: int | None = None) -> list[torch.Tensor]:
    """Every image of one split at its own size: the sample set's or a prepared manifest.

    Args:
        manifest: a ``manifest.csv`` (sample set, or a single-domain prepared dataset such
            as ``image_folder``), or the folder holding it.
        split: ``train`` / ``val`` / ``test``.
        limit: keep the first ``limit`` rows (manifest order).

    Returns:
        ``3×H×W`` float32 tensors in [0, 1], in manifest order.

    Raises:
        InputError: no manifest, no ``path``/``split`` columns, or no image in the split.
    """
    path = _manifest_file(manifest)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"path", "split"} <= set(reader.fieldnames or ()):
            raise InputError(f"{path} is not a manifest: it has no 'path' and 'split' columns")
        rows = [r for r in reader if r["split"] == split and r.get("domain", "image") in
                ("image", "")]
    rows = rows if limit is None else rows[: max(limit, 0)]
    if not rows:
        raise InputError(f"{path}: split {split!r} has no image")
    return [load_image(path.parent / r["path"]) for r in rows]


def split_patches(manifest: str | os.PathLike, split: str, size: int, n: int,
                  generator: torch.Generator, channels: int = 3,
                  limit: int | None = None) -> torch.Tensor:
    """``n`` random patches from one split of a manifest (:func:`extract_patches`).

    Returns:
        ``n×channels×size×size`` float32 in [0, 1].
    """
    return extract_patches(load_split_images(manifest, split, limit), size, n, generator,
                           channels)


def denoise_pairs(clean: torch.Tensor, sigma: float, generator: torch.Generator,
                  clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising pairs: (clean + N(0, σ²) noise, clean).

    Args:
        clean: ``N×C×H×W`` in [0, 1].
        sigma: noise standard deviation in [0, 1] units (seed: 25/255).
        generator: draws the noise (CPU).
        clip: clip the noisy images to [0, 1] (default: not, as DnCNN).

    Returns:
        ``(noisy, clean)``, both ``N×C×H×W`` float32.

    Raises:
        InputError: bad images or a negative σ.
    """
    _check_clean(clean, "denoise_pairs")
    if not 0 <= sigma <= 1:
        raise InputError(f"denoise_pairs: sigma is in [0, 1] units (25/255 for σ=25), "
                         f"got {sigma}")
    x = clean.detach().float().cpu()
    noisy = x + sigma * torch.randn(x.shape, generator=generator)  # n c h w
    return (noisy.clamp(0, 1) if clip else noisy), x


def sr_pairs(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Super-resolution pairs: (bicubic ↑ (bicubic ↓ HR), HR), both at the HR size.

    Args:
        hr: ``N×C×H×W`` in [0, 1]; cropped (top-left) to multiples of ``scale``.
        scale: downscaling factor (the seed: 2, 3, 4).

    Returns:
        ``(upsampled LR, HR)``, both ``N×C×H'×W'`` float32 in [0, 1] with
        ``H' = H − H mod scale`` (``W'`` alike).

    Raises:
        InputError: bad images, a scale below 2, or an HR smaller than 2·scale a side.
    """
    _check_clean(hr, "sr_pairs")
    if int(scale) != scale or scale < 2:
        raise InputError(f"sr_pairs: scale must be an integer >= 2 (seed: 2, 3, 4), got {scale}")
    scale = int(scale)
    h, w = (d - d % scale for d in hr.shape[-2:])
    if min(h, w) < 2 * scale:
        raise InputError(f"sr_pairs: {tuple(hr.shape[-2:])} HR images are too small for ×{scale}")
    y = hr.detach().float().cpu()[..., :h, :w]  # n c h' w'
    lr = F.interpolate(y, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                       align_corners=False).clamp(0, 1)
    up = F.interpolate(lr, size=(h, w), mode="bicubic", antialias=True,
                       align_corners=False).clamp(0, 1)
    return up, y


def task_pairs(task: str, clean: torch.Tensor, generator: torch.Generator,
               sigma: float = SEED_SIGMA, scale: int = 2,
               clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a host task: :func:`denoise_pairs` or :func:`sr_pairs`.

    Args:
        task: ``denoise`` or ``sr``.
        clean: ``N×C×H×W`` clean / HR images in [0, 1].
        generator: the noise draws (``denoise``; unused by ``sr``).
        sigma: noise level in [0, 1] units (``denoise``).
        scale: SR factor (``sr``).
        clip: clip the noisy input (``denoise``).

    Raises:
        InputError: unknown task, or what the pair function raises.
    """
    if task == "denoise":
        return denoise_pairs(clean, sigma, generator, clip)
    if task == "sr":
        return sr_pairs(clean, scale)
    raise InputError(f"unknown restoration task {task!r}; expected one of "
                     f"{list(RESTORATION_TASKS)}")


@dataclass(frozen=True)
class NewData:
    """The fine-tuning attack's "new data".

    Attributes:
        patches: ``N×C×S×S`` float32 in [0, 1] (clean; make task pairs from them).
        source: ``prepared:<manifest>#<split>`` or ``procedural:textures``.
    """

    patches: torch.Tensor
    source: str

    @property
    def procedural(self) -> bool:
        """True when no prepared set was given and the patches are generated textures."""
        return self.source.startswith("procedural:")


def procedural_textures(n: int, size: int, generator: torch.Generator,
                        channels: int = 3) -> torch.Tensor:
    """``n`` generated texture patches (stripes/checkers/plaid, value noise, their blends).

    One numpy generator seeded by one draw of ``generator`` makes them all, each kind in
    turn (``components/data/sample``'s ``texture_image``, ``noise_image``, ``mixture_image``).

    Returns:
        ``n×channels×size×size`` float32 in [0, 1].
    """
    if size < 1 or n < 1:
        raise InputError(f"procedural_textures: size and n must be >= 1, got {size}, {n}")
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    imgs = [_PROCEDURAL[i % len(_PROCEDURAL)](rng, size) for i in range(n)]  # s s 3 each
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().clamp(0, 1)  # n 3 s s
    return to_channels(x, channels)


def new_data_patches(n: int, size: int, generator: torch.Generator, channels: int = 3,
                     manifest: str | os.PathLike | None = None,
                     split: str = "train") -> NewData:
    """The attacker's new data: patches of a prepared set if given, else procedural textures.

    Args:
        n: how many patches.
        size: patch side.
        generator: the crop (or texture) draws.
        channels: 1 (gray) or 3 (RGB).
        manifest: a prepared texture/photo set (``neuralmark data prepare image_folder``:
            KTH-TIPS's class folders or DIV2K's flat folder) — its ``manifest.csv`` or its
            folder; ``None`` = procedural textures. A given path that holds no manifest is
            an error, never a silent fallback.
        split: which split of the prepared set to crop.

    Returns:
        :class:`NewData` (``source`` says which).

    Raises:
        InputError: a missing manifest, an empty split, patches larger than its images.
    """
    if manifest is None:
        return NewData(procedural_textures(n, size, generator, channels), "procedural:textures")
    path = _manifest_file(manifest)
    return NewData(split_patches(path, split, size, n, generator, channels),
                   f"prepared:{path}#{split}")


__all__ = ["RESTORATION_TASKS", "SEED_SIGMA", "SR_SCALES", "NewData", "denoise_pairs",
           "extract_patches", "load_split_images", "new_data_patches", "procedural_textures",
           "split_patches", "sr_pairs", "task_pairs", "to_channels"]
