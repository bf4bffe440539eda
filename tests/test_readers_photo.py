"""Photo readers and recipes on fixtures in the publishers' exact layouts.

MIRFlickr25k (``mirflickr25k.zip`` / ``mirflickr/im*.jpg``), Metafaces (a folder
of 1024² faces, MetFaces-style ``images/`` + ``unprocessed/``) and PASCAL VOC 2012
(``VOCdevkit/VOC2012/{JPEGImages,ImageSets/Main}``). The readers and transforms
are called directly (no prepare engine).
"""

from __future__ import annotations

import io
import math
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralmark.components.data import datasets
from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.readers.base import DatasetLayoutError, SourceItem
from neuralmark.components.data.readers.metafaces import MetafacesReader, metafaces_transform
from neuralmark.components.data.readers.mirflickr import (
    MirflickrReader,
    mirflickr_transform,
    to_rgb,
)
from neuralmark.components.data.readers.voc import (
    SEED_FRACTIONS,
    VOC_DERAIN_ROLES,
    VocReader,
    voc_derain_transform,
)


def jpeg_bytes(size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> bytes:
    img = Image.new("RGB", size, colour)
    rng = np.random.default_rng(sum(colour) + size[0])
    arr = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-20, 20, (*size[::-1], 3)),
                  0, 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- MIRFlickr25k --------------------------------------------------------------------------------

MIR_NUMBERS = (1, 2, 10, 3)  # stored out of order: items must come back numerically


@pytest.fixture()
def mir_zip(tmp_path: Path) -> Path:
    path = tmp_path / "mirflickr25k.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mirflickr/", "")
        for n in MIR_NUMBERS:
            zf.writestr(f"mirflickr/im{n}.jpg", jpeg_bytes((60 + n, 40), (30 * n % 255, 90, 160)))
        zf.writestr("mirflickr/license.txt", "Creative Commons")
        zf.writestr("mirflickr/meta/tags/tags1.txt", "sky\n")
        zf.writestr("mirflickr/meta/exif_raw/exif1.txt", "-Make\nCanon\n")
        zf.writestr("mirflickr/doc/README.txt", "MIRFLICKR-25000")
    return path


def test_mirflickr_zip_streams_in_numeric_order(mir_zip: Path) -> None:
    items = list(MirflickrReader().items(mir_zip))
    assert [i.item_id for i in items] == ["im1", "im2", "im3", "im10"]
    assert items[0].location == f"zip://{mir_zip.resolve()}!mirflickr/im1.jpg"
    assert items[3].open().size == (70, 40)
    assert all(i.split is None and i.label is None for i in items)


def test_mirflickr_folder_layouts(mir_zip: Path, tmp_path: Path) -> None:
    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(mir_zip) as zf:
        zf.extractall(extracted)
    for source in (extracted, extracted / "mirflickr", tmp_path):  # tmp_path holds the zip
        items = list(MirflickrReader().items(source))
        assert [i.item_id for i in items] == ["im1", "im2", "im3", "im10"], source
    folder_item = next(MirflickrReader().items(extracted))
    assert Path(folder_item.location) == (extracted / "mirflickr" / "im1.jpg").resolve()
    assert folder_item.open().mode == "RGB"


def test_mirflickr_truncated_zip_is_a_layout_error(mir_zip: Path, tmp_path: Path) -> None:
    data = mir_zip.read_bytes()
    half = tmp_path / "half" / "mirflickr25k.zip"
    half.parent.mkdir()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetLayoutError) as err:
        list(MirflickrReader().items(half))
    msg = str(err.value)
    assert "expected mirflickr25k.zip with members mirflickr/im1.jpg" in msg
    assert "not a readable zip" in msg and f"{len(data) // 2} bytes" in msg


def test_mirflickr_wrong_layouts_name_what_was_found(tmp_path: Path) -> None:
    other = tmp_path / "photos.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("holiday/im1.jpg", jpeg_bytes((8, 8), (1, 2, 3)))
    with pytest.raises(DatasetLayoutError, match=r"no mirflickr/im\*\.jpg \(holiday/im1\.jpg\)"):
        list(MirflickrReader().items(other))
    wrong = tmp_path / "wrong"
    (wrong / "pictures").mkdir(parents=True)
    (wrong / "pictures" / "a.jpg").write_bytes(jpeg_bytes((8, 8), (1, 2, 3)))
    with pytest.raises(DatasetLayoutError, match="expected .*found pictures/"):
        list(MirflickrReader().items(wrong))
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        list(MirflickrReader().items(tmp_path / "missing"))


