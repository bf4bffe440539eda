"""ChestX-ray8 reader, debone recipe and the rib-suppression approximation.

Fixtures are built in the NIH's published layout: ``images/*.png`` (mode L),
``Data_Entry_2017.csv`` with its verbatim header (unquoted commas inside
``OriginalImage[Width,Height]``, trailing comma) and the two list files.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralmark.components.data import bone_suppression as bs
from neuralmark.components.data import datasets
from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.readers.base import DatasetLayoutError
from neuralmark.components.data.readers.chestxray8 import (
    BoneTargetError,
    ChestXray8Reader,
    MissingTargetError,
    debone_pair,
    parse_header,
    read_data_entry,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
# (image, findings, follow-up, patient, age, gender, view)
ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, "58", "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, "58", "M", "PA"),
    ("00000001_002.png", "Cardiomegaly|Effusion", 2, 1, "58", "M", "PA"),
    ("00000002_000.png", "No Finding", 0, 2, "081Y", "M", "PA"),
    ("00000002_001.png", "Hernia", 1, 2, "81", "M", "AP"),
    ("00000003_000.png", "Hernia", 0, 3, "74", "F", "PA"),
    ("00000004_000.png", "Mass|Nodule", 0, 4, "82", "M", "AP"),
    ("00000004_001.png", "No Finding", 1, 4, "82", "M", "PA"),
    ("00000005_000.png", "No Finding", 0, 5, "69", "F", "PA"),
]
TEST_PATIENTS = {2, 5}


def _radiograph(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def write_cxr8(root: Path, *, lists: bool = True, rows=ROWS, kaggle: bool = False,
               size: int = 96) -> Path:
    """A ChestX-ray8 tree in the publisher's layout under ``root``."""
    images = root / ("images_001/images" if kaggle else "images")
    images.mkdir(parents=True)
    for i, row in enumerate(rows):
        Image.fromarray(_radiograph(i, size), "L").save(images / row[0])
    lines = [f"{img},{find},{fu},{pid},{age},{sex},{view},2682,2749,0.143,0.143,\n"
             for img, find, fu, pid, age, sex, view in rows]
    (root / "Data_Entry_2017.csv").write_text(HEADER + "".join(lines), encoding="utf-8")
    if lists:
        test = [r[0] for r in rows if r[3] in TEST_PATIENTS]
        trainval = [r[0] for r in rows if r[3] not in TEST_PATIENTS]
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(trainval) + "\n")
    return root


# -- CSV ------------------------------------------------------------------------

def test_header_quirk_is_parsed(tmp_path):
    fields = HEADER.rstrip("\n").split(",")
    assert "OriginalImage[Width" in fields and "Height]" in fields  # the quirk is real
    cols = parse_header(fields)
    assert cols["OriginalImage[Width,Height]"] == (7, 2)
    assert cols["OriginalImagePixelSpacing[x,y]"] == (9, 2)
    assert "" not in cols  # the trailing comma
    entries = read_data_entry(write_cxr8(tmp_path) / "Data_Entry_2017.csv")
    assert len(entries) == len(ROWS)
    e = entries[3]
    assert e.original_size == (2682, 2749) and e.pixel_spacing == (0.143, 0.143)
    assert e.patient_age == 81  # "081Y", the older age format
    assert e.patient_id == "2" and e.view_position == "PA" and e.follow_up == 0


def test_quoted_header_variant_also_parses(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,'
                    'View Position,"OriginalImage[Width,Height]","OriginalImagePixelSpacing[x,y]"\n'
                    'a.png,No Finding,0,7,40,F,PA,"3000,2000","0.1,0.2"\n')
    (e,) = read_data_entry(path)
    assert e.original_size == (3000, 2000) and e.pixel_spacing == (0.1, 0.2)
    assert e.patient_gender == "F"


# -- items ----------------------------------------------------------------------

def test_items_groups_and_extra(tmp_path):
    items = list(ChestXray8Reader().items(write_cxr8(tmp_path, lists=False)))
    assert [it.item_id for it in items] == [r[0] for r in ROWS]
    assert all(it.split is None for it in items)  # no lists: the engine splits by group
    assert {it.item_id: it.group for it in items} == {r[0]: str(r[3]) for r in ROWS}
    assert items[1].extra["findings"] == ["Cardiomegaly", "Emphysema"]
    assert items[4].extra["view_position"] == "AP"
    assert items[0].extra["original_size"] == [2682, 2749]
    pickle.loads(pickle.dumps(items))  # workers get items by pickling
    img = items[0].open()
    assert img.mode == "L" and img.size == (96, 96)


