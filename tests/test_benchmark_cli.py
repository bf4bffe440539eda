"""``neuralmark benchmark`` from the command line: reports written, bad names refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.benchmark import COLUMNS
from neuralmark.components.benchmark.report import read_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def photos(tmp_path, photo) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo[:200, :200]).save(folder / "a.png")
    Image.fromarray(photo[200:400, 150:350]).save(folder / "b.png")
    return folder


def test_benchmark_writes_csv_markdown_and_html(photos, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "benchmark", "--images", str(photos), "--methods", "spread_spectrum", "--peers", "none",
        "--attacks", "jpeg", "--quick", "--size", "64", "--fpr-keys", "2", "--no-forgery",
        "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "| spread_spectrum | neuralmark |" in result.output
    rows = read_csv(out / "benchmark.csv")
    assert list(rows[0]) == list(COLUMNS)
    jpeg = {r["strength"] for r in rows if r["attack"] == "jpeg" and r["metric"] == "bit_accuracy"}
    assert jpeg == {30.0, 60.0, 95.0}
    assert not [r for r in rows if r["attack"] in ("copy", "removal")]
    assert "data:image/png;base64," in (out / "benchmark.html").read_text()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--attacks", "sharpen", "unknown attack 'sharpen'"),
    ("--peers", "stegastamp", "unknown peer 'stegastamp'"),
    ("--methods", "nosuch", "unknown method 'nosuch'"),
])
def test_bad_names_are_one_line_and_exit_2(photos, tmp_path, option, value, message):
    result = CliRunner().invoke(app, ["benchmark", "--images", str(photos), option, value,
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()
