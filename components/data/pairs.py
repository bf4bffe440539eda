"""Paired (A, B) data of the image-to-image host tasks: synthesis, prepared pairs, jitter.

A host task maps domain A to domain B: ``derain`` (rainy photo → clean photo) and
``debone`` (radiograph → rib-suppressed radiograph). Model watermarks through outputs
(``output_mark``) and the attacks on them train on such pairs:

* :func:`build_pairs` — (A, B) from clean images: derain synthesises rain per
  image (``neuralmark.components.data.rain``, one seed per item); debone turns each
  image into a gray "radiograph" A and suppresses rib-scale stripes for B with the
  *classical approximation* of ``neuralmark.components.data.bone_suppression`` (not
  the seed's CNN; every report says so through :func:`target_kind`).
* :func:`load_prepared_pairs` / :func:`split_groups` — the A/B pairs of a prepared
  paired dataset (``voc_derain``, ``chestxray8``) and the source group of each.
* :func:`check_pairs` — validate an ``(A, B)`` pair of batches.
* :func:`photometric_jitter` — paired augmentation: one random photometric change
  per image index, the same in A, B and every tensor made from them.

Shapes: images are ``N×3×H×W`` float32 in [0, 1].
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neuralmark.components.data.bone_suppression import TARGET_KIND as DEBONE_TARGET_KIND
from neuralmark.components.data.bone_suppression import suppress_ribs
from neuralmark.components.data.manifest import load_image, load_split
from neuralmark.components.data.rain import REFERENCE_SIZE, add_rain, item_seed, sample_rain_params
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import check_images

TASKS: tuple[str, ...] = ("derain", "debone")
#: what a derain target is (the clean photo); debone's is ``bone_suppression.TARGET_KIND``
DERAIN_TARGET_KIND = "clean-photo"


def check_task(task: str) -> None:
    """Raise ``InputError`` unless ``task`` is one of :data:`TASKS`."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {list(TASKS)}")


def target_kind(task: str) -> str:
    """What B is for ``task``: the clean photo (derain) or a classical approximation (debone)."""
    check_task(task)
    return DERAIN_TARGET_KIND if task == "derain" else DEBONE_TARGET_KIND


def check_pairs(pairs: Any, what: str = "pairs") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(A, B)``: two non-empty N×3×H×W float batches in [0, 1] of one shape.

    Args:
        pairs: the ``(A, B)`` tuple (or list).
        what: how error messages name it (``"data['train']"``).

    Returns:
        ``(A, B)`` as float32.

    Raises:
        InputError: not a pair, not images, empty, or A and B differ in shape.
    """
    if not (isinstance(pairs, (tuple, list)) and len(pairs) == 2):
        raise InputError(f"{what} must be a pair (A, B) of N×3×H×W tensors")
    a, b = pairs
    for name, t in (("A", a), ("B", b)):
        check_images(t, 2)
        if t.shape[0] == 0:
            raise InputError(f"{what}: {name} is empty")
    if a.shape != b.shape:
        raise InputError(f"{what}: A and B differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a.float(), b.float()


def build_pairs(images: torch.Tensor, task: str, seed: int = 0,
                ids: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the host task's (A, B) pairs from clean images.

    Args:
        images: N×3×H×W clean images in [0, 1].
        task: ``derain`` — B = the image, A = B with synthesised rain (one
            ``item_seed(id, seed)`` per image, streak sizes scaled by H/400);
            ``debone`` — A = the image's gray level replicated to 3 channels,
            B = ``suppress_ribs(A)``, a *classical approximation* of rib
            suppression (``target_kind("debone")``), not the seed's network.
        seed: run-level salt of the per-item seeds.
        ids: one id per image (default ``"0", "1", …``); the same id and seed
            give the same rain.

    Returns:
        ``(A, B)``, both N×3×H×W float32 in [0, 1].

    Raises:
        InputError: bad images, unknown task, or ``ids`` of the wrong length.
    """
    check_task(task)
    check_images(images, 8)
    x = images.detach().float().cpu()
    names = [str(i) for i in range(x.shape[0])] if ids is None else [str(i) for i in ids]
    if len(names) != x.shape[0]:
        raise InputError(f"{len(names)} ids for {x.shape[0]} images")
    if task == "debone":
        gray = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()   # n 3 h w
        return gray, suppress_ribs(gray)
    scale = min(x.shape[-2:]) / REFERENCE_SIZE
    rainy = []
    for img, name in zip(x, names, strict=True):
        s = item_seed(name, seed)
        rainy.append(add_rain(img, sample_rain_params(s, scale=scale), s))
    return torch.stack(rainy), x


def _read_rows(manifest: str | Path, what: str) -> tuple[Path, list[dict[str, str]]]:
    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    with path.open(newline="") as fh:
        return path, list(csv.DictReader(fh))