def test_publisher_split_is_honoured(tmp_path):
    write_cxr8(tmp_path)
    for reader in (ChestXray8Reader(), ChestXray8Reader(val_share=0.5)):
        items = list(reader.items(tmp_path))
        by_split: dict[str, set[str]] = {}
        for it in items:
            by_split.setdefault(it.split, set()).add(it.group)
        assert {it.item_id for it in items if it.split == "test"} == {
            r[0] for r in ROWS if r[3] in TEST_PATIENTS}
        assert set(by_split) <= {"train", "val", "test"}
        groups = [g for s in by_split.values() for g in s]
        assert len(groups) == len(set(groups))  # no patient in two splits
    assert list(ChestXray8Reader(val_share=0.5).items(tmp_path)) == list(
        ChestXray8Reader(val_share=0.5).items(tmp_path))  # deterministic


def test_only_test_list_present(tmp_path):
    write_cxr8(tmp_path)
    (tmp_path / "train_val_list.txt").unlink()
    items = list(ChestXray8Reader().items(tmp_path))
    assert {it.item_id for it in items if it.split == "test"} == {
        r[0] for r in ROWS if r[3] in TEST_PATIENTS}
    assert all(it.split in ("train", "val") for it in items if int(it.group) not in TEST_PATIENTS)


def test_kaggle_mirror_layout(tmp_path):
    items = list(ChestXray8Reader().items(write_cxr8(tmp_path, kaggle=True)))
    assert len(items) == len(ROWS)
    assert "images_001" in items[0].location


def test_missing_images_are_listed_and_skipped(tmp_path, caplog):
    write_cxr8(tmp_path)
    for name in ("00000001_001.png", "00000004_000.png"):
        (tmp_path / "images" / name).unlink()
    reader = ChestXray8Reader()
    with caplog.at_level(logging.WARNING):
        items = list(reader.items(tmp_path))
    assert len(items) == len(ROWS) - 2
    assert reader.missing_images == ("00000001_001.png", "00000004_000.png")
    assert "2 of 9 images" in caplog.text and "00000001_001.png" in caplog.text

    # the prepare engine streams the reader twice (split plan, then items): one warning
    from neuralmark.components.data.prepare import prepare_dataset

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = prepare_dataset("chestxray8_debone", tmp_path, tmp_path / "out",
                                 PrepareConfig(size=16, workers=1))
    assert report.items == len(ROWS) - 2
    assert caplog.text.count("images listed in Data_Entry_2017.csv are missing") == 1


# -- layout errors ----------------------------------------------------------------

def _layout_error(source: Path) -> str:
    with pytest.raises(DatasetLayoutError) as err:
        list(ChestXray8Reader().items(source))
    return str(err.value)


