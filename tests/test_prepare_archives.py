"""Archives read in place: VOC's published ``.tar`` streamed, zips opened once per process."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.prepare import prepare_dataset
from neuralmark.components.data.readers import archives
from neuralmark.components.data.readers.base import DatasetLayoutError
from neuralmark.components.data.readers.voc import VocReader
from tests.test_readers_photo import VOC_TRAIN, VOC_VAL, jpeg_bytes

ONE = PrepareConfig(size=32, workers=1, fractions=(0.5, 0.25, 0.25))
IDS = sorted(VOC_TRAIN + VOC_VAL)


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1336694400  # 11 May 2012
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tf.addfile(info, io.BytesIO(data))


@pytest.fixture()
def voc_tar(tmp_path: Path) -> Path:
    """``VOCtrainval_11-May-2012.tar`` in the published layout (uncompressed, VOCdevkit/…).

    JPEGImages come before ImageSets (the reader must not depend on member order),
    with the other folders of the real archive around them and one unlisted JPEG.
    """
    path = tmp_path / "VOCtrainval_11-May-2012.tar"
    root = "VOCdevkit/VOC2012/"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for folder in ("VOCdevkit/", root, root + "Annotations/", root + "JPEGImages/",
                       root + "ImageSets/", root + "ImageSets/Main/",
                       root + "ImageSets/Segmentation/", root + "SegmentationClass/"):
            _add(tf, folder)
        _add(tf, root + "Annotations/2008_000008.xml", b"<annotation/>")
        for k, item_id in enumerate([*VOC_TRAIN, *VOC_VAL, "2011_000001"]):
            _add(tf, f"{root}JPEGImages/{item_id}.jpg",
                 jpeg_bytes((500, 375 - 10 * k), (20 * k, 120, 60)))
        main = root + "ImageSets/Main/"
        _add(tf, main + "aeroplane_train.txt", b"2008_000008 -1\n")
        _add(tf, main + "train.txt", ("\n".join(VOC_TRAIN) + "\n").encode())
        _add(tf, main + "trainval.txt", ("\n".join(IDS) + "\n").encode())
        _add(tf, main + "val.txt", ("\n".join(VOC_VAL) + "\n").encode())
        _add(tf, root + "ImageSets/Segmentation/train.txt", b"2008_000008\n")
        _add(tf, root + "SegmentationClass/2008_000008.png", b"\x89PNG")
    return path


def _rows_without_source(manifest: str) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return [{k: v for k, v in row.items() if k != "source"} for row in csv.DictReader(f)]


def test_voc_tar_streams_the_same_items_as_its_extraction(voc_tar: Path, tmp_path: Path):
    items = list(VocReader().items(voc_tar))
    assert [i.item_id for i in items] == IDS
    first = items[0]
    assert first.location == f"tar://{voc_tar.resolve()}!VOCdevkit/VOC2012/JPEGImages/{IDS[0]}.jpg"
    assert first.span is not None and first.extra == {"voc_split": "val"}
    assert {i.extra["voc_split"] for i in items if i.item_id in VOC_TRAIN} == {"train"}
    with tarfile.open(voc_tar) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    folder_items = list(VocReader().items(tmp_path / "extracted"))
    assert [(i.item_id, i.extra) for i in folder_items] == [(i.item_id, i.extra) for i in items]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(items, folder_items, strict=True))
    archives.close_archives()

    from_tar = prepare_dataset("voc_derain", voc_tar, tmp_path / "a", ONE)
    from_folder = prepare_dataset("voc_derain", tmp_path / "extracted", tmp_path / "b", ONE)
    assert from_tar.counts == from_folder.counts and not from_tar.quarantined
    assert _rows_without_source(from_tar.manifest) == _rows_without_source(from_folder.manifest)
    with open(from_tar.manifest, newline="") as f:
        sources = {row["source"] for row in csv.DictReader(f)}
    assert f"VOCtrainval_11-May-2012.tar!VOCdevkit/VOC2012/JPEGImages/{IDS[0]}.jpg" in sources
    assert archives.open_archives() == 0  # the engine closed what it opened


def test_voc_tar_is_opened_once_for_all_items(voc_tar: Path, tmp_path: Path, monkeypatch):
    opened: list[str] = []
    real_open = archives.os.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(archives.os, "open", counting_open)
    report = prepare_dataset("voc_derain", voc_tar, tmp_path / "out", ONE)
    assert report.items == len(IDS)
    # os.open is the module's: keep the opens of the archive (tmp PNGs are opened too)
    assert [p for p in opened if p.endswith(".tar")] == [str(voc_tar.resolve())]


def test_bad_voc_tars_say_what_was_expected_and_found(voc_tar: Path, tmp_path: Path):
    data = voc_tar.read_bytes()
    cut = data.index(b"2009_000001.jpg") + 1024  # inside a JPEG's data
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[:cut])
    with pytest.raises(DatasetLayoutError, match=r"a truncated archive: VOCdevkit/VOC2012/"
                                                  r"JPEGImages/2009_000001\.jpg ends at byte \d+, "
                                                  rf"the file has {cut} bytes"):
        list(VocReader().items(truncated))
    other = tmp_path / "photos.tar"
    with tarfile.open(other, "w") as tf:
        _add(tf, "holiday/beach.jpg", jpeg_bytes((8, 8), (1, 2, 3)))
    with pytest.raises(DatasetLayoutError, match=r"expected VOCdevkit/VOC2012/JPEGImages.*found "
                                                  r"a tar with no VOC2012/JPEGImages/\*\.jpg "
                                                  r"\(members: holiday/beach\.jpg\)"):
        list(VocReader().items(other))
    not_tar = tmp_path / "notes.tar"
    not_tar.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(DatasetLayoutError, match="an unreadable or truncated tar"):
        list(VocReader().items(not_tar))


def _mir_zip(path: Path, n: int) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(1, n + 1):
            zf.writestr(f"mirflickr/im{i}.jpg", jpeg_bytes((48 + i, 40), (40 * i % 255, 90, 160)))
        zf.writestr("mirflickr/doc/README.txt", "MIRFLICKR-25000")
    return path


def test_zip_is_opened_once_per_process_not_per_item(tmp_path: Path, monkeypatch):
    archive = _mir_zip(tmp_path / "mirflickr25k.zip", 6)
    opened: list[str] = []
    real_zipfile = archives.zipfile.ZipFile

    def counting_zipfile(file, *args, **kwargs):
        opened.append(str(file))
        return real_zipfile(file, *args, **kwargs)

    monkeypatch.setattr(archives.zipfile, "ZipFile", counting_zipfile)
    report = prepare_dataset("mirflickr25k", archive, tmp_path / "out",
                             PrepareConfig(size=16, workers=1))
    assert report.items == 6 and not report.quarantined
    assert opened == [str(archive.resolve())]  # listing and all six reads share one handle
    assert archives.open_archives() == 0


def test_open_archives_stay_bounded(tmp_path: Path):
    paths = [_mir_zip(tmp_path / f"z{i}.zip", 1) for i in range(archives.MAX_OPEN + 3)]
    try:
        for path in paths:
            assert archives.read_zip_member(str(path), "mirflickr/im1.jpg")[:2] == b"\xff\xd8"
            assert archives.open_archives() <= archives.MAX_OPEN
        # the most recent ones are the ones kept; an evicted one reopens transparently
        assert archives.read_zip_member(str(paths[0]), "mirflickr/im1.jpg")[:2] == b"\xff\xd8"
    finally:
        archives.close_archives()
    assert archives.open_archives() == 0
    with pytest.raises(EOFError, match="truncated archive"):
        try:
            archives.read_tar_span(str(paths[0]), 10, 10**6)
        finally:
            archives.close_archives()