def _complete_pairs(rows: list[dict[str, str]], split: str, column: str,
                    limit: int | None) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Pair ids of ``split`` with both an A and a B row (sorted, first ``limit``), and for
    each pair ``{domain: row[column]}`` (``column == "group"`` falls back to the pair id)."""
    files: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["split"] == split and r["domain"] in ("A", "B") and r["pair"]:
            value = (r.get("group") or r["pair"]) if column == "group" else r[column]
            files.setdefault(r["pair"], {})[r["domain"]] = value
    return sorted(p for p, d in files.items() if set(d) == {"A", "B"})[:limit], files


def synthesised_pairs(manifest: str | Path, task: str, size: int, seed: int = 0,
                      test_splits: Sequence[str] = ("val", "test")
                      ) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str],
                                 tuple[torch.Tensor, torch.Tensor]]:
    """Train pairs, their groups and the pooled test pairs made from a clean manifest.

    The train split's pairs use ``seed``; test split ``i`` uses ``seed + 1 + i``
    (:func:`build_pairs`), pooled in ``test_splits`` order.

    Returns:
        ``(train (A, B), train groups (:func:`split_groups`), test (A, B))``.
    """
    train = build_pairs(load_split(manifest, "train", size=size), task, seed)
    groups = split_groups(manifest, "train")
    tests = [build_pairs(load_split(manifest, s, size=size), task, seed + 1 + i)
             for i, s in enumerate(test_splits)]
    return train, groups, (torch.cat([t[0] for t in tests]), torch.cat([t[1] for t in tests]))


def split_groups(manifest: str | Path, split: str, limit: int | None = None) -> list[str]:
    """The ``group`` (source photo) of every image of one split, in ``load_split``'s order.

    For a prepared paired manifest (``domain``/``pair`` columns), one group per
    complete pair, in :func:`load_prepared_pairs`' order (the group column, or
    the pair id when the column is empty).

    Raises:
        InputError: the manifest does not exist.
    """
    _, rows = _read_rows(manifest, "manifest")
    if rows and {"domain", "pair"} <= set(rows[0]):
        pairs, files = _complete_pairs(rows, split, "group", limit)
        return [files[p]["A"] for p in pairs]
    rows = [r for r in rows if r["split"] == split]
    rows = rows if limit is None else rows[: max(limit, 0)]
    return [r.get("group") or r["path"] for r in rows]


def load_prepared_pairs(manifest: str | Path, split: str, size: int | None = None,
                        limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (A, B) pairs of one split of a *prepared* paired dataset.

    Prepared paired recipes (``voc_derain``, ``chestxray8``) write one manifest
    row per file with a ``domain`` (``A``/``B``) and a ``pair`` id
    (``neuralmark.components.data.prepare``); a pair is used when both files are listed.

    Args:
        manifest: the prepared dataset's ``manifest.csv``.
        split: ``train`` / ``val`` / ``test``.
        size: resize every image to ``size×size`` (needed for mixed sizes).
        limit: keep the first ``limit`` pairs (sorted by pair id).

    Returns:
        ``(A, B)``, N×3×S×S float32 in [0, 1].

    Raises:
        InputError: not a paired manifest, or no complete pair in the split.
    """
    path, rows = _read_rows(manifest, "prepared manifest")
    if rows and not {"domain", "pair", "path", "split"} <= set(rows[0]):
        raise InputError(f"{path} is not a paired prepared manifest (no domain/pair columns)")
    pairs, files = _complete_pairs(rows, split, "path", limit)
    if not pairs:
        raise InputError(f"{path}: split {split!r} has no complete A/B pair")
    a = torch.stack([load_image(path.parent / files[p]["A"], size) for p in pairs])
    b = torch.stack([load_image(path.parent / files[p]["B"], size) for p in pairs])
    return a, b


def photometric_jitter(images: Sequence[torch.Tensor], share: float, g: torch.Generator,
                       tint: bool = True) -> list[torch.Tensor]:
    """One random photometric change per image index, applied alike to every tensor.

    Each of the B images is changed with probability ``share``: channels
    permuted, each channel scaled by a gain in [0.4, 1.6] (only with ``tint``),
    then the whole image's brightness scaled by [0.25, 1.2], its contrast around
    its mean by [0.3, 1.3] and a gamma in [0.6, 1.7]; clamped to [0, 1]. The
    draw for image i is the same in every tensor of ``images`` (A, B and target
    of a pair stay a pair). Differentiable in the inputs.

    Args:
        images: tensors of shape B×3×S×S in [0, 1] (same B).
        share: probability that an image is changed.
        g: generator of the draws (CPU).
        tint: permute and scale the channels; off for gray tasks (debone), where
            a tint leaves the domain.

    Returns:
        The changed tensors, same shapes.
    """
    if share <= 0 or not images:
        return list(images)
    n = images[0].shape[0]
    on = (torch.rand(n, generator=g) < share).float().view(n, 1, 1, 1)
    perm = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])          # n 3
    gain = 0.4 + 1.2 * torch.rand(n, 3, 1, 1, generator=g)
    if not tint:
        perm[:] = torch.arange(3)
        gain = gain.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    bright = 0.25 + 0.95 * torch.rand(n, 1, 1, 1, generator=g)
    contrast = 0.3 + torch.rand(n, 1, 1, 1, generator=g)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.51, 0.53, generator=g))
    out = []
    for x in images:
        dev = x.device
        y = torch.stack([x[i, perm[i]] for i in range(n)]) * gain.to(dev) * bright.to(dev)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (mean + (y - mean) * contrast.to(dev)).clamp(1e-4, 1).pow(gamma.to(dev))
        w = on.to(dev)
        out.append(w * y.clamp(0, 1) + (1 - w) * x)
    return out


__all__ = ["DERAIN_TARGET_KIND", "TASKS", "build_pairs", "check_pairs", "check_task",
           "load_prepared_pairs", "photometric_jitter", "split_groups", "target_kind"]
