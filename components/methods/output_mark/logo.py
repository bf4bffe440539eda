"""The logo δ that ``output_mark`` hides: key-derived pattern, image logos, fingerprints.

* :func:`key_logo` — the default δ: a colourful block pattern seeded by the key's
  secret (HMAC-SHA256 → numpy RNG), each RGB channel 0/1, about half ones.
* :func:`load_logo` — δ from ``"key"``, an image file, a PIL image or an array, at
  the working size; refuses what is not an image or is too close to the blank
  (all-ones) image to be told from "no mark".
* :func:`key_fingerprint` — public HMAC fingerprint of a secret (safe in a bundle):
  which key a trained H hides.
* :class:`LogoStore` — δ as a buffer, so bundles carry it in ``weights.safetensors``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import resize_square
from neuralmark.components.metrics import normalized_correlation

_FINGERPRINT_DOMAIN = b"neuralmark/output_mark/fingerprint"
_LOGO_DOMAIN = b"neuralmark/output_mark/logo"
_HINT = ("a logo must be an image: a path to an image file, a PIL image, or a "
         "C×H×W / H×W array in [0, 1] (or uint8)")


def key_fingerprint(secret: str) -> str:
    """Public fingerprint of a secret (HMAC-SHA256, 32 hex chars); safe to store."""
    return hmac.new(secret.encode(), _FINGERPRINT_DOMAIN, hashlib.sha256).hexdigest()[:32]


def key_logo(secret: str, size: int, block: int = 8) -> torch.Tensor:
    """Key-seeded colourful block pattern: the default logo δ.

    Args:
        secret: the key's secret.
        size: side of the logo (the working size).
        block: block side in px.

    Returns:
        3×size×size float32 in {0, 1}, about half ones per channel.
    """
    digest = hmac.new(secret.encode(), _LOGO_DOMAIN, hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    cells = -(-size // block)
    grid = rng.integers(0, 2, size=(3, cells, cells)).astype(np.float32)
    img = np.repeat(np.repeat(grid, block, axis=1), block, axis=2)[:, :size, :size]
    return torch.from_numpy(np.ascontiguousarray(img))


def _read_image_file(source: str | os.PathLike) -> Image.Image:
    path = Path(source)
    if not path.is_file():
        raise InputError(f"logo file {str(path)!r} does not exist; {_HINT}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"logo file {str(path)!r} is not an image ({err}); {_HINT}") from None


def _logo_tensor(source: Any) -> torch.Tensor:
    """Any image-like ``source`` → 3×H×W float in [0, 1]; ``InputError`` otherwise."""
    if isinstance(source, (str, os.PathLike)):
        source = _read_image_file(source)
    if isinstance(source, Image.Image):
        array = np.asarray(source.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    if isinstance(source, np.ndarray):
        if source.ndim == 3 and source.shape[-1] in (1, 3) and source.shape[0] not in (1, 3):
            source = np.moveaxis(source, -1, 0)
        source = torch.from_numpy(np.ascontiguousarray(source))
    if not isinstance(source, torch.Tensor):
        raise InputError(f"{_HINT}; got {type(source).__name__}")
    x = source.detach().cpu()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3) or min(x.shape[-2:]) < 2:
        raise InputError(f"{_HINT}; got an array of shape {tuple(source.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif not x.is_floating_point():
        raise InputError(f"{_HINT}; got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise InputError(f"{_HINT}; got values outside [0, 1]")
    return x.expand(3, -1, -1).contiguous()


def load_logo(source: Any, size: int, threshold: float = 0.95, secret: str | None = None,
              block: int = 8) -> torch.Tensor:
    """The logo δ at the working size.

    Args:
        source: ``"key"`` (key pattern of ``secret``), a path to an image file, a
            PIL image, or an image array/tensor (C×H×W, H×W or H×W×C).
        size: working size.
        threshold: NC success threshold; a logo at least this close to the blank
            (all-ones) image is refused.
        secret: the key's secret (for ``"key"``).
        block: block size of the key pattern.

    Returns:
        3×size×size float32 in [0, 1].

    Raises:
        InputError: not an image, or indistinguishable from the blank image.
    """
    if isinstance(source, str) and source == "key":
        if not secret:
            raise InputError("a key-derived logo needs the key's secret")
        logo = key_logo(secret, size, block)
    else:
        logo = resize_square(_logo_tensor(source)[None], size)[0]
    nc_blank = float(normalized_correlation(logo[None], torch.ones_like(logo)[None])[0])
    if nc_blank >= threshold:
        raise InputError(f"the logo is too close to the blank (all-ones) image: NC = "
                         f"{nc_blank:.3f} ≥ threshold {threshold}; use a logo with more dark "
                         "or coloured area")
    return logo


class LogoStore(nn.Module):
    """Holds δ (3×S×S) as the buffer ``logo``, so bundles carry it in ``weights.safetensors``."""

    def __init__(self, logo: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logo", logo.clone())


__all__ = ["LogoStore", "key_fingerprint", "key_logo", "load_logo"]