def test_missing_csv(tmp_path):
    write_cxr8(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").unlink()
    msg = _layout_error(tmp_path)
    assert "expected Data_Entry_2017.csv" in msg and "found" in msg and "images/" in msg


def test_csv_without_required_columns(tmp_path):
    write_cxr8(tmp_path)
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(path.read_text().replace("Patient ID", "PID"))
    msg = _layout_error(tmp_path)
    assert "['Patient ID']" in msg and "expected" in msg and "'PID'" in msg


def test_images_folder_missing(tmp_path):
    write_cxr8(tmp_path)
    (tmp_path / "images").rename(tmp_path / "pngs")
    msg = _layout_error(tmp_path)
    assert "expected an images/ folder" in msg and "pngs/" in msg


def test_archives_not_extracted(tmp_path):
    write_cxr8(tmp_path)
    (tmp_path / "images").rename(tmp_path / "elsewhere")
    (tmp_path / "images_001.tar.gz").write_bytes(b"\x1f\x8b")
    assert "images_001.tar.gz but no images/ folder: extract them" in _layout_error(tmp_path)
    assert "expected a folder" in _layout_error(tmp_path / "images_001.tar.gz")


def test_all_images_missing(tmp_path):
    write_cxr8(tmp_path)
    for p in (tmp_path / "images").iterdir():
        p.unlink()
    msg = _layout_error(tmp_path)
    assert "expected the 9 images" in msg and "found none" in msg and "empty folder" in msg


def test_patient_in_both_lists(tmp_path):
    write_cxr8(tmp_path)
    with (tmp_path / "test_list.txt").open("a") as f:
        f.write("00000001_000.png\n")
    assert "found 00000001_000.png in both" in _layout_error(tmp_path)
    write_cxr8(tmp_path / "b")
    with (tmp_path / "b" / "test_list.txt").open("a") as f:
        f.write("00000001_000.png\n")
    (tmp_path / "b" / "train_val_list.txt").write_text("00000001_001.png\n")
    assert "patient 1 in both" in _layout_error(tmp_path / "b")


# -- recipe ---------------------------------------------------------------------

def test_recipe_registered():
    recipe = datasets._RECIPES["chestxray8_debone"]  # no _discover(): other readers are WIP
    assert recipe.reader is ChestXray8Reader and recipe.domains == ("A", "B")
    assert recipe.defaults == {"size": 256}
    assert bs.TARGET_KIND in recipe.description


def test_debone_pair_with_approximation(tmp_path):
    (item,) = list(ChestXray8Reader().items(write_cxr8(tmp_path, rows=ROWS[:1])))
    config = PrepareConfig(size=64)
    out = debone_pair(item.open(), item, config)
    assert set(out) == {"A", "B"}
    for img in out.values():
        assert img.mode == "RGB" and img.size == (64, 64)
        arr = np.asarray(img)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert item.extra["target_kind"] == bs.TARGET_KIND == "classical-approximation"
    again = debone_pair(item.open(), item, config)
    assert all(out[k].tobytes() == again[k].tobytes() for k in out)  # deterministic
    rgba = item.open().convert("RGBA")  # a few NIH PNGs are RGBA
    assert debone_pair(rgba, item, config)["A"].tobytes() == out["A"].tobytes()


def test_debone_pair_with_real_targets(tmp_path):
    write_cxr8(tmp_path / "cxr8")
    targets = tmp_path / "bse"
    targets.mkdir()
    for i, row in enumerate(ROWS[1:], start=1):  # none for the first radiograph
        Image.fromarray(255 - _radiograph(i, 48), "L").save(targets / row[0])  # half size
    items = list(ChestXray8Reader().items(tmp_path / "cxr8"))
    config = PrepareConfig(size=32, options={"targets": str(targets)})
    out = debone_pair(items[1].open(), items[1], config)
    expected = Image.fromarray(255 - _radiograph(1, 48), "L").resize((32, 32),
                                                                    Image.Resampling.LANCZOS)
    assert out["B"].tobytes() == expected.convert("RGB").tobytes()
    assert items[1].extra["target_kind"] == "supplied"
    with pytest.raises(MissingTargetError) as err:
        debone_pair(items[0].open(), items[0], config)
    assert isinstance(err.value, OSError) and isinstance(err.value, ValueError)
    assert "00000001_000.png" in str(err.value) and "quarantined" in str(err.value)
    Image.new("L", (48, 20)).save(targets / ROWS[2][0])  # wrong aspect ratio
    with pytest.raises(BoneTargetError, match="aspect ratio"):
        debone_pair(items[2].open(), items[2], config)
    (targets / ROWS[3][0]).write_bytes(b"not a png")
    with pytest.raises(BoneTargetError, match="cannot be decoded"):
        debone_pair(items[3].open(), items[3], config)
    bad = PrepareConfig(size=32, options={"targets": str(tmp_path / "nope")})
    with pytest.raises(DatasetLayoutError, match="expected a folder of bone-suppressed"):
        debone_pair(items[1].open(), items[1], bad)


# -- the approximation -------------------------------------------------------------

def phantom(n: int = 256, ribs: bool = True, seed: int = 0):
    """Smooth two-lung chest + tilted sinusoidal ribs (period n/16) + faint noise.

    Returns:
        (image, rib-free image, lung mask), each 1×1×n×n float32.
    """
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                            torch.arange(n, dtype=torch.float64), indexing="ij")
    u, v = xx / n, yy / n
    lung = torch.zeros(n, n, dtype=torch.float64)
    for cx in (0.3, 0.7):
        r = ((u - cx) / 0.15) ** 2 + ((v - 0.5) / 0.3) ** 2
        lung = torch.maximum(lung, torch.sigmoid((1 - r) * 8))
    base = 0.75 - 0.05 * v - 0.4 * lung
    layer = torch.zeros_like(base)
    for sign in (-1, 1):  # ribs slant down laterally on both sides
        a = math.radians(20.0 * sign)
        side = torch.sigmoid((u - 0.5) * sign * 40)
        layer += side * torch.sin(2 * math.pi * (yy * math.cos(a) + xx * math.sin(a)) / (n / 16))
    noise = 0.005 * torch.randn(n, n, generator=torch.Generator().manual_seed(seed),
                                dtype=torch.float64)
    clean = (base + noise).clamp(0, 1)
    x = (base + noise + (0.06 * layer * lung if ribs else 0)).clamp(0, 1)
    return x.float()[None, None], clean.float()[None, None], lung.float()[None, None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).pow(2).mean()))


