"""``neuralmark stamp`` / ``scan``: files and folders, batched scanning, three-way exit codes.

Driven with an anti_forward bundle trained for a few steps here (mechanics, not
accuracy: the shipped weights' accuracy is tested in tests/test_shipped.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.methods import build
from neuralmark.components.methods.registry import method_class


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    method = build("anti_forward", method_class("anti_forward").smoke_config)
    images = torch.rand(8, 3, 64, 64)
    method.fit({"train": images[:6], "val": images[6:]})
    return method.to_bundle(tmp_path_factory.mktemp("af") / "bundle")


@pytest.fixture()
def photos(tmp_path, photo) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo[:160, :200]).save(folder / "a.png")
    Image.fromarray(photo[200:400, 100:260]).save(folder / "b.jpg", quality=95)
    return folder


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_stamp_folder_then_scan_it(bundle, photos, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["stamp", "--bundle", str(bundle), str(photos), str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg"]
    assert res.output.count("PSNR") == 2
    for name in ("a.png", "b.jpg"):
        assert Image.open(out / name).size == Image.open(photos / name).size

    res = CliRunner().invoke(app, ["scan", "--bundle", str(bundle), "--json", "--no-smoothing",
                                   "--batch-size", "2", str(out), str(photos / "a.png")])
    records = _json_lines(res.output)
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.jpg", "a.png"]
    assert all(r["status"] in ("detected", "not_detected") for r in records)
    assert all(0.0 <= r["score"] <= 1.0 for r in records)
    assert res.exit_code == (0 if all(r["detected"] for r in records) else 1)


def test_scan_reports_unreadable_files_and_exits_2(bundle, photos):
    (photos / "broken.png").write_bytes((photos / "a.png").read_bytes()[:200])
    res = CliRunner().invoke(app, ["scan", "--bundle", str(bundle), "--json", str(photos)])
    records = {Path(r["path"]).name: r for r in _json_lines(res.output)}
    assert res.exit_code == 2
    assert records["broken.png"]["status"] == "unreadable"
    assert "broken.png" in records["broken.png"]["reason"]
    assert records["a.png"]["status"] != "unreadable"


def test_too_few_noise_samples_abstain_never_detect(bundle, photos):
    res = CliRunner().invoke(app, ["scan", "--bundle", str(bundle), "--json", "--smoothing",
                                   "--samples", "1", str(photos / "a.png")])
    (record,) = _json_lines(res.output)
    assert res.exit_code == 1 and record["detected"] is False
    assert record["certified_radius"] in (None, 0.0) and record["payload"] is None


def test_stamp_refuses_bad_settings(bundle, photos, tmp_path):
    res = CliRunner().invoke(app, ["stamp", "--bundle", str(bundle), "--strength", "2",
                                   str(photos / "a.png"), str(tmp_path / "x.png")])
    assert res.exit_code == 2 and not (tmp_path / "x.png").exists()
    res = CliRunner().invoke(app, ["stamp", "--bundle", str(bundle), str(photos / "a.png"),
                                   str(photos / "a.png")])
    assert res.exit_code == 2 and "OUT is IN" in res.output
