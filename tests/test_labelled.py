"""Labelled datasets for the training pipeline: procedural classes, prepared views, labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from neuralmark.components.data.labelled import (
    CLASS_NAMES,
    ProceduralClassesConfig,
    build_procedural_classes,
    class_image,
    load_labels,
    prepared_expectations,
    training_data,
    training_view,
)
from neuralmark.components.data.manifest import load_split, read_manifest
from neuralmark.components.data.prepare import MARKER, PREPARED_COLUMNS, write_prepared_manifest
from neuralmark.components.data.splits import split_counts
from neuralmark.components.errors import InputError
from neuralmark.runtime.settings import resolve

SMALL = ProceduralClassesConfig(images_per_class=10, seed=3)


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    return build_procedural_classes(tmp_path_factory.mktemp("classes") / "c", SMALL)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_procedural_classes_are_balanced_per_split_and_byte_deterministic(classes, tmp_path):
    rows = _rows(classes)
    assert list(rows[0]) == PREPARED_COLUMNS and len(rows) == 10 * len(CLASS_NAMES)
    for split, per_class in zip(("train", "val", "test"), split_counts(10, SMALL.fractions),
                                strict=True):
        labels = [int(r["label"]) for r in rows if r["split"] == split]
        assert sorted(labels) == sorted(list(range(10)) * per_class), split
    again = build_procedural_classes(tmp_path / "again", SMALL)
    assert again.read_bytes() == classes.read_bytes()
    mtime = classes.stat().st_mtime_ns
    assert build_procedural_classes(classes.parent, SMALL) == classes  # idempotent
    assert classes.stat().st_mtime_ns == mtime
    assert prepared_expectations(classes).label_range == (0, 9)
    assert prepared_expectations(classes).size == 32
    img = class_image(4, 0, SMALL)
    assert img.shape == (32, 32, 3) and img.dtype.name == "uint8"
    with pytest.raises(InputError, match="class label 10 outside 0..9"):
        class_image(10, 0, SMALL)


def test_labels_come_in_load_split_order(classes):
    data = training_data(classes, size=32, calibration=True)
    assert set(data) == {"train", "val", "test", "train_labels", "val_labels", "test_labels",
                         "calibration"}
    rows = [r for r in _rows(classes) if r["split"] == "test"]
    expected = torch.tensor([int(r["label"]) for r in rows])
    assert torch.equal(data["test_labels"], expected)
    assert data["test"].shape == (10 * split_counts(10, SMALL.fractions)[2], 3, 32, 32)
    assert data["train_labels"].dtype == torch.int64
    # the image of row i is the file row i names, whose name carries its class
    first = rows[5]
    assert CLASS_NAMES[int(first["label"])] in first["path"]
    assert torch.equal(data["test"][5], load_split(classes, "test")[5])
    assert torch.equal(load_labels(classes, "test", limit=3), expected[:3])


def test_a_small_classifier_learns_the_classes_above_chance(tmp_path):
    from neuralmark.components.methods.visible_gan.classifier import accuracy, train_classifier
    from neuralmark.components.methods.visible_gan.nets import build_classifier

    manifest = build_procedural_classes(tmp_path / "c", ProceduralClassesConfig(
        images_per_class=40))
    data = training_data(manifest, size=32)
    torch.manual_seed(0)
    net = build_classifier("resnet_small", 10, 8)
    g = torch.Generator().manual_seed(0)
    train_classifier(net, data["train"], data["train_labels"], 120, 32, 2e-3, g,
                     torch.device("cpu"), flips=True)
    acc = accuracy(net, data["test"], data["test_labels"], torch.device("cpu"))
    assert acc >= 0.3, acc  # chance is 0.1


def test_sample_manifests_have_no_labels_and_paired_ones_are_refused(tmp_path):
    from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset

    sample = build_sample_dataset(tmp_path / "s", SampleDataConfig(
        size=32, crops_per_photo=1, n_procedural=3))
    assert load_labels(sample, "train") is None
    assert set(training_data(sample, size=32)) == {"train", "val"}
    paired = tmp_path / "paired" / "manifest.csv"
    paired.parent.mkdir()
    write_prepared_manifest([{**{c: "" for c in PREPARED_COLUMNS}, "path": "a.png",
                              "sha256": "0", "width": 8, "height": 8, "mode": "RGB",
                              "split": "train", "source": "x", "group": "g", "domain": "A",
                              "pair": "p"}], paired)
    with pytest.raises(ValueError, match="domain 'A'.*load_prepared_pairs"):
        read_manifest(paired)
    with pytest.raises(InputError, match=r"domains \['A'\]"):
        training_view(paired)


def _prepared(root: Path, splits: dict[str, int], labelled: bool = True) -> Path:
    rows = []
    for split, n in splits.items():
        for i in range(n):
            rows.append({"path": f"{split}/{i}.png", "sha256": f"{split}{i}", "width": 32,
                         "height": 32, "mode": "RGB", "split": split, "source": "t",
                         "group": f"{split}_{i}", "domain": "image", "pair": "",
                         "label": i % 10 if labelled else "", "extra": "{}"})
    root.mkdir(parents=True)
    return write_prepared_manifest(rows, root / "manifest.csv")


def test_training_view_carves_val_out_of_train_deterministically(tmp_path):
    manifest = _prepared(tmp_path / "p", {"train": 40, "test": 8})
    view = training_view(manifest, val_fraction=0.2, seed=1)
    assert view == manifest.parent / "training_view.csv"
    rows = _rows(view)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == {"train": 32, "val": 8, "test": 8}
    first = view.read_bytes()
    assert training_view(manifest.parent, val_fraction=0.2, seed=1).read_bytes() == first
    assert training_view(manifest, val_fraction=0.2, seed=2).read_bytes() != first
    original = {r["path"]: r["label"] for r in _rows(manifest)}
    assert all(original[r["path"]] == r["label"] for r in rows)  # labels travel with rows


def test_training_view_names_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="does not exist.*neuralmark data prepare"):
        training_view(tmp_path / "none" / "manifest.csv")
    with pytest.raises(InputError, match="rows have no label"):
        training_view(_prepared(tmp_path / "u", {"train": 4, "test": 2}, labelled=False))
    with pytest.raises(InputError, match="no test split"):
        training_view(_prepared(tmp_path / "t", {"train": 4}))
    no_marker = _prepared(tmp_path / "m", {"train": 4, "test": 2})
    with pytest.raises(InputError, match=f"{MARKER} is missing"):
        prepared_expectations(no_marker)
    (no_marker.parent / MARKER).write_text(json.dumps({"report": {}}))
    with pytest.raises(InputError, match="holds no expectations"):
        prepared_expectations(no_marker)


def test_data_settings_pick_the_source_and_name_mistakes(tmp_path):
    settings = resolve("visible_gan", "tiny").data
    assert settings.dataset == "procedural_classes" and settings.size == 32
    assert resolve("visible_gan", "full").data.prepared == "data/cifar10/manifest.csv"
    with pytest.raises(InputError, match="dataset 'prepared' needs `prepared`"):
        resolve("visible_gan", "tiny", data={"dataset": "prepared"})
    with pytest.raises(InputError, match="`prepared` is set but dataset is 'sample'"):
        resolve("pgd_signer", "tiny", data={"prepared": "x.csv"})
    with pytest.raises(InputError, match="data.dataset"):
        resolve("visible_gan", "tiny", data={"dataset": "cifar"})
    manifest = _prepared(tmp_path / "data" / "p", {"train": 10, "test": 2})
    built = resolve("visible_gan", "tiny", data={"dataset": "prepared",
                                                 "prepared": "data/p/manifest.csv"}).data
    assert built.build(tmp_path) == manifest.parent / "training_view.csv"
