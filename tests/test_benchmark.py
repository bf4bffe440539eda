"""``components/benchmark``: a real peer (invisible-watermark's dwtDct) and shipped methods on
a few real photos, the tidy table, the reports and the MLflow run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from neuralmark.components.benchmark import COLUMNS, BenchmarkSettings, load_folder
from neuralmark.components.benchmark import peers as peers_mod
from neuralmark.components.benchmark.report import headline, read_csv, to_html, write_reports
from neuralmark.components.benchmark.runner import run_benchmark
from neuralmark.components.benchmark.sweeps import QUICK_SWEEPS, suite
from neuralmark.components.errors import InputError
from neuralmark.components.imageio import load_image
from neuralmark.components.methods import WatermarkKey, load_bundle
from neuralmark.components.methods.registry import shipped_bundle

pytest.importorskip("imwatermark", reason="the peers extra: pip install -e '.[peers]'")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATTACKS = ["jpeg", "rotate"]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Three real photos, one unreadable file and one too small for the benchmark size."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    Image.fromarray(data.astronaut()[:40, :60]).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


@pytest.fixture(scope="module")
def result(photo_dir, tmp_path_factory):
    """One quick benchmark: two shipped/learning-free methods, a model method, dwtDct and a
    peer whose package is missing (rivaGan pointed at a module that does not exist)."""
    missing = peers_mod.PeerSpec("rivaGan", "invisible-watermark", ("imwatermark_absent",), 256)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(peers_mod.PEERS, "rivaGan", missing)
        settings = BenchmarkSettings(
            methods=["visible_gan", "spread_spectrum", "trigger_key"],
            peers=["dwtDct", "rivaGan"], attacks=ATTACKS, quick=True, size=256, limit=5,
            fpr_keys=5, batch_sizes=[1], resolutions=[128, 256], device="cpu")
        return run_benchmark(settings, load_folder(photo_dir, size=256, limit=5))


def _rows(result, **match):
    return [r for r in result.rows if all(r[k] == v for k, v in match.items())]


def test_suite_is_none_then_each_sweep_and_names_are_checked():
    s = suite(["rotation", "jpeg"], quick=True)
    assert s == [("none", [None]), ("rotate", QUICK_SWEEPS["rotate"]),
                 ("jpeg", QUICK_SWEEPS["jpeg"])]
    with pytest.raises(InputError, match="webp.*no strength sweep"):
        suite(["webp"])
    with pytest.raises(InputError, match="unknown attack 'sharpen'"):
        suite(["sharpen"])


def test_unreadable_and_tiny_photos_are_rows(result):
    skipped = {r["note"].split(":")[0]: r["note"] for r in _rows(result, metric="skipped_image")}
    assert set(skipped) == {"broken.jpg", "tiny.png"}
    assert "60×40" in skipped["tiny.png"] and "256" in skipped["tiny.png"]
    assert result.photos == ["astronaut.png", "chelsea.png", "coffee.png"]


def test_missing_peer_and_model_method_are_rows_not_crashes(result):
    (riva,) = _rows(result, method="rivaGan")
    assert riva["metric"] == "unavailable" and riva["value"] is None
    assert "not installed: invisible-watermark" in riva["note"] and "[peers]" in riva["note"]
    (model,) = _rows(result, method="trigger_key")
    assert "model method" in model["note"]


def test_every_curve_has_every_strength(result):
    for method in ("visible_gan", "spread_spectrum", "dwtDct"):
        for metric in ("detection_rate", "false_positive_rate"):
            seen = defaultdict(set)
            for r in _rows(result, method=method, metric=metric):
                seen[r["attack"]].add(r["strength"])
            for attack in ATTACKS:
                assert seen[attack] == {float(s) for s in QUICK_SWEEPS[attack]}, (method, attack)
    acc = {r["strength"] for r in _rows(result, method="dwtDct", attack="jpeg",
                                        metric="bit_accuracy")}
    assert acc == {30.0, 60.0, 95.0}


def test_peer_rows_measure_a_real_mark(result):
    (psnr,) = _rows(result, method="dwtDct", metric="psnr")
    assert 30 < psnr["value"] < 50 and psnr["n"] == 3
    (fpr,) = _rows(result, method="dwtDct", metric="fpr_clean")
    assert fpr["n"] == 15 and "95% CI" in fpr["note"]
    (clean_acc,) = _rows(result, method="dwtDct", label="none", metric="bit_accuracy")
    assert clean_acc["value"] > 0.8  # the mark is there before any attack
    small = _rows(result, method="dwtDct", attack="timing_resolution", strength=128.0)
    assert small and all(r["value"] is None and "256 px" in r["note"] for r in small)
    assert _rows(result, method="dwtDct", attack="timing_resolution", strength=256.0,
                 metric="embed_ms")[0]["value"] > 0


def test_forgery_rows_say_how_or_why_not(result):
    (af,) = _rows(result, method="visible_gan", metric="forgery_success_rate")
    assert "attacker's key" in af["note"] and af["n"] == 3  # a keyless stamp
    (ss,) = _rows(result, method="spread_spectrum", metric="forgery_success_rate")
    assert ss["value"] is None and "does not apply" in ss["note"]
    (dd,) = _rows(result, method="dwtDct", metric="forgery_success_rate")
    assert "public decoder" in dd["note"] and 0 <= dd["value"] <= 1
    for method in ("visible_gan", "spread_spectrum", "dwtDct"):
        (removal,) = _rows(result, method=method, metric="removal_success_rate")
        (psnr,) = _rows(result, method=method, metric="psnr")
        assert removal["strength"] == pytest.approx(psnr["value"])


def test_shipped_method_row_matches_its_own_verify_on_the_files(result, photo_dir, tmp_path):
    """Mark the same photos, save them as PNG files, read them back and ``verify``: the
    benchmark's unattacked row says what ``verify`` says on those files."""
    method = load_bundle(shipped_bundle("visible_gan"))
    photos = load_folder(photo_dir, size=256, limit=5)
    key = WatermarkKey(result.settings.key_secret, result.settings.key_message)
    marked = method.embed(photos.images, key)
    for i, img in enumerate(marked):
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    files = torch.cat([load_image(tmp_path / f"{i}.png").tensor for i in range(len(marked))])
    verdicts = method.verify(files, key)
    (row,) = _rows(result, method="visible_gan", label="none", metric="detection_rate")
    assert row["value"] == pytest.approx(sum(v.detected for v in verdicts) / len(verdicts))
    clean_verdicts = method.verify(photos.images, key)
    (fp,) = _rows(result, method="visible_gan", label="none", metric="false_positive_rate")
    assert fp["value"] == pytest.approx(sum(v.detected for v in clean_verdicts) / 3)