def test_approximation_removes_rib_band_keeps_soft_tissue():
    x, clean, lung = phantom()
    y = bs.suppress_ribs(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    inner = (lung > 0.9).float()
    reduction = float(bs.band_energy(x, inner) / bs.band_energy(y, inner))
    assert reduction >= 10, reduction  # measured ≈ 23× (docstring)
    assert _psnr(bs.lowpass(y), bs.lowpass(x)) >= 50  # measured ≈ 73 dB
    assert _psnr(y, clean) >= _psnr(x, clean) + 5  # measured 33.6 → 42.9 dB
    assert bs.suppress_ribs(x).equal(y)  # deterministic


def test_approximation_leaves_non_rib_structure_alone():
    """Vertical stripes (wrong orientation) and isotropic texture survive (gate + prior)."""
    x, _, lung = phantom(ribs=False)
    n = x.shape[-1]
    xx = torch.arange(n, dtype=torch.float32)
    vertical = x + 0.06 * torch.sin(2 * math.pi * xx / (n / 16)) * lung
    blobs = torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(1))
    blobs = bs.lowpass(blobs, bs.RibSuppressionParams(rib_period_fraction=3 / n))
    texture = x + 0.3 * blobs * lung
    inner = (lung > 0.9).float()
    for image in (x, vertical, texture):
        y = bs.suppress_ribs(image)
        assert _psnr(y, image) >= 45  # measured 49–54 dB (ribs phantom: 36 dB)
        assert float(bs.band_energy(image, inner) / bs.band_energy(y, inner)) < 3  # ribs: 23×


def test_approximation_any_size_and_channels():
    x, _, _ = phantom(100)
    rgb = x[..., :, :80].repeat(2, 3, 1, 1)  # 2×3×100×80
    y = bs.suppress_ribs(rgb)
    assert y.shape == rgb.shape
    assert y[:, 0].equal(y[:, 1]) and y[:, 1].equal(y[:, 2])
    with pytest.raises(ValueError, match="B×C×H×W"):
        bs.suppress_ribs(x[0])


def test_engine_quarantines_a_missing_target_and_names_files_cleanly(tmp_path):
    """Through the prepare engine: a missing target is one quarantined item, not a crash."""
    import csv

    from neuralmark.components.data.prepare import prepare_dataset

    write_cxr8(tmp_path / "cxr8")
    targets = tmp_path / "bse"
    targets.mkdir()
    for i, row in enumerate(ROWS[1:], start=1):  # none for the first radiograph
        Image.fromarray(255 - _radiograph(i, 48), "L").save(targets / row[0])
    config = PrepareConfig(size=32, workers=1, max_bad_fraction=0.5,
                           options={"targets": str(targets)})
    report = prepare_dataset("chestxray8_debone", tmp_path / "cxr8", tmp_path / "out", config)
    assert [q["item_id"] for q in report.quarantined] == [ROWS[0][0]]
    assert "MissingTargetError" in report.quarantined[0]["error"]
    with Path(report.manifest).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = [row["path"] for row in rows]
    assert paths and not any(p.endswith(".png.png") for p in paths)
    # the manifest says where the targets came from
    assert {json.loads(row["extra"])["target_kind"] for row in rows} == {"supplied"}
    approx = prepare_dataset("chestxray8_debone", tmp_path / "cxr8", tmp_path / "out2",
                             PrepareConfig(size=32, workers=1))
    with Path(approx.manifest).open(newline="") as fh:
        kinds = {json.loads(row["extra"])["target_kind"] for row in csv.DictReader(fh)}
    assert kinds == {"classical-approximation"}

    # the GX report counts target kinds per pair and says plainly when they are approximated
    from neuralmark.integrations.validation import validate_prepared

    supplied = validate_prepared(report.manifest, report.expectations)
    assert supplied.success, supplied.failed()
    assert supplied.stats["target_kind"] == {"supplied": len(ROWS) - 1}
    assert "Every target was supplied" in supplied.html
    assert "classical approximation</strong>" not in supplied.html
    approximated = validate_prepared(approx.manifest, approx.expectations)
    assert approximated.success, approximated.failed()
    assert approximated.stats["target_kind"] == {"classical-approximation": len(ROWS)}
    assert ("<strong>All targets are a classical approximation</strong>"
            in approximated.html)
    assert f"<strong>{len(ROWS)} classical-approximation</strong>" in approximated.html

    # a row that does not say where its target came from fails the recipe's own check
    from neuralmark.components.data.prepare import write_prepared_manifest

    with Path(approx.manifest).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["extra"] = "{}"
    write_prepared_manifest(rows, Path(approx.manifest))
    unlabelled = validate_prepared(approx.manifest, approx.expectations)
    assert unlabelled.failed() == ["target_kind_not_null"]
