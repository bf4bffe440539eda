"""Forgeries from several marked photos (issue #17): the residual copy and the feature mean
shift, with their intervals, on methods where the answers are known."""

from __future__ import annotations

import torch

from neuralmark.components.benchmark.estimation_forgery import (
    estimation_forgery_rows,
    residual_copy,
)
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner
from neuralmark.components.metrics import psnr

BASE = {"method": "m", "family": "test"}


def _photos(photo_batch: torch.Tensor) -> torch.Tensor:
    small = torch.nn.functional.interpolate(photo_batch, size=(64, 64), mode="bilinear",
                                            antialias=True)
    return torch.cat([small, small.flip(-1), small.flip(-2)])  # 6 distinct photos


def _rate(rows, label):
    return next(r for r in rows if r["label"] == label and r["metric"] == "forgery_success_rate")


def test_residual_copy_forges_an_image_independent_mark(photo_batch):
    """spread_spectrum adds the same keyed pattern to every photo: averaging the residuals
    of 5 marked photos recovers it, and every target verifies under the victim's key."""
    method = build("spread_spectrum", {"working_size": 64, "psnr_target": 30.0})
    clean, key = _photos(photo_batch), WatermarkKey("victim", 2)
    marked = method.embed(clean, key)
    budget = float(psnr(marked, clean).mean())
    forged = residual_copy(clean, marked, budget)
    assert forged.shape == clean.shape
    assert (psnr(forged, clean) >= budget - 0.5).all()  # within the method's own change
    rows = estimation_forgery_rows(method, clean, marked, key, budget, BASE)
    copy = _rate(rows, "residual_copy")
    assert copy["value"] >= 5 / 6 and copy["n"] == 6 and copy["strength"] == 5.0
    assert "95% CI" in copy["note"] and "5 marked photos per target" in copy["note"]
    shift = _rate(rows, "mean_shift")
    assert shift["value"] is None and "no public feature extractor" in shift["note"]


def test_mean_shift_runs_within_the_budget_on_pgd_signer(photo_batch):
    """pgd_signer has a public decoder with whitened pooled features: the mean-shift attack
    applies, stays within the method's PSNR, and its rate comes with an interval."""
    m = build("pgd_signer", {**PGDSigner.smoke_config, "pgd_steps": 10, "alpha": 1e-3})
    clean, key = _photos(photo_batch), WatermarkKey("victim", 2)
    m.set_whitening_set(clean)
    marked = m.embed(clean, key)
    budget = float(psnr(marked, clean).mean())
    rows = estimation_forgery_rows(m, clean, marked, key, budget, BASE, steps=5,
                                   max_sources=3)
    shift = _rate(rows, "mean_shift")
    assert shift["n"] == 6 and 0.0 <= shift["value"] <= 1.0 and shift["strength"] == 3.0
    assert "95% CI" in shift["note"]
    forged_psnr = next(r["value"] for r in rows
                       if r["label"] == "mean_shift" and r["metric"] == "forgery_psnr")
    assert forged_psnr >= budget - 0.1