def test_mirflickr_recipe_centre_crops_to_size() -> None:
    # red | green | blue bands: the centre square is the green one
    bands = np.zeros((100, 300, 3), dtype=np.uint8)
    bands[:, :100, 0] = bands[:, 100:200, 1] = bands[:, 200:, 2] = 255
    item = SourceItem(item_id="im1", location="unused")
    out = mirflickr_transform(Image.fromarray(bands), item, PrepareConfig(size=48))
    img = out["image"]
    assert set(out) == {"image"} and img.size == (48, 48) and img.mode == "RGB"
    arr = np.asarray(img, dtype=np.int16)
    assert arr[:, 4:-4, 1].min() > 240 and arr[:, 4:-4, [0, 2]].max() < 15
    for mode in ("L", "CMYK", "RGBA", "P"):
        src = Image.fromarray(bands).convert(mode)
        res = mirflickr_transform(src, item, PrepareConfig())["image"]
        assert res.mode == "RGB" and res.size == (400, 400), mode
    recipe = datasets._RECIPES["mirflickr25k"]
    assert recipe.reader is MirflickrReader and recipe.domains == ("image",)


def test_to_rgb_handles_sixteen_bit_and_alpha() -> None:
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


# -- Metafaces -----------------------------------------------------------------------------------


@pytest.fixture()
def metafaces_root(tmp_path: Path) -> Path:
    root = tmp_path / "metfaces-dataset"
    (root / "images").mkdir(parents=True)
    (root / "unprocessed").mkdir()
    for i in range(3):
        face = Image.new("RGB", (1024, 1024), (40 * i, 100, 200))
        face.save(root / "images" / f"image-{i:05d}.png")
    (root / "images" / "more").mkdir()
    Image.new("RGBA", (1024, 1024), (10, 20, 30, 255)).save(root / "images" / "more" / "x.jpg.png")
    (root / "images" / "notes.txt").write_text("not an image")
    Image.new("RGB", (64, 48)).save(root / "unprocessed" / "painting-00000.png")
    (root / "metfaces.json").write_text("{}")
    return root


def test_metafaces_reads_images_recursively_and_skips_unprocessed(metafaces_root: Path) -> None:
    items = list(MetafacesReader().items(metafaces_root))
    assert [i.item_id for i in items] == ["image-00000", "image-00001", "image-00002",
                                          "more__x.jpg"]
    assert list(MetafacesReader().items(metafaces_root / "images")) == items
    assert items[0].open().size == (1024, 1024)


def test_metafaces_recipe_resizes_to_400(metafaces_root: Path) -> None:
    items = list(MetafacesReader().items(metafaces_root))
    for item in (items[0], items[-1]):  # RGB and RGBA faces
        out = metafaces_transform(item.open(), item, PrepareConfig())
        assert set(out) == {"image"} and out["image"].size == (400, 400)
        assert out["image"].mode == "RGB"
    assert datasets._RECIPES["metafaces"].reader is MetafacesReader


def test_metafaces_layout_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="an empty folder"):
        list(MetafacesReader().items(tmp_path / "empty"))
    (tmp_path / "f.zip").write_bytes(b"PK")
    with pytest.raises(DatasetLayoutError, match="a file of 2 bytes"):
        list(MetafacesReader().items(tmp_path / "f.zip"))
    dup = tmp_path / "dup"
    dup.mkdir()
    for suffix in (".png", ".jpg"):
        Image.new("RGB", (8, 8)).save(dup / f"face{suffix}")
    with pytest.raises(DatasetLayoutError, match="same id 'face'"):
        list(MetafacesReader().items(dup))


# -- PASCAL VOC 2012 -----------------------------------------------------------------------------

VOC_TRAIN = ["2008_000008", "2008_000015", "2009_000001"]
VOC_VAL = ["2007_000033", "2008_000009", "2010_000002"]


