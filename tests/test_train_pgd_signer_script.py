"""The GPU recipe's command (issue #17), run on CPU with a micro profile: it trains, writes
a loadable bundle, its card and ``metrics.json``, and honours the time bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from neuralmark.components.methods import WatermarkKey
from neuralmark.components.methods.pgd_signer import PGDSigner
from tests.script_modules import load_script


def _script():
    return load_script("train_shipped_pgd_signer")


def _micro_profile(tmp_path: Path) -> Path:
    profile = {"pgd_signer": {
        "method": {"working_size": 64, "width": 8, "input_stride": 1, "rounds": 3,
                   "batch_size": 2, "sign_steps_train": 2, "m_steps": 1, "pgd_steps": 3,
                   "eot_samples": 1, "curve_images": 2, "buffer_size": 8,
                   "whitening_images": 8},
        "data": {"root": str(tmp_path / "data"), "size": 64, "crops_per_photo": 1,
                 "n_procedural": 4, "version_with_dvc": False},
        "evaluation": {"limit": 2, "fpr_keys": 3, "batch_size": 2,
                       "attacks": ["none", "jpeg"]},
        "policy": {"min_psnr": 0.0, "min_bit_accuracy": {}, "max_fpr": 1.0},
    }}
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("recipe")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = _script().main(["--profile", str(_micro_profile(tmp)), "--device", "cpu",
                                  "--minutes", "0", "--threads", "1", "--out",
                                  str(tmp / "out")])
    finally:
        torch.set_num_threads(threads)
    return tmp / "out", metrics


def test_recipe_writes_a_loadable_bundle_its_card_and_metrics(trained) -> None:
    out, metrics = trained
    method = PGDSigner.from_bundle(out / "bundle")
    assert method.config.keyed_decoder and method.config.working_size == 64
    assert method.whitening_set.images.shape[0] == 8 * 4  # 8 photos × 4 EoT views
    photo = torch.rand(1, 3, 64, 64)
    assert len(method.verify(method.embed(photo, WatermarkKey("k")), WatermarkKey("k"))) == 1
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert {"psnr", "bit_accuracy/none", "bit_accuracy/jpeg_50", "fpr"} <= set(
        written["evaluation"])
    assert written["test_images"] == 2 and written["device"] == "cpu"
    card = (out / "bundle" / "MODEL_CARD.md").read_text()
    assert "micro" in card and "--minutes 0" in card
    assert f"{written['evaluation']['psnr']:.4g}" in card
    assert len((out / "train_log.jsonl").read_text().splitlines()) == (
        written["training"]["rounds_run"])


def test_time_bound_stops_em_after_the_round_that_passes_it(trained, tmp_path) -> None:
    _, unbounded = trained
    assert unbounded["training"]["rounds_run"] == 3  # --minutes 0: every round
    bounded = _script().main(["--profile", str(_micro_profile(tmp_path)), "--device", "cpu",
                              "--minutes", "1e-6", "--threads", "1", "--out",
                              str(tmp_path / "out")])
    assert bounded["training"]["rounds_run"] == 1


def test_cuda_is_refused_by_name_where_there_is_none(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(SystemExit, match="no CUDA device"):
        _script().main(["--profile", "full", "--device", "cuda", "--out", str(tmp_path)])


def test_bundle_mode_evaluates_a_bundle_as_the_recipe_does_without_training(trained,
                                                                           tmp_path) -> None:
    """``--bundle``: the recipe's evaluation of an existing bundle (how the shipped card's
    "Evaluation of this bundle" is re-measured); the same bundle and settings give the
    recipe's own evaluation figures, and nothing is trained or written beside metrics.json."""
    out, metrics = trained
    again = _script().main(["--profile", str(_micro_profile(tmp_path)), "--device", "cpu",
                            "--threads", "1", "--out", str(tmp_path / "eval"),
                            "--bundle", str(out / "bundle")])
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["metrics.json"]
    assert again["test_images"] == metrics["test_images"] == 2
    assert again["evaluation"]["psnr"] == pytest.approx(metrics["evaluation"]["psnr"], abs=1e-4)
    assert again["evaluation"]["fpr_trials"] == metrics["evaluation"]["fpr_trials"]
    with pytest.raises(SystemExit, match="not a bundle"):
        _script().main(["--profile", str(_micro_profile(tmp_path)), "--out",
                        str(tmp_path / "x"), "--bundle", str(tmp_path)])
    with pytest.raises(SystemExit, match="--set"):
        _script().main(["--profile", "full", "--out", str(tmp_path / "x"),
                        "--bundle", str(out / "bundle"), "--set", "width=8"])
