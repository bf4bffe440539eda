"""Batch verification for a service: many images of any size, one network call per batch.

``verify`` of a content method takes one ``B×3×H×W`` tensor, so images of
different sizes cannot share a call. Methods whose detector reads the image at
a fixed working size (``config.working_size``: ``anti_forward``'s scanner,
``pgd_signer``'s decoder) resize internally anyway, so ``BatchVerifier``
resizes each image to that size first (antialiased bilinear, the same
downsampling the methods use) and verifies ``batch_size`` of them at once.
The answer for an image is the method's answer for its working-size view.

Files are decoded on a small thread pool (PIL releases the GIL while
decoding) while the previous batch is being scored. A file that cannot be read
gets an ``unreadable`` verdict naming the problem; it never stops the batch.

Example:
    >>> from neuralmark.components.methods.registry import load_bundle
    >>> scanner = BatchVerifier(load_bundle("components/pretrained/anti_forward"))
    >>> for path, verdict in scanner.verify_files(paths):   # doctest: +SKIP
    ...     print(path, verdict.status, verdict.score)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from neuralmark.components.imageio import load_image
from neuralmark.components.methods.base import (
    InputError,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
    resize_square,
)


def working_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a ``1×3×H×W`` (or ``3×H×W``) image to ``1×3×size×size``.

    Antialiased bilinear when shrinking; an image already at ``size`` is returned as is.
    """
    if image.ndim == 3:
        image = image.unsqueeze(0)
    check_images(image)
    return resize_square(image, size)


class BatchVerifier:
    """Verify many images with one content method, ``batch_size`` per network call.

    Args:
        method: a content method whose config has ``working_size``.
        key: the key to verify against (methods that ignore keys accept any).
        batch_size: images per ``verify`` call.
        workers: threads decoding files.
    """

    def __init__(self, method: WatermarkMethod, key: WatermarkKey | None = None,
                 batch_size: int = 32, workers: int = 2) -> None:
        size = getattr(method.config, "working_size", None)
        if method.kind != "content" or size is None:
            raise InputError(f"{method.key} cannot be batch-verified: it needs a content method "
                             "with a fixed working size")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.method = method
        self.key = key or WatermarkKey(secret="neuralmark-scan")
        self.size = int(size)
        self.batch_size = batch_size
        self.workers = max(1, workers)

    def _score(self, views: list[torch.Tensor]) -> list[Verdict]:
        batch = torch.cat(views).to(self.method.device)  # b 3 s s
        with torch.no_grad():
            return list(self.method.verify(batch, self.key))

    def verify_tensors(self, images: Sequence[torch.Tensor]) -> list[Verdict]:
        """One verdict per image (each ``3×H×W`` or ``1×3×H×W`` in [0, 1], any size).

        An image that fails ``check_images`` (wrong shape, range, NaN, too
        small) gets an ``unreadable`` verdict; the others are scored in batches.
        """
        verdicts: list[Verdict | None] = [None] * len(images)
        pending: list[tuple[int, torch.Tensor]] = []
        for i, img in enumerate(images):
            try:
                if min(img.shape[-2:]) < self.method.min_size:
                    raise InputError(f"image is {img.shape[-1]}×{img.shape[-2]} px; "
                                     f"{self.method.key} needs at least {self.method.min_size}")
                pending.append((i, working_view(img, self.size)))
            except InputError as err:
                verdicts[i] = Verdict.unreadable(str(err))
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            for (i, _), v in zip(chunk, self._score([view for _, view in chunk]), strict=True):
                verdicts[i] = v
        return [v for v in verdicts if v is not None]

    def _load(self, path: Path) -> torch.Tensor | Verdict:
        try:
            return working_view(load_image(path, min_size=self.method.min_size).tensor, self.size)
        except InputError as err:
            return Verdict.unreadable(str(err))

    def verify_files(self, paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, Verdict]]:
        """Yield ``(path, verdict)`` in input order; decoding overlaps scoring."""
        paths = [Path(p) for p in paths]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            loaded = pool.map(self._load, paths)
            batch: list[tuple[Path, torch.Tensor | Verdict]] = []
            for path, item in zip(paths, loaded, strict=True):
                batch.append((path, item))
                if len(batch) == self.batch_size:
                    yield from self._flush(batch)
                    batch = []
            yield from self._flush(batch)

    def _flush(self, batch: list[tuple[Path, torch.Tensor | Verdict]]
               ) -> Iterator[tuple[Path, Verdict]]:
        views = [item for _, item in batch if isinstance(item, torch.Tensor)]
        scored = iter(self._score(views)) if views else iter(())
        for path, item in batch:
            yield path, (next(scored) if isinstance(item, torch.Tensor) else item)