@pytest.fixture()
def vocdevkit_parent(tmp_path: Path) -> Path:
    root = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    jpegs, main = root / "JPEGImages", root / "ImageSets" / "Main"
    jpegs.mkdir(parents=True)
    main.mkdir(parents=True)
    (root / "Annotations").mkdir()
    for k, item_id in enumerate([*VOC_TRAIN, *VOC_VAL, "2011_000001"]):  # last: not listed
        (jpegs / f"{item_id}.jpg").write_bytes(jpeg_bytes((500, 375 - 10 * k), (20 * k, 120, 60)))
    (main / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (main / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (main / "trainval.txt").write_text("\n".join(sorted(VOC_TRAIN + VOC_VAL)) + "\n")
    (main / "aeroplane_train.txt").write_text("2008_000008 -1\n")
    return tmp_path / "voc"


def test_voc_reader_accepts_every_documented_root(vocdevkit_parent: Path) -> None:
    expected = sorted(VOC_TRAIN + VOC_VAL)
    for source in (vocdevkit_parent, vocdevkit_parent / "VOCdevkit",
                   vocdevkit_parent / "VOCdevkit" / "VOC2012"):
        items = list(VocReader().items(source))
        assert [i.item_id for i in items] == expected, source
    by_id = {i.item_id: i for i in items}
    assert by_id["2008_000008"].extra == {"voc_split": "train"}
    assert by_id["2007_000033"].extra == {"voc_split": "val"}
    assert all(i.split is None for i in items)  # the engine cuts the seed's fractions
    assert by_id["2008_000008"].open().size == (500, 375)


def test_voc_trainval_only(vocdevkit_parent: Path) -> None:
    main = vocdevkit_parent / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    (main / "train.txt").unlink()
    (main / "val.txt").unlink()
    items = list(VocReader().items(vocdevkit_parent))
    assert len(items) == 6 and items[0].extra == {"voc_split": "trainval"}


def test_voc_layout_errors(vocdevkit_parent: Path, tmp_path: Path) -> None:
    gz = tmp_path / "VOCtrainval_11-May-2012.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.add(vocdevkit_parent / "VOCdevkit", arcname="VOCdevkit")
    with pytest.raises(DatasetLayoutError, match="a gzip-compressed archive, which has no random "
                                                  "access; expected the uncompressed tar"):
        list(VocReader().items(gz))
    with pytest.raises(DatasetLayoutError, match="expected VOCdevkit/VOC2012/JPEGImages"):
        list(VocReader().items(vocdevkit_parent / "VOCdevkit" / "VOC2012" / "Annotations"))
    root = vocdevkit_parent / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages" / f"{VOC_VAL[1]}.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=f"1 of 6 listed ids .*{VOC_VAL[1]}"):
        list(VocReader().items(vocdevkit_parent))
    for txt in (root / "ImageSets" / "Main").glob("*.txt"):
        txt.unlink()
    with pytest.raises(DatasetLayoutError, match="no train.txt/val.txt/trainval.txt"):
        list(VocReader().items(vocdevkit_parent))


def test_voc_derain_recipe_pairs(vocdevkit_parent: Path) -> None:
    items = list(VocReader().items(vocdevkit_parent))
    config = PrepareConfig(size=64)
    pairs = [voc_derain_transform(i.open(), i, config) for i in items[:2]]
    for pair in pairs:
        assert set(pair) == {"A", "B"}
        assert all(im.size == (64, 64) and im.mode == "RGB" for im in pair.values())
        a = np.asarray(pair["A"], dtype=np.float64)
        b = np.asarray(pair["B"], dtype=np.float64)
        assert (a >= b - 1).all() and (a - b).mean() > 1.0  # rain only brightens, visibly
    again = voc_derain_transform(items[0].open(), items[0], config)
    assert again["A"].tobytes() == pairs[0]["A"].tobytes()  # reproducible per item_id
    other_seed = voc_derain_transform(items[0].open(), items[0], PrepareConfig(size=64, seed=1))
    assert other_seed["A"].tobytes() != pairs[0]["A"].tobytes()
    assert other_seed["B"].tobytes() == pairs[0]["B"].tobytes()
    hazy = voc_derain_transform(items[0].open(), items[0],
                                PrepareConfig(size=64, options={"rain_haze": True,
                                                                "rain": {"airlight": 1.0}}))
    assert np.asarray(hazy["A"]).mean() > np.asarray(pairs[0]["A"]).mean()


def test_voc_derain_recipe_registers_the_seed_splits() -> None:
    recipe = datasets._RECIPES["voc_derain"]
    assert recipe.reader is VocReader and recipe.domains == ("A", "B")
    fractions = recipe.defaults["fractions"]
    assert math.isclose(sum(fractions), 1.0)
    assert [round(f * 12100) for f in fractions] == [6000, 6000, 100]
    assert VOC_DERAIN_ROLES == {"train": "watermark", "val": "surrogate", "test": "test"}
    assert SEED_FRACTIONS == fractions
