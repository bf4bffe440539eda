"""Forgery over separate target photos and the surrogate-learning attack (issue #17), on
micro methods where the answers are known."""

from __future__ import annotations

import functools

import pytest
import torch

from neuralmark.components.benchmark import BenchmarkSettings, PhotoSet
from neuralmark.components.benchmark import runner as runner_mod
from neuralmark.components.benchmark.estimation_forgery import estimation_forgery_rows
from neuralmark.components.benchmark.forgery import _detected, copy_attack_rows
from neuralmark.components.benchmark.forgery_targets import forgery_targets
from neuralmark.components.benchmark.surrogate_forgery import (
    surrogate_forge,
    surrogate_remove,
    surrogate_rows,
    train_surrogate,
    word_agreement,
)
from neuralmark.components.errors import InputError
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner
from neuralmark.components.metrics import psnr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASE = {"method": "m", "family": "test"}
KEY = WatermarkKey("victim", 1)


def _photos(photo_batch: torch.Tensor) -> torch.Tensor:
    small = torch.nn.functional.interpolate(photo_batch, size=(64, 64), mode="bilinear",
                                            antialias=True)
    return torch.cat([small, small.flip(-1), small.flip(-2)])  # 6 distinct photos


def _q(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def _rate(rows, label, metric="forgery_success_rate"):
    return next(r for r in rows if r["label"] == label and r["metric"] == metric)


@pytest.fixture(scope="module")
def keyed(photo):
    """A micro keyed pgd_signer, whitened, with 6 photos marked under ``KEY``."""
    photo_batch = torch.stack([torch.from_numpy(photo[100:196, 150:278]),
                               torch.from_numpy(photo[300:396, 200:328])]
                              ).permute(0, 3, 1, 2).float() / 255  # conftest's photo_batch
    m = build("pgd_signer", {**PGDSigner.smoke_config, "pgd_steps": 40, "psnr_target": 30.0,
                             "alpha": 1e-3})
    photos = _photos(photo_batch)
    m.set_whitening_set(photos.repeat(2, 1, 1, 1))
    m.fit_whitening(photos.repeat(2, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    return m, photos, _q(m.embed(photos, KEY))


def test_targets_are_photo_crops_then_procedural_images_the_same_every_time():
    a = forgery_targets(10, 32, photo_share=0.6)
    assert a.images.shape == (10, 3, 32, 32) and a.images.dtype == torch.float32
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    assert [n.split(":")[0] for n in a.names] == ["crop"] * 6 + ["procedural"] * 4
    assert len({n.rsplit(":", 1)[0] for n in a.names[:6]}) == 6  # spread over the photos
    assert torch.equal(a.images, forgery_targets(10, 32, photo_share=0.6).images)
    assert not torch.equal(a.images, forgery_targets(10, 32, photo_share=0.6, seed=1).images)
    with pytest.raises(InputError, match="at least 1"):
        forgery_targets(0)
    with pytest.raises(InputError, match="photo_share"):
        forgery_targets(4, photo_share=1.5)


@pytest.mark.parametrize("keyed_decoder", [False, True])
def test_copy_attack_over_separate_targets(photo_batch, keyed_decoder):
    """Target j gets source j mod N's bits: the unkeyed design is forged on most targets, the
    keyed one on none; the rate counts the targets and carries its interval."""
    m = build("pgd_signer", {**PGDSigner.smoke_config, "pgd_steps": 40, "psnr_target": 30.0,
                             "alpha": 1e-3, "keyed_decoder": keyed_decoder})
    photos = _photos(photo_batch)
    m.set_whitening_set(photos.repeat(2, 1, 1, 1))
    m.fit_whitening(photos.repeat(2, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    marked = _q(m.embed(photos[:3], KEY))
    targets = forgery_targets(6, 64).images
    rows = copy_attack_rows(m, photos[:3], marked, KEY, BASE, targets=targets, batch_size=4)
    rate = _rate(rows, "copy")
    assert rate["n"] == 6 and "95% CI" in rate["note"], rows
    assert (rate["value"] == 0.0) if keyed_decoder else (rate["value"] >= 0.5), rows


def test_estimation_forgeries_over_separate_targets(photo_batch, keyed):
    """spread_spectrum's image-independent pattern is recovered from 5 marked photos and
    forges separate targets; the mean shift runs on the first ``mean_shift_targets`` only."""
    ss = build("spread_spectrum", {"working_size": 64, "psnr_target": 30.0})
    photos = _photos(photo_batch)
    marked = ss.embed(photos, KEY)
    budget = float(psnr(marked, photos).mean())
    targets = forgery_targets(6, 64).images
    rows = estimation_forgery_rows(ss, photos, marked, KEY, budget, BASE, max_sources=5,
                                   targets=targets)
    copy = _rate(rows, "residual_copy")
    assert copy["n"] == 6 and copy["strength"] == 5.0 and copy["value"] >= 0.5, copy
    m, photos, marked = keyed
    budget = float(psnr(marked, photos).mean())
    rows = estimation_forgery_rows(m, photos, marked, KEY, budget, BASE, steps=5,
                                   targets=targets, mean_shift_targets=2)
    assert _rate(rows, "mean_shift")["n"] == 2 and _rate(rows, "residual_copy")["n"] == 6
    assert _rate(rows, "mean_shift", "forgery_psnr")["value"] >= budget - 0.1


def test_pgd_against_a_perfect_surrogate_forges_and_removes(keyed):
    """With the victim's real decoder as the surrogate, the attack's PGD writes the word into
    every target and erases it from every mark within the budget: a 0 rate for a learnt
    surrogate is the surrogate's failure, not the optimiser's."""
    m, photos, marked = keyed
    budget = float(psnr(marked, photos).mean())
    word, real = m.codec.encode(KEY), m.decoder_for(KEY)
    targets = forgery_targets(4, 64).images
    forged = surrogate_forge(m, real, targets, word, budget, steps=100)
    assert (psnr(forged, targets) >= budget - 0.2).all()
    assert all(_detected(m.verify(forged, KEY)))
    victims = marked[torch.tensor(_detected(m.verify(marked, KEY)))]
    assert len(victims) >= 3
    removed = surrogate_remove(m, real, victims, word, budget, steps=100)
    assert (psnr(removed, victims) >= budget - 0.2).all()
    assert not any(_detected(m.verify(removed, KEY)))


def test_surrogate_learns_its_marked_photos_and_leaves_the_shipped_layers(keyed):
    m, photos, marked = keyed
    word = m.codec.encode(KEY)
    before = {k: v.clone() for k, v in m.decoder.state_dict().items()}
    fresh = train_surrogate(m, photos, marked, word, steps=0, views=2)
    learnt = train_surrogate(m, photos, marked, word, steps=60, views=2)
    assert word_agreement(m, learnt, marked, word) >= 0.9
    assert word_agreement(m, learnt, marked, word) > word_agreement(m, fresh, marked, word)
    assert all(torch.equal(v, m.decoder.state_dict()[k]) for k, v in before.items())


def test_surrogate_rows_give_forgery_and_removal_rates_with_intervals(keyed):
    m, photos, marked = keyed
    budget = float(psnr(marked, photos).mean())
    targets = forgery_targets(3, 64).images
    rows = surrogate_rows(m, photos[:4], marked[:4], KEY, budget, BASE, targets,
                          fresh=marked[4:], train_steps=20, pgd_steps=5, views=2)
    forged = _rate(rows, "surrogate_forgery")
    assert forged["n"] == 3 and 0 <= forged["value"] <= 1 and "95% CI" in forged["note"]
    assert forged["strength"] == 4.0
    assert _rate(rows, "surrogate_forgery", "forgery_psnr")["value"] >= budget - 0.2
    for label in ("surrogate_removal", "surrogate_removal_own"):
        removal = _rate(rows, label, "removal_success_rate")
        assert removal["n"] >= 1 and "95% CI" in removal["note"], removal
    ss = build("spread_spectrum", {"working_size": 64})
    (row,) = surrogate_rows(ss, photos, marked, KEY, budget, BASE, targets)
    assert row["value"] is None and "does not apply" in row["note"]


def test_benchmark_forges_separate_targets_and_runs_the_surrogate(photo_batch, monkeypatch):
    """``forgery_targets`` in the settings: copy, residual copy and the surrogate attack on
    that many targets for the shipped keyed pgd_signer; a method without a keyed decoder gets
    no surrogate row."""
    monkeypatch.setattr(runner_mod, "surrogate_rows", functools.partial(
        runner_mod.surrogate_rows, train_steps=10, pgd_steps=3, views=2))
    settings = BenchmarkSettings(
        methods=["pgd_signer[pgd_steps=3,eot_samples=1]", "spread_spectrum"], peers=[],
        attacks=["jpeg"], quick=True, size=64, limit=3, fpr_keys=1, batch_sizes=[1],
        resolutions=[64], whitebox_steps=2, model_methods=[], forgery_targets=4,
        device="cpu")
    photos = _photos(photo_batch)[:3]
    result = runner_mod.run_benchmark(settings, PhotoSet(photos, ["a", "b", "c"]))
    rows = [r for r in result.rows if r["metric"] == "forgery_success_rate"]
    got = {(r["method"].split("[")[0], r["label"]): r for r in rows}
    for label in ("copy", "residual_copy", "mean_shift", "surrogate_forgery"):
        assert got[("pgd_signer", label)]["n"] == 4, got[("pgd_signer", label)]
    assert ("spread_spectrum", "surrogate_forgery") not in got
    assert got[("spread_spectrum", "residual_copy")]["n"] == 4
