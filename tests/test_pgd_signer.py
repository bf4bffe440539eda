"""pgd_signer specifics: budget, any resolution, determinism, EoT gradients, search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralmark.components.attacks.differentiable import EoTChain, EoTConfig
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner
from neuralmark.components.metrics import psnr


def smoke(**over):
    torch.manual_seed(0)
    return build("pgd_signer", {**PGDSigner.smoke_config, **over})


def test_eot_chain_is_differentiable_end_to_end():
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    chain = EoTChain(EoTConfig(p=1.0))
    y = chain(x, torch.Generator().manual_seed(0))
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_eot_draw_replays_exactly():
    x = torch.rand(2, 3, 64, 64)
    chain = EoTChain(EoTConfig(p=0.7))
    params = chain.sample(2, torch.Generator().manual_seed(3))
    assert torch.equal(chain.apply(x, params), chain.apply(x, params))


@pytest.mark.parametrize("budget", [34.0, 40.0])
def test_budget_is_spent_and_respected(photo_batch, budget):
    # a margin no logit reaches keeps the hinge active, so PGD pushes to the ball's edge
    m = smoke(psnr_target=budget, pgd_steps=30, jnd=False, margin=1e3)
    at_working = torch.nn.functional.interpolate(photo_batch, size=(64, 64), mode="bilinear",
                                                 antialias=True)
    measured = psnr(m.embed(at_working, WatermarkKey("k")), at_working)
    # at the working size the L2 ball is reached (the knob sets the distortion)...
    assert (measured >= budget - 0.3).all() and (measured <= budget + 1.0).all(), measured
    # ...and at other sizes the upsampled residual never exceeds it
    assert (psnr(m.embed(photo_batch, WatermarkKey("k")), photo_batch) >= budget - 0.3).all()


def test_any_resolution_in_same_resolution_out():
    m = smoke()
    x = torch.rand(1, 3, 100, 150)
    out = m.embed(x, WatermarkKey("k"))
    assert out.shape == x.shape
    assert len(m.verify(out, WatermarkKey("k"))) == 1


def test_embed_is_deterministic(photo_batch):
    m = smoke()
    a = m.embed(photo_batch, WatermarkKey("k", 5))
    b = m.embed(photo_batch, WatermarkKey("k", 5))
    assert torch.equal(a, b)


def test_sync_views_and_bonferroni(photo_batch):
    m = smoke(sync_search=True)
    views = m.sync_views(photo_batch[:1])
    assert len(views) == 1 + 6 + 9 and torch.equal(views[0], photo_batch[:1])
    v_plain = m.verify(photo_batch, WatermarkKey("k"), search=False)[0]
    v = m.verify(photo_batch, WatermarkKey("k"))[0]
    assert v.extra["views"] == 16 and v_plain.extra["views"] == 1
    assert v.p_value is not None and 0 < v.p_value <= 1


def test_search_p_values_stay_valid_on_clean_images(photo_batch):
    """Over random keys, P(p ≤ a) ≤ a also with the search (Bonferroni is conservative)."""
    m = smoke(sync_search=True)
    p = m.null_p_values(photo_batch, 400, torch.Generator().manual_seed(0)).numpy()
    assert p.shape == (2, 400)
    for a in (0.05, 0.2):
        assert (p <= a).mean() <= a + 0.03
    assert np.isfinite(p).all()
