"""Great Expectations validation of manifests: accepts good data, names what is broken."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from neuralmark.components.data.manifest import ManifestRow, read_manifest, write_manifest
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
from neuralmark.integrations.validation import (
    DataValidationError,
    DataValidationReport,
    validate_manifest,
    write_report,
)

TINY = SampleDataConfig(size=64, crops_per_photo=1, n_procedural=6)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_sample_dataset(tmp_path_factory.mktemp("val") / "tiny", TINY)


@pytest.fixture()
def dataset(pristine, tmp_path) -> Path:
    """A private copy of the tiny dataset to break; returns its manifest."""
    root = tmp_path / "copy"
    shutil.copytree(pristine.parent, root)
    return root / "manifest.csv"


def _rewrite(manifest: Path, change: Callable[[list[ManifestRow]], list[ManifestRow]]) -> None:
    write_manifest(change(read_manifest(manifest)), manifest)


def _replace_file(manifest: Path, row: ManifestRow, data: bytes, **fields) -> None:
    """Overwrite one row's file and record its new sha256 (so only ``fields`` differ)."""
    (manifest.parent / row.path).write_bytes(data)
    new = dataclasses.replace(row, sha256=hashlib.sha256(data).hexdigest(), **fields)
    _rewrite(manifest, lambda rows: [new if r.path == row.path else r for r in rows])


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def test_good_manifest_passes_and_report_is_written(dataset, tmp_path):
    report = validate_manifest(dataset)
    assert report.success, report.failed()
    assert report.failed() == []
    assert {r["expectation"] for r in report.results} >= {
        "files_readable", "mode_rgb", "width_at_least_min_size", "height_at_least_min_size",
        "sha256_unique", "sha256_matches_file", "split_known", "group_in_one_split",
        "path_not_null", "group_not_null", "every_split_non_empty",
    }
    assert report.stats["rows"] == len(read_manifest(dataset))
    html_path = write_report(report, tmp_path / "reports")
    assert html_path.name == "validation.html" and "PASSED" in html_path.read_text()
    saved = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert saved["success"] is True and len(saved["results"]) == len(report.results)
    assert DataValidationReport.from_dict(saved).results == report.results


def test_truncated_png_is_unreadable(dataset):
    row = read_manifest(dataset)[0]
    data = (dataset.parent / row.path).read_bytes()
    _replace_file(dataset, row, data[: len(data) // 2])
    report = validate_manifest(dataset)
    assert report.failed() == ["files_readable"]
    readable = next(r for r in report.results if r["expectation"] == "files_readable")
    assert readable["details"]["paths"] == [row.path]
    assert "FAILED" in report.html and "files_readable" in report.html


def test_grayscale_file_fails_mode(dataset):
    row = read_manifest(dataset)[1]
    _replace_file(dataset, row, _png("L", (64, 64)), mode="L")
    assert validate_manifest(dataset).failed() == ["mode_rgb"]


def test_too_small_image_fails_size(dataset):
    row = read_manifest(dataset)[2]
    _replace_file(dataset, row, _png("RGB", (32, 40)), width=32, height=40)
    report = validate_manifest(dataset, min_size=64)
    assert report.failed() == ["width_at_least_min_size", "height_at_least_min_size"]
    assert validate_manifest(dataset, min_size=32).success


def test_duplicate_hash_fails_uniqueness(dataset):
    row = read_manifest(dataset)[0]
    copy = dataclasses.replace(row, path=f"{row.split}/duplicate.png")
    shutil.copyfile(dataset.parent / row.path, dataset.parent / copy.path)
    _rewrite(dataset, lambda rows: rows + [copy])
    report = validate_manifest(dataset)
    assert report.failed() == ["sha256_unique"]
    details = next(r for r in report.results if r["expectation"] == "sha256_unique")["details"]
    assert set(details["paths"]) == {row.path, copy.path}


def test_group_spread_over_two_splits_fails_disjointness(dataset):
    rows = read_manifest(dataset)
    a = next(r for r in rows if r.split == "train")
    b = next(r for r in rows if r.split == "test")
    _rewrite(dataset, lambda rs: [dataclasses.replace(r, group=a.group) if r == b else r
                                  for r in rs])
    report = validate_manifest(dataset)
    assert report.failed() == ["group_in_one_split"]
    error = DataValidationError(report)
    assert error.report is report and "group_in_one_split" in str(error)


def test_sha_mismatch_and_empty_split_are_named(dataset):
    def change(rows: list[ManifestRow]) -> list[ManifestRow]:
        out = [dataclasses.replace(r, split="train") if r.split == "val" else r for r in rows]
        out[0] = dataclasses.replace(out[0], sha256="0" * 64)
        return out

    _rewrite(dataset, change)
    report = validate_manifest(dataset)
    assert report.failed() == ["sha256_matches_file", "every_split_non_empty"]
    empty = next(r for r in report.results if r["expectation"] == "every_split_non_empty")
    assert empty["details"]["partial_missing_list"] == ["val"]
    json.dumps(report.to_dict(include_html=True))  # JSON-able as promised


def test_missing_file_and_path_fail(dataset):
    rows = read_manifest(dataset)
    (dataset.parent / rows[0].path).unlink()
    report = validate_manifest(dataset)
    assert {"files_readable", "sha256_matches_file"} <= set(report.failed())
    text = dataset.read_text().splitlines()
    text[1] = "," + text[1].split(",", 1)[1]  # blank path in the first data row
    dataset.write_text("\n".join(text) + "\n")
    assert "path_not_null" in validate_manifest(dataset).failed()


def test_missing_column_is_named_not_crashed(dataset):
    lines = dataset.read_text().splitlines()
    dataset.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop group
    report = validate_manifest(dataset)
    assert {"manifest_columns", "group_not_null"} <= set(report.failed())
    missing = next(r for r in report.results if r["expectation"] == "group_not_null")
    assert "group" in missing["details"]["exception"]
