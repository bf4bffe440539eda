"""The clean photos a forger wants to make "belong" to a victim (issue #17).

A forgery rate of ≤ 1 % is only shown by hundreds of targets (0 of 300 bounds it below
1.0 % at 95 %), more than the benchmark's held-out split holds. The targets are made in
memory from the same offline sources as the sample dataset (``components.data.sample``):
random square crops of every bundled photo (scikit-image / scikit-learn) and procedural
images, under their own seed, so none is a byte copy of a sample-dataset image. The
photos' crops come first, spread evenly over the photos, then the procedural images.
"""

from __future__ import annotations

import numpy as np
import torch

from neuralmark.components.benchmark.images import PhotoSet
from neuralmark.components.data.sample import (
    BUNDLED_PHOTOS,
    _rng,
    load_bundled_photo,
    procedural_image,
    random_crops,
)
from neuralmark.components.errors import InputError

#: the targets' own seed (the sample dataset uses 0): other crops, other procedural images
TARGET_SEED = 17


def forgery_targets(n: int, size: int = 256, photo_share: float = 0.75,
                    seed: int = TARGET_SEED, min_scale: float = 0.35) -> PhotoSet:
    """``n`` clean target photos at ``size²``: photo crops, then procedural images.

    Args:
        n: number of targets (≥ 1).
        size: side, px.
        photo_share: share of photo crops (the rest procedural), rounded.
        seed: the draw's seed.
        min_scale: smallest crop side as a fraction of the photo's short side.

    Returns:
        ``PhotoSet`` with ``images`` n×3×size×size in [0, 1] and names ``crop:<photo>:<i>``
        / ``procedural:<kind>:<i>``.

    Raises:
        InputError: ``n`` < 1 or ``photo_share`` outside [0, 1].
    """
    if n < 1:
        raise InputError(f"forgery targets must be at least 1, got {n}")
    if not 0.0 <= photo_share <= 1.0:
        raise InputError(f"photo_share must be within [0, 1], got {photo_share}")
    n_photo = round(n * photo_share)
    arrays: list[np.ndarray] = []
    names: list[str] = []
    per_photo = -(-n_photo // len(BUNDLED_PHOTOS)) if n_photo else 0
    for photo in BUNDLED_PHOTOS:
        if len(arrays) >= n_photo:
            break
        take = min(per_photo, n_photo - len(arrays))
        crops = random_crops(load_bundled_photo(photo), take, size, min_scale,
                             _rng(seed, "forgery-target", photo.source))
        arrays += crops
        names += [f"crop:{photo.source}:{i}" for i in range(len(crops))]
    for i in range(n - n_photo):
        kind, arr = procedural_image(seed, i, size)
        arrays.append(arr)
        names.append(f"procedural:{kind}:{i}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # n c h w
    return PhotoSet(images.contiguous(), names)
