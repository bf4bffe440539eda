"""``neuralmark benchmark`` from the command line: reports written, bad names refused."""

from __future__ import annotations

import json
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


def test_benchmark_writes_csv_markdown_and_html(photos, tmp_path, monkeypatch):
    """... and, with ``--card``, the method's card section from that table (the card of a
    stand-in bundle folder: the shipped cards are not the test's to rewrite)."""
    from neuralmark.components.benchmark.cards import BEGIN, END
    from neuralmark.components.methods import registry

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "MODEL_CARD.md").write_text("# spread_spectrum\n")
    monkeypatch.setattr(registry, "shipped_bundle", lambda key: bundle)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "benchmark", "--images", str(photos), "--methods", "spread_spectrum", "--peers", "none",
        "--attacks", "jpeg", "--quick", "--size", "64", "--fpr-keys", "2", "--no-forgery",
        "--model-methods", "none", "--out", str(out), "--device", "cpu",
        "--card", "spread_spectrum"])
    assert result.exit_code == 0, result.output
    card = (bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("# spread_spectrum\n\n" + BEGIN) and card.endswith(END + "\n")
    assert "| spread_spectrum | jpeg | 30.0 |" in card
    again = CliRunner().invoke(app, ["benchmark", "--card", "spread_spectrum", "--from-csv",
                                     str(out / "benchmark.csv")])
    assert again.exit_code == 0, again.output
    assert (bundle / "MODEL_CARD.md").read_text() == card
    assert "| spread_spectrum | neuralmark |" in result.output
    rows = read_csv(out / "benchmark.csv")
    assert list(rows[0]) == list(COLUMNS)
    jpeg = {r["strength"] for r in rows if r["attack"] == "jpeg" and r["metric"] == "bit_accuracy"}
    assert jpeg == {30.0, 60.0, 95.0}
    assert not [r for r in rows if r["attack"] in ("copy", "removal")]
    assert "data:image/png;base64," in (out / "benchmark.html").read_text()
    assert json.loads((out / "benchmark.json").read_text())["command"] == (
        f"neuralmark benchmark --images {photos} --methods spread_spectrum --peers none "
        "--attacks jpeg --model-methods none --quick --size 64 --limit 8 --fpr-keys 2 "
        "--whitebox-steps 20 --no-forgery --device cpu")


def test_model_attacks_fine_tune_noise_is_accepted(photos, tmp_path):
    """``--model-attacks fine_tune_noise`` (swept only when named; once refused for want of
    a sweep) is accepted; output_mark, whose shipped files hold no host, keeps it cheap
    (test_benchmark runs it on trigger_key's shipped host)."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "benchmark", "--images", str(photos), "--methods", "none", "--peers", "none",
        "--quick", "--size", "64", "--no-forgery", "--model-methods", "output_mark",
        "--model-attacks", "fine_tune_noise", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (row,) = [r for r in read_csv(out / "benchmark.csv") if r["family"] == "model"]
    assert row["method"] == "output_mark" and row["metric"] == "unavailable"
    assert "--model-attacks fine_tune_noise" in json.loads(
        (out / "benchmark.json").read_text())["command"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--attacks", "sharpen", "unknown attack 'sharpen'"),
    ("--peers", "stegastamp", "unknown peer 'stegastamp'"),
    ("--methods", "nosuch", "unknown method 'nosuch'"),
    ("--model-attacks", "melt", "unknown model attack 'melt'"),
    ("--model-methods", "pgd_signer", "content method, not a model method"),
    ("--resolutions", "256,big", "--resolutions takes comma-separated whole numbers"),
    ("--from-csv", "nowhere.csv", "--from-csv only writes model cards"),
])
def test_bad_names_are_one_line_and_exit_2(photos, tmp_path, option, value, message):
    result = CliRunner().invoke(app, ["benchmark", "--images", str(photos), option, value,
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_card_from_a_csv_that_is_not_there_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--card", "pgd_signer", "--from-csv",
                                      str(tmp_path / "nowhere" / "benchmark.csv")])
    assert result.exit_code == 2
    assert "no benchmark table at" in result.output
