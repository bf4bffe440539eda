"""``neuralmark extract`` / ``audit`` / ``protect`` (issue #6) on a tiny output_mark bundle.

The bundle is trained once per module with the method's smoke config (seconds,
one thread): its extractor is barely trained, so these tests check the
contract — files written, exit codes agreeing with the verdicts, bad input
named — not detection quality (``tests/test_output_mark.py`` does that).
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
from neuralmark.components.data.pairs import build_pairs
from neuralmark.components.methods import build

KEY = "neuralmark-eval"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, photo) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        clean = torch.from_numpy(photo[:256, :256].copy()).permute(2, 0, 1).float() / 255
        crops = torch.stack([clean[:, y:y + 64, x:x + 64] for y in (0, 96, 192)
                             for x in (0, 96, 192)])                          # 9 3 64 64
        method = build("output_mark", type(build("output_mark")).smoke_config)
        method.fit({"train": build_pairs(crops, "derain", 0)})
        return method.to_bundle(tmp_path_factory.mktemp("om") / "bundle")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _png(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_extract_saves_the_logo_and_exits_like_verify(runner, bundle, tmp_path):
    image = _png(tmp_path / "out.png", 40, 56, 0)
    result = runner.invoke(app, ["extract", str(image), "--key", KEY, "--bundle", str(bundle),
                                 "--json"])
    record = json.loads(result.stdout)
    assert result.exit_code == (0 if record["detected"] else 1), result.output
    assert record["status"] in ("detected", "not_detected")
    assert "NC" in record["reason"] and record["extra"]["nc"] == pytest.approx(record["score"])
    logo = Path(record["extra"]["logo_estimate"])
    assert logo == tmp_path / "out.logo.png" and logo.is_file()
    assert Image.open(logo).size == (32, 32)  # the working size of the smoke config

    out = tmp_path / "elsewhere" / "estimate.png"
    result = runner.invoke(app, ["extract", str(image), "--key", KEY, "--bundle", str(bundle),
                                 "--out", str(out)])
    assert result.exit_code in (0, 1) and out.is_file()
    assert "NC" in result.output and "logo estimate saved" in result.output


def test_extract_unreadable_image_exits_2(runner, bundle, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = runner.invoke(app, ["extract", str(bad), "--key", KEY, "--bundle", str(bundle)])
    assert result.exit_code == 2 and "unreadable" in result.output
    assert not (tmp_path / "broken.logo.png").exists()
    shipped = runner.invoke(app, ["extract", str(bad), "--key", KEY])  # the shipped bundle
    assert shipped.exit_code == 2 and "unreadable" in shipped.output


def test_extract_refuses_a_bundle_of_another_method(runner, tmp_path):
    other = build("spread_spectrum").to_bundle(tmp_path / "ss")
    image = _png(tmp_path / "x.png", 64, 64, 1)
    result = runner.invoke(app, ["extract", str(image), "--key", KEY, "--bundle", str(other)])
    assert result.exit_code == 2 and "not output_mark" in result.output


def test_audit_mixed_sizes_and_a_corrupt_file(runner, bundle, tmp_path):
    suspect = tmp_path / "suspect"
    suspect.mkdir()
    for i, (h, w) in enumerate([(32, 32), (48, 40), (96, 128), (64, 64)]):
        _png(suspect / f"o{i}.png", h, w, i)
    (suspect / "corrupt.png").write_bytes(b"GIF89a truncated")
    report = tmp_path / "report"
    result = runner.invoke(app, ["audit", "--suspect-outputs", str(suspect), "--key", KEY,
                                 "--bundle", str(bundle), "--report", str(report), "--json"])
    record = json.loads(result.stdout)
    assert result.exit_code == (0 if record["detected"] else 1), result.output
    assert record["extra"]["n_outputs"] == 4 and len(record["extra"]["nc"]) == 4
    assert record["files"] == ["o0.png", "o1.png", "o2.png", "o3.png"]
    assert list(record["unreadable"]) == ["corrupt.png"]
    for name in ("logos.png", "nc_histogram.png", "verdict.json", "verdict.md"):
        assert (report / name).is_file(), name
    md = (report / "verdict.md").read_text()
    assert "corrupt.png" in md and "o1.png" in md and "Verdict" in md
    saved = json.loads((report / "verdict.json").read_text())
    assert saved["extra"]["nc"] == record["extra"]["nc"]
    assert Image.open(report / "logos.png").size[0] > 100


def test_audit_with_nothing_readable_exits_2(runner, bundle, tmp_path):
    suspect = tmp_path / "junk"
    suspect.mkdir()
    (suspect / "a.png").write_bytes(b"nope")
    (suspect / "b.jpg").write_bytes(b"")
    report = tmp_path / "r"
    result = runner.invoke(app, ["audit", "--suspect-outputs", str(suspect), "--key", KEY,
                                 "--bundle", str(bundle), "--report", str(report)])
    assert result.exit_code == 2 and "unreadable" in result.output
    assert set(json.loads((report / "verdict.json").read_text())["unreadable"]) == {"a.png",
                                                                                    "b.jpg"}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["audit", "--suspect-outputs", str(empty), "--key", KEY,
                                 "--bundle", str(bundle)])
    assert result.exit_code == 2 and "no image files" in result.output


def test_protect_refuses_a_logo_that_is_not_an_image(runner, tmp_path):
    notes = tmp_path / "logo.png"
    notes.write_text("this is a text file with a .png name")
    result = runner.invoke(app, ["protect", "--task", "derain", "--logo", str(notes)])
    assert result.exit_code == 2 and "not an image" in result.output
    result = runner.invoke(app, ["protect", "--task", "denoise"])
    assert result.exit_code == 2 and "derain" in result.output


def test_protect_task_specific_sets_the_variant(runner, monkeypatch):
    """--task-specific reaches the pipeline as config.task_specific (run stubbed out here;
    the real run is measured in the pipeline's docstring)."""
    import neuralmark.pipelines.output_mark as pom

    seen = {}

    def fake_run(task, profile, config_path, overrides, callbacks=None):
        seen.update(task=task, profile=profile, overrides=overrides)
        return {"model_name": "neuralmark-output_mark", "summary": {}, "tables": "| t |"}

    monkeypatch.setattr(pom, "run_output_mark", fake_run)
    result = runner.invoke(app, ["protect", "--task", "debone", "--task-specific"])
    assert result.exit_code == 0, result.output
    assert seen == {"task": "debone", "profile": "tiny",
                    "overrides": {"config": {"task_specific": True}}}
    runner.invoke(app, ["protect", "--task", "derain"])
    assert seen["overrides"] == {}


def test_protect_seeds_reach_the_matrix_and_print_the_spread(runner, monkeypatch):
    """--seeds 0,1,2 becomes matrix.seeds; the interval of the matrix mean is printed (run
    stubbed out; the seed spread itself: tests/test_output_mark_seeds.py)."""
    import neuralmark.pipelines.output_mark as pom

    seen = {}
    k = "spread/stage2/matrix_mean/success_rate"

    def fake_run(task, profile, config_path, overrides, callbacks=None):
        seen.update(overrides=overrides)
        return {"model_name": "neuralmark-output_mark", "tables": "| t |",
                "summary": {f"{k}/mean": 0.62, f"{k}/ci_low": 0.41, f"{k}/ci_high": 0.83}}

    monkeypatch.setattr(pom, "run_output_mark", fake_run)
    result = runner.invoke(app, ["protect", "--task", "derain", "--seeds", "0, 1,2"])
    assert result.exit_code == 0, result.output
    assert seen["overrides"] == {"matrix": {"seeds": [0, 1, 2]}}
    assert "matrix mean over seeds (95% interval): stage 2 62% [41, 83]" in result.output
    for bad, why in (("0,x", "integers"), ("3", "two distinct"), ("1,1", "two distinct")):
        result = runner.invoke(app, ["protect", "--task", "derain", "--seeds", bad])
        assert result.exit_code == 2 and why in result.output, result.output
