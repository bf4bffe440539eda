"""Split fractions: hash-ranked groups cut at exact counts, deterministic, never empty."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.prepare import prepare_dataset
from neuralmark.components.data.readers.voc import SEED_FRACTIONS, SEED_SPLIT_SIZES
from neuralmark.components.data.splits import split_by_name_hash, split_counts

FRACTIONS = [(0.8, 0.1, 0.1), (0.5, 0.3, 0.2), (0.7, 0.15, 0.15), SEED_FRACTIONS,
             (1 / 3, 1 / 3, 1 / 3), (0.98, 0.01, 0.01)]


@pytest.mark.parametrize("fractions", FRACTIONS)
def test_counts_are_as_exact_as_whole_groups_allow(fractions):
    for n in range(3, 400):
        counts = split_counts(n, fractions)
        assert sum(counts) == n and min(counts) >= 1, (n, counts)
        short = sum(fraction * n < 1 for fraction in fractions)  # shares lifted to one group
        for count, fraction in zip(counts, fractions, strict=True):
            # within one group of the exact share; a split that gave a group to a
            # share below one group is off by at most that many more
            assert abs(count - fraction * n) < 1 + short, (n, counts)
        if not short:
            assert all(abs(c - f * n) < 1 for c, f in zip(counts, fractions, strict=True))


def test_the_seed_voc_split_is_exact():
    assert split_counts(sum(SEED_SPLIT_SIZES), SEED_FRACTIONS) == SEED_SPLIT_SIZES
    assert split_counts(3, SEED_FRACTIONS) == (1, 1, 1)  # a tiny run keeps a test split
    assert split_counts(2, (0.8, 0.1, 0.1)) == (2, 0, 0)  # fewer groups than splits


def test_split_by_name_hash_is_deterministic_and_seeded():
    groups = [f"im{i}" for i in range(100)]
    plan = split_by_name_hash(groups, (0.8, 0.1, 0.1), seed=0)
    assert Counter(plan.values()) == {"train": 80, "val": 10, "test": 10}
    assert split_by_name_hash(reversed(groups), (0.8, 0.1, 0.1), seed=0) == plan  # order-free
    other = split_by_name_hash(groups, (0.8, 0.1, 0.1), seed=1)
    assert other != plan and Counter(other.values()) == Counter(plan.values())


def _images(folder: Path, n: int, classes: int = 0) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        sub = folder / f"class{i % classes}" if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            sub / f"{i:03d}.png")
    return folder


def _splits(manifest: str) -> list[tuple[str, str]]:
    with open(manifest, newline="") as f:
        return [(row["group"], row["split"]) for row in csv.DictReader(f)]


def test_engine_cuts_exact_counts_and_repeats_itself(tmp_path: Path):
    source = _images(tmp_path / "flat", 20)
    cfg = PrepareConfig(size=16, workers=1, fractions=(0.5, 0.3, 0.2))
    report = prepare_dataset("image_folder", source, tmp_path / "a", cfg)
    assert report.counts == {"train": {"image": 10}, "val": {"image": 6}, "test": {"image": 4}}
    again = prepare_dataset("image_folder", source, tmp_path / "b", cfg)
    assert Path(again.manifest).read_bytes() == Path(report.manifest).read_bytes()
    limited = prepare_dataset("image_folder", source, tmp_path / "c",
                              PrepareConfig(size=16, workers=1, limit=3,
                                            fractions=SEED_FRACTIONS))
    assert limited.counts == {s: {"image": 1} for s in ("train", "val", "test")}


def test_engine_keeps_groups_whole_and_counts_groups_exactly(tmp_path: Path):
    source = _images(tmp_path / "kth", 40, classes=10)  # 10 materials of 4 images
    report = prepare_dataset("image_folder", source, tmp_path / "out",
                             PrepareConfig(size=16, workers=1, fractions=(0.6, 0.2, 0.2)))
    pairs = _splits(report.manifest)
    split_of_group: dict[str, set[str]] = {}
    for group, split in pairs:
        split_of_group.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values())  # no class straddles splits
    groups_per_split = Counter(next(iter(s)) for s in split_of_group.values())
    assert groups_per_split == {"train": 6, "val": 2, "test": 2}
    assert report.counts == {"train": {"image": 24}, "val": {"image": 8}, "test": {"image": 8}}