def test_reports_csv_columns_markdown_and_self_contained_html(result, tmp_path):
    paths = write_reports(result, tmp_path / "out")
    assert list(read_csv(paths["csv"])[0]) == list(COLUMNS)
    assert paths["csv"].read_text().splitlines()[0] == ",".join(COLUMNS)
    assert len(read_csv(paths["csv"])) == len(result.rows)
    md = paths["md"].read_text()
    assert "| dwtDct | peer |" in md and "broken.jpg" in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(ATTACKS) + 1  # one per attack + timing
    assert "src=\"http" not in page
    heads = {h["method"]: h for h in headline(result.rows)}
    assert heads["rivaGan"]["psnr"] is None and "not installed" in heads["rivaGan"]["note"]
    assert "<td>visible_gan</td>" in to_html(result, figs={})


def test_mlflow_run_holds_metrics_and_reports(result, tmp_path):
    from mlflow.tracking import MlflowClient

    from neuralmark.integrations.benchmark_tracking import record_benchmark
    from tests.isolation import mlflow_store

    paths = write_reports(result, tmp_path / "out")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_store(uri):
        run_id = record_benchmark(result, paths, uri, tmp_path / "artifacts")
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        arts = {a.path for a in client.list_artifacts(run_id, "benchmark")}
    heads = {h["method"]: h for h in headline(result.rows)}
    assert run.data.metrics["dwtDct.psnr"] == pytest.approx(heads["dwtDct"]["psnr"])
    assert "rivaGan.psnr" not in run.data.metrics
    assert run.data.params["quick"] == "True"
    assert arts == {"benchmark/benchmark.csv", "benchmark/benchmark.md",
                    "benchmark/benchmark.html"}
