"""Deterministic train/val/test splits: order groups by a hash, cut by rank.

Cutting the hash-*ranked* groups at exact counts (instead of cutting each
group's hash at the cumulative fractions) makes split sizes as exact as whole
groups allow, and never leaves a split empty once there are at least three
groups. Shared by the sample dataset (``sample``) and the prepare engine
(``prepare``).

:func:`group_split` is the other split a dataset meets: two parts of one
training split (``output_mark``'s H/R part and its held-out surrogate part),
weighted by *items* and drawn with a seeded generator. It is a separate function
because it answers a different question: the dataset splits cut a fixed number of
*groups* per split from a hash order known before any pixel is read; this one
fills a part until it holds a share of the *items*, whatever the group sizes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from neuralmark.components.data.manifest import SPLITS


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Group counts per split: largest remainder, at least one each when ``n >= 3``.

    Args:
        n: number of groups.
        fractions: train/val/test shares (sum 1).

    Returns:
        ``(train, val, test)`` counts summing to ``n``; each is ``round``-exact up
        to the largest-remainder tie-break, except that an empty split takes one
        group from the largest when ``n >= 3``.
    """
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(3), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            while counts[i] == 0:
                donor = max(range(3), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def assign_splits(group_hashes: dict[str, str],
                  fractions: tuple[float, float, float]) -> dict[str, str]:
    """Map each group to a split: order groups by hash, cut by ``split_counts``.

    Args:
        group_hashes: ``{group: hex digest}``; the order key (ties broken by name).
        fractions: train/val/test shares.

    Returns:
        ``{group: "train" | "val" | "test"}``.
    """
    ordered = sorted(group_hashes, key=lambda g: (group_hashes[g], g))
    counts = split_counts(len(ordered), fractions)
    out, start = {}, 0
    for split, count in zip(SPLITS, counts, strict=True):
        for group in ordered[start:start + count]:
            out[group] = split
        start += count
    return out


def split_by_name_hash(groups: Iterable[str], fractions: tuple[float, float, float],
                       seed: int = 0) -> dict[str, str]:
    """``assign_splits`` with each group ranked by ``sha256("<seed>:<group>")``.

    The group id (a publisher file name, folder or patient id) is hashed rather
    than its bytes, so the split is known before any pixel is read; a different
    ``seed`` gives a different, equally exact split.

    Args:
        groups: group ids (repeats are fine).
        fractions: train/val/test shares.
        seed: the split seed.

    Returns:
        ``{group: split}`` for every distinct group.
    """
    return assign_splits({g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()
                          for g in set(groups)}, fractions)


def group_split(groups: Sequence[Any], fraction: float, g: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split item indices in two parts, each group (all crops of a photo) in one part.

    Groups are visited in a random order (``g``) and go to the second part
    until it holds at least ``fraction`` of the items; the first part keeps at
    least one group.

    Args:
        groups: the group of each item (compared as strings).
        fraction: share of the items the second part should hold.
        g: generator of the visiting order.

    Returns:
        ``(first, second)`` index tensors (ascending).
    """
    names = [str(x) for x in groups]
    unique = list(dict.fromkeys(names))
    order = [unique[i] for i in torch.randperm(len(unique), generator=g).tolist()]
    target = len(names) * fraction
    second: set[str] = set()
    count = 0
    for name in order[: max(1, len(order) - 1)]:
        if count >= target:
            break
        second.add(name)
        count += names.count(name)
    flags = torch.tensor([x in second for x in names])
    return torch.nonzero(~flags).flatten(), torch.nonzero(flags).flatten()
