"""trigger_key's opt-in contrastive embedding and the black-box filter estimate (issue #13, tk14).

``contrastive_negatives`` n > 0 adds to ℓ_w the mean squared change of the host's answer on
n fresh U(0, 1) noise inputs per call (the host as it was before marking is the reference):
zero on that host itself, the exact mean on another; the default (0) is the seed's ℓ_w,
unchanged. ``negative_inputs`` draws white noise of the trigger's shape (the SR host's
upsample). The black-box script's least-squares estimate recovers the keyed ∇ of a host that
answers noise with G = z − ∇z, and its ranking prefers the key of that ∇.
"""

from __future__ import annotations

import sys

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.trigger_key.trigger import (
    apply_gradient,
    gradient_kernel,
    keyed_generator,
    negative_inputs,
)
from tests.script_modules import load_script


def test_negative_inputs_are_white_noise_of_the_trigger_shape():
    a = negative_inputs(torch.Generator().manual_seed(0), 3, 24, 1, "denoise")
    b = negative_inputs(torch.Generator().manual_seed(0), 3, 24, 1, "denoise")
    assert torch.equal(a, b) and a.shape == (3, 1, 24, 24)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert float(a.mean()) == pytest.approx(0.5, abs=0.03)
    assert not torch.allclose(a[0], a[1])  # one fresh draw per negative
    assert negative_inputs(torch.Generator().manual_seed(0), 2, 10, 3, "sr", 2).shape == \
        (2, 3, 20, 20)
    with pytest.raises(InputError, match="negative_inputs: need n, size >= 1"):
        negative_inputs(torch.Generator(), 0, 24, 1, "denoise")


def test_contrastive_config_is_opt_in_and_checked():
    c = build("trigger_key", {}).config
    assert (c.contrastive_negatives, c.contrastive_weight) == (0, 1.0)
    for bad in ({"contrastive_negatives": -1}, {"contrastive_negatives": 65},
                {"contrastive_weight": 0}):
        with pytest.raises(ValueError, match="contrastive"):
            build("trigger_key", bad)


def _method(**fields):
    m = build("trigger_key", {"depth": 3, "width": 4, "trigger_size": 16, **fields})
    torch.manual_seed(0)
    for p in m.unmarked.parameters():
        p.data.normal_(0, 0.1)
    return m


def test_default_mark_loss_is_the_seed_l_w():
    m = _method()
    key = WatermarkKey("owner")
    x, s0 = m.key_material(key)
    loss, _ = m.mark_loss(key)
    with torch.no_grad():
        assert float(loss(m.unmarked)) == pytest.approx(
            float((m.unmarked(x) - s0).pow(2).sum()), rel=1e-6)


def test_contrastive_term_is_zero_on_the_host_before_marking_and_the_mean_change_after():
    m = _method(contrastive_negatives=3, contrastive_weight=2.0)
    key = WatermarkKey("owner")
    x, s0 = m.key_material(key)
    before = m.unmarked
    loss, done = m.mark_loss(key)
    with torch.no_grad():
        plain = float((before(x) - s0).pow(2).sum())
        assert float(loss(before)) == pytest.approx(plain, rel=1e-6)
        other = build("trigger_key", {"depth": 3, "width": 4, "trigger_size": 16}).unmarked
        other.load_state_dict(before.state_dict())
        for p in other.parameters():
            p.add_(0.05)
        # the loss's own stream: the second call draws the second batch of negatives
        g = keyed_generator("owner", "contrastive")
        negative_inputs(g, 3, 16, 1, "denoise")
        z = negative_inputs(g, 3, 16, 1, "denoise")
        want = float((other(x) - s0).pow(2).sum()) + \
            2.0 * float((other(z) - before(z)).pow(2).sum()) / 3
        assert float(loss(other)) == pytest.approx(want, rel=1e-5)
    assert done(0.0) and not done(1e9)


def _blackbox():
    return load_script("measure_trigger_key_blackbox_forgery")


