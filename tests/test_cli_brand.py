"""``neuralmark brand`` / ``brand-verify``: folders, resumability, bad input, exit codes.

Driven with an untrained W (close to the static mark) whose detector is calibrated here:
mechanics, not accuracy (the shipped bundle's figures are in its model card).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.methods import build
from neuralmark.components.methods.registry import method_class
from neuralmark.components.methods.visible_gan.folder import STATE_DIR, brand_folder
from neuralmark.components.methods.visible_gan.method import default_null_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    method = build("visible_gan", {**method_class("visible_gan").smoke_config,
                                   "detect_size": 64, "mark_resolution": 32,
                                   "calibration_scores": 1000, "fpr": 0.01})
    method.calibrate(default_null_images(64, count=32, seed=3))
    return method.to_bundle(tmp_path_factory.mktemp("vg") / "bundle")


@pytest.fixture()
def photos(tmp_path, photo) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo[:160, :200]).save(folder / "a.png")
    Image.fromarray(photo[200:400, 100:260]).save(folder / "b.jpg", quality=95)
    return folder


def _logo(path: Path, alpha: bool, size: int = 24) -> Path:
    arr = np.zeros((size, size, 4 if alpha else 3), np.uint8)
    arr[..., :3] = 255                                 # white background
    arr[size // 4:-size // 4, size // 4:-size // 4, :3] = (220, 20, 20)
    if alpha:
        arr[..., 3] = 0
        arr[size // 4:-size // 4, size // 4:-size // 4, 3] = 255
    Image.fromarray(arr).save(path)
    return path


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_brand_a_folder_then_verify_it(bundle, photos, tmp_path):
    out = tmp_path / "out"
    res = _run("brand", "--bundle", str(bundle), str(photos), str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["a.png", "b.jpg"]
    assert "branded 2, skipped 0" in res.output
    assert "2 different sizes" in res.output           # mixed sizes: a stated conversion
    for name in ("a.png", "b.jpg"):
        assert Image.open(out / name).size == Image.open(photos / name).size
    assert (out / STATE_DIR / "weights.safetensors").is_file()

    res = _run("brand-verify", "--json", str(out))      # uses OUT/.neuralmark-brand
    records = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [r["status"] for r in records] == ["detected", "detected"], res.output
    assert res.exit_code == 0
    res = _run("brand-verify", "--bundle", str(bundle), str(photos / "a.png"))
    assert res.exit_code == 1 and "not detected" in res.output


def test_rerun_skips_what_is_done(bundle, photos, tmp_path):
    out = tmp_path / "out"
    assert _run("brand", "--bundle", str(bundle), str(photos), str(out)).exit_code == 0
    (out / "b.jpg").unlink()                            # as if the first run was cut short
    stamp = (out / "a.png").stat().st_mtime_ns
    res = _run("brand", "--bundle", str(bundle), str(photos), str(out))
    assert res.exit_code == 0, res.output
    assert "branded 1, skipped 1" in res.output and "resuming" in res.output
    assert (out / "a.png").stat().st_mtime_ns == stamp and (out / "b.jpg").is_file()


def test_another_mark_on_rerun_is_refused(bundle, photos, tmp_path):
    out = tmp_path / "out"
    assert _run("brand", "--bundle", str(bundle), str(photos), str(out)).exit_code == 0
    logo = _logo(tmp_path / "logo.png", alpha=True)
    res = _run("brand", "--bundle", str(bundle), "--mark", str(logo), str(photos), str(out))
    assert res.exit_code == 2 and "another mark" in res.output


def test_mark_without_alpha_is_converted_and_said(bundle, photos, tmp_path):
    logo = _logo(tmp_path / "logo.jpg", alpha=False)
    out = tmp_path / "out"
    res = _run("brand", "--bundle", str(bundle), "--mark", str(logo), str(photos), str(out))
    assert res.exit_code == 0, res.output
    assert "no alpha channel" in res.output and "transparent" in res.output
    res = _run("brand-verify", "--json", str(out))
    assert res.exit_code == 0, res.output


def test_mark_larger_than_the_images_is_scaled_and_said(bundle, photos, tmp_path):
    logo = _logo(tmp_path / "big.png", alpha=True, size=400)
    res = _run("brand", "--bundle", str(bundle), "--mark", str(logo), str(photos),
               str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert "larger than 2 image(s)" in res.output and "scaled down" in res.output


@pytest.mark.parametrize("logo", ["missing.png", "broken.png", "clear.png"])
def test_bad_marks_are_refused_before_any_output(bundle, photos, tmp_path, logo):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "clear.png")
    out = tmp_path / "out"
    res = _run("brand", "--bundle", str(bundle), "--mark", str(tmp_path / logo), str(photos),
               str(out))
    assert res.exit_code == 2
    assert any(w in res.output for w in ("no such file", "not a readable image",
                                         "fully transparent")), res.output
    assert not out.exists()


def test_unreadable_files_are_skipped_and_reported(bundle, photos, tmp_path):
    (photos / "c.png").write_bytes(b"\x89PNG truncated")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8) + 90).save(photos / "tiny.png")
    out = tmp_path / "out"
    res = _run("brand", "--bundle", str(bundle), str(photos), str(out))
    assert res.exit_code == 2
    assert "unreadable 2" in res.output and "c.png" in res.output and "tiny.png" in res.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["a.png", "b.jpg"]
    assert not list(out.glob(".*.tmp*"))               # nothing half-written


def test_output_inside_input_is_refused(bundle, photos, tmp_path):
    for out in (photos / "branded", photos):
        res = _run("brand", "--bundle", str(bundle), str(photos), str(out))
        assert res.exit_code == 2
        assert "inside IN" in res.output or "OUT is IN" in res.output
    assert not (photos / "branded").exists()


def test_python_api(bundle, photos, tmp_path):
    from neuralmark.components.methods.registry import load_bundle

    seen = []
    report = brand_folder(load_bundle(bundle), photos, tmp_path / "out",
                          on_file=lambda p, status, msg: seen.append((p.name, status)))
    assert report.ok and len(report.branded) == 2
    assert seen == [("a.png", "branded"), ("b.jpg", "branded")]


def test_the_shipped_model_brands_a_real_photo_after_install(tmp_path, photo):
    from neuralmark.components.methods.registry import load_bundle, shipped_bundle

    shipped = shipped_bundle("visible_gan")
    assert shipped is not None, "components/pretrained/visible_gan is missing"
    for name in ("config.json", "weights.safetensors", "state.json", "MODEL_CARD.md"):
        assert (shipped / name).is_file()
    assert (shipped / "weights.safetensors").stat().st_size < 5 * 2**20
    card = (shipped / "MODEL_CARD.md").read_text()
    for needle in ("## Training", "FPR", "| Network | Baseline | Blend | S | O | D | DeepStamp |"):
        assert needle in card, needle
    assert load_bundle(shipped).calibration["threshold_statistic"] is not None
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo[0:256, 128:384]).save(src / "astronaut.png")
    res = _run("brand", str(src), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert _run("brand-verify", str(tmp_path / "out")).exit_code == 0
    assert _run("brand-verify", str(src / "astronaut.png")).exit_code == 1


def test_brand_commands_import_no_mlops_package(bundle, photos, tmp_path):
    from tests.test_cli import MLOPS, _run_commands, _top

    out = tmp_path / "out"
    codes, modules = _run_commands(tmp_path, [
        ["brand", "--bundle", str(bundle), str(photos), str(out)],
        ["brand-verify", str(out)]])
    assert codes == [0, 0]
    assert not _top(modules, MLOPS), "brand / brand-verify must not load an MLOps package"
