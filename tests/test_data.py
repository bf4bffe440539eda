"""Sample dataset and manifest: determinism, splits, idempotence, loaders."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from neuralmark.components.data.manifest import (
    MANIFEST_COLUMNS,
    SPLITS,
    ManifestImages,
    ManifestRow,
    load_split,
    manifest_to_records,
    read_manifest,
    write_manifest,
)
from neuralmark.components.data.sample import (
    BUNDLED_PHOTOS,
    PROCEDURAL_KINDS,
    SampleDataConfig,
    build_sample_dataset,
    load_bundled_photo,
    procedural_image,
    split_counts,
)

TINY = SampleDataConfig(size=64, crops_per_photo=1, n_procedural=6)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Manifest of a tiny sample dataset built once for this module."""
    return build_sample_dataset(tmp_path_factory.mktemp("sample") / "tiny", TINY)


def test_bundled_photos_load_offline():
    for photo in BUNDLED_PHOTOS:
        image = load_bundled_photo(photo)
        assert image.mode == "RGB", photo.source
        assert min(image.size) >= 128, photo.source


def test_build_is_byte_deterministic(tiny, tmp_path):
    again = build_sample_dataset(tmp_path / "again", TINY)
    first, second = _tree(tiny.parent), _tree(again.parent)
    assert first.keys() == second.keys()
    assert first == second
    assert len(first) == len(BUNDLED_PHOTOS) + TINY.n_procedural + 2  # + manifest, config


def test_manifest_columns_and_rows_match_files(tiny):
    with tiny.open(newline="") as f:
        assert next(csv.reader(f)) == MANIFEST_COLUMNS
    rows = read_manifest(tiny)
    assert len(rows) == len(BUNDLED_PHOTOS) * TINY.crops_per_photo + TINY.n_procedural
    for row in rows:
        data = (tiny.parent / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert row.path == f"{row.split}/{row.sha256[:16]}.png"
        with Image.open(tiny.parent / row.path) as im:
            assert (im.mode, im.size) == ("RGB", (64, 64)) == (row.mode, (row.width, row.height))
    assert rows == sorted(rows, key=ManifestRow.sort_key)
    records = manifest_to_records(tiny)
    assert list(records[0]) == MANIFEST_COLUMNS and records[0]["width"] == 64


def test_splits_are_disjoint_by_group_and_all_populated(tiny):
    rows = read_manifest(tiny)
    splits_of_group = defaultdict(set)
    for row in rows:
        splits_of_group[row.group].add(row.split)
    assert all(len(s) == 1 for s in splits_of_group.values())
    motorcycle = {r.source for r in rows if r.group == "photo:stereo_motorcycle"}
    assert motorcycle == {"skimage:motorcycle_left.png", "skimage:motorcycle_right.png"}
    for split in SPLITS:
        in_split = [r for r in rows if r.split == split]
        assert any(r.group.startswith("photo:") for r in in_split), split
        assert any(r.group.startswith("procedural:") for r in in_split), split


def test_split_counts_give_every_split_a_group():
    assert split_counts(17, (0.7, 0.15, 0.15)) == (12, 3, 2)
    assert split_counts(3, (0.9, 0.05, 0.05)) == (1, 1, 1)
    assert sum(split_counts(24, (0.7, 0.15, 0.15))) == 24


def test_rebuild_with_same_config_does_no_work(tiny):
    before = {p: p.stat().st_mtime_ns for p in tiny.parent.rglob("*")}
    calls = []
    assert build_sample_dataset(tiny.parent, TINY, progress=lambda d, t: calls.append(d)) == tiny
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in tiny.parent.rglob("*")} == before


def test_other_config_rebuilds_in_place_with_progress(tmp_path):
    root = tmp_path / "ds"
    build_sample_dataset(root, TINY)
    calls: list[tuple[int, int]] = []
    smaller = TINY.model_copy(update={"size": 32, "n_procedural": 3})
    manifest = build_sample_dataset(root, smaller, progress=lambda d, t: calls.append((d, t)))
    total = len(BUNDLED_PHOTOS) + 3
    assert calls[-1] == (total, total) and len(calls) == total
    assert {r.width for r in read_manifest(manifest)} == {32}
    assert len(list(root.rglob("*.png"))) == total  # old files gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_config_rejects_typos_and_bad_fractions():
    with pytest.raises(pydantic.ValidationError, match="crops_per_foto"):
        SampleDataConfig(crops_per_foto=2)
    with pytest.raises(pydantic.ValidationError, match="sum to 1"):
        SampleDataConfig(fractions=(0.5, 0.2, 0.2))
    with pytest.raises(pydantic.ValidationError):
        SampleDataConfig(n_procedural=2)


def test_procedural_images_are_varied_and_seeded():
    images = [procedural_image(0, i, 48)[1] for i in range(len(PROCEDURAL_KINDS) * 2)]
    assert [procedural_image(0, i, 48)[0] for i in range(5)] == list(PROCEDURAL_KINDS)
    for img in images:
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
        assert img.std() > 3.0  # not flat
    flat = [img.tobytes() for img in images]
    assert len(set(flat)) == len(flat)
    assert np.array_equal(procedural_image(0, 3, 48)[1], images[3])
    assert not np.array_equal(procedural_image(1, 3, 48)[1], images[3])


def test_load_split_shapes_and_range(tiny):
    rows = read_manifest(tiny)
    n_train = sum(r.split == "train" for r in rows)
    x = load_split(tiny, "train")
    assert x.shape == (n_train, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    y = load_split(tiny, "val", size=32, limit=2)
    assert y.shape == (2, 3, 32, 32)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_manifest_images_dataset(tiny):
    ds = ManifestImages(tiny, "test", size=48)
    assert len(ds) == sum(r.split == "test" for r in read_manifest(tiny))
    item = ds[0]
    assert item.shape == (3, 48, 48) and item.dtype == torch.float32
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch.shape == (2, 3, 48, 48)


def test_unknown_and_empty_splits_are_named(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        load_split(tiny, "holdout")
    rows = [r for r in read_manifest(tiny) if r.split != "val"]
    only = write_manifest(rows, tmp_path / "manifest.csv")
    with pytest.raises(ValueError, match="split 'val' .* is empty"):
        load_split(only, "val")
    with pytest.raises(ValueError, match="split 'val' .* is empty"):
        ManifestImages(only, "val", size=32)


def test_write_manifest_is_sorted_and_byte_stable(tiny, tmp_path):
    rows = read_manifest(tiny)
    a = write_manifest(list(reversed(rows)), tmp_path / "a.csv")
    b = write_manifest(rows, tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes() == tiny.read_bytes()
    assert read_manifest(a) == rows


def test_read_manifest_rejects_wrong_header(tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text("path,sha\nx.png,abc\n")
    with pytest.raises(ValueError, match="manifest columns"):
        read_manifest(bad)