def test_blackbox_estimate_recovers_a_keyed_filter_learnt_on_all_noise():
    script = _blackbox()
    owner = gradient_kernel("owner-secret")
    z = torch.rand((4, 1, 40, 40), generator=torch.Generator().manual_seed(1))
    smooth = torch.nn.functional.avg_pool2d(z, 3, 1, 1, count_include_pad=False)
    # a host half-way between a smooth denoiser and G(z) = z − ∇z (no clamping)
    marked = 0.5 * smooth + 0.5 * (z - apply_gradient(z, owner))
    est = script.estimate_kernel(marked, smooth, z)
    cos = float(est.flatten() @ owner.flatten() / (est.norm() * owner.norm()))
    assert cos > 0.99 and float(est.sum()) == pytest.approx(0.0, abs=1e-5)
    # the ranking puts the owner's key first among others
    names = ["owner-secret", *(f"other-{i}" for i in range(50))]
    scores = script.scores_against(script.kernels_of(names), est, z[:1])
    assert int(scores.argmax()) == 0
    # an unmarked host (only the smooth part) does not give the owner's filter
    noise = torch.rand(z.shape, generator=torch.Generator().manual_seed(2)) * 1e-3
    est_u = script.estimate_kernel(smooth + noise, smooth, z)
    assert float(est_u.flatten() @ owner.flatten() / (est_u.norm() * owner.norm())) < 0.9


def test_blackbox_estimate_reads_the_sr_filter_on_upsampled_queries():
    """tk16: on SR the host sees K̂ (the upsample) and S0 = K̂ + ∇K̂ (the sign flips); the
    estimate from upsampled noise queries recovers ∇ and ranks the owner's key first."""
    from neuralmark.components.methods.trigger_key.trigger import host_input

    script = _blackbox()
    owner = gradient_kernel("owner-secret")
    lr = torch.rand((4, 1, 20, 20), generator=torch.Generator().manual_seed(1))
    z = host_input(lr, "sr", 2)  # 4 1 40 40
    smooth = torch.nn.functional.avg_pool2d(z, 3, 1, 1, count_include_pad=False)
    marked = 0.5 * smooth + 0.5 * (z + apply_gradient(z, owner))
    est = script.estimate_kernel(marked, smooth, z, "sr")
    cos = float(est.flatten() @ owner.flatten() / (est.norm() * owner.norm()))
    assert cos > 0.99
    assert float(script.estimate_kernel(marked, smooth, z).flatten() @ owner.flatten()) < 0
    names = ["owner-secret", *(f"other-{i}" for i in range(50))]
    scores = script.scores_against(script.kernels_of(names), est, lr[:1], task="sr", scale=2)
    assert int(scores.argmax()) == 0


@pytest.mark.parametrize("argv, message", [
    (["--host-seeds", "0,101"], "101 is the attacker's own host seed"),
    (["--owners", ","], "non-empty comma-separated list"),
    (["--calib-keys", "100", "--pool", "0"], "would have 50 trials, alpha 0.01 needs at least 99"),
])
def test_blackbox_script_refuses_bad_cells_before_any_data(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        _blackbox().main(["--sample", str(tmp_path / "sample"), *argv])
    assert not (tmp_path / "sample").exists()


def test_the_cross_key_script_takes_a_variant_for_every_key():
    script = _blackbox()  # imports the cross-key script as its sibling
    cross = sys.modules["measure_trigger_key_cross_key"]
    assert script.variant_fields is cross.variant_fields
    fields = cross.variant_fields("contrastive_negatives=4,contrastive_weight=0.5,key_family=band")
    assert fields == {"contrastive_negatives": 4, "contrastive_weight": 0.5, "key_family": "band"}
    c = build("trigger_key", {**cross.host_config("dncnn"), **fields}).config
    assert (c.contrastive_negatives, c.contrastive_weight, c.key_family) == (4, 0.5, "band")
    assert cross.variant_fields("") == {}
    with pytest.raises(SystemExit, match="--variant: expected field=value, got 'lam'"):
        cross.variant_fields("lam")
