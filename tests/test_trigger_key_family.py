"""trigger_key's key families (issue #13, tk9): the opt-in ``band`` family and the default.

Pure functions of the secret, no training: the ``band`` trigger is deterministic per
secret, differs across secrets, has the declared shape, range, mean and spread, and puts its
power near the key's frequency; S0 is G(K) with the key's ∇; the default ``filter`` family
(every figure before tk9) is exactly what it was. The values pinned for the default were
read from the code before the family was added (24×24 grey trigger of secret "a").
"""

from __future__ import annotations

import math

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.trigger_key import calibration
from neuralmark.components.methods.trigger_key.trigger import (
    BAND_AMPLITUDE,
    BAND_RADIUS,
    band_frequency,
    band_trigger,
    gradient_kernel,
    host_input,
    key_material,
    trigger,
    verification_target,
)


def test_the_default_family_is_the_white_noise_filter_family_unchanged():
    x, s0 = key_material("a", 24, 1, "denoise")
    assert torch.equal(x, trigger("a", 24, 1)[None])
    assert torch.equal(s0, verification_target(x, gradient_kernel("a"), "denoise"))
    x2, s02 = key_material("a", 24, 1, "denoise", family="filter")
    assert torch.equal(x, x2) and torch.equal(s0, s02)
    # pinned: the figures of every earlier session were made with exactly this material
    assert x[0, 0, 0, :4].tolist() == pytest.approx([0.0952783, 0.6069051, 0.3024615, 0.0432189],
                                                    abs=1e-6)
    assert float(x.sum()) == pytest.approx(284.91098, abs=1e-3)
    assert float(s0.sum()) == pytest.approx(287.44312, abs=1e-3)
    m = build("trigger_key", {})
    assert m.config.key_family == "filter"
    mx, ms0 = m.key_material(WatermarkKey("a"))
    fx, fs0 = key_material("a", 40, 1, "denoise")
    assert torch.equal(mx, fx) and torch.equal(ms0, fs0)


def test_band_trigger_is_deterministic_per_secret_shaped_and_differs_across_secrets():
    a1, a2, b = band_trigger("a", 40, 1), band_trigger("a", 40, 1), band_trigger("b", 40, 1)
    assert torch.equal(a1, a2) and not torch.allclose(a1, b)
    assert a1.shape == (1, 40, 40) and a1.dtype == torch.float32
    assert band_trigger("a", 24, 3).shape == (3, 24, 24)
    for k in (a1, b, band_trigger("c", 40, 3)):
        assert 0.0 <= float(k.min()) and float(k.max()) <= 1.0
        assert float(k.mean()) == pytest.approx(0.5, abs=0.02)
        assert float(k.std()) == pytest.approx(BAND_AMPLITUDE, rel=0.1)  # clamping trims a little
    assert band_frequency("a") == band_frequency("a") != band_frequency("b")
    # not the filter family's trigger of the same secret (its own HMAC streams)
    assert not torch.allclose(a1, trigger("a", 40, 1))


def test_band_trigger_puts_its_power_near_the_keyed_frequency():
    for secret in ("a", "b", "owner secret", "neuralmark-attacker"):
        fy, fx = band_frequency(secret)
        assert BAND_RADIUS[0] <= math.hypot(fy, fx) <= BAND_RADIUS[1]
        k = band_trigger(secret, 64, 1)[0].double()
        power = torch.fft.fft2(k - k.mean()).abs().pow(2)  # 64 64
        ny = torch.fft.fftfreq(64, dtype=torch.float64)[:, None]
        nx = torch.fft.fftfreq(64, dtype=torch.float64)[None, :]
        near = torch.zeros_like(power, dtype=torch.bool)
        for s in (1.0, -1.0):
            near |= ((ny - s * fy) ** 2 + (nx - s * fx) ** 2).sqrt() <= 0.08
        assert float(power[near].sum() / power.sum()) > 0.9, secret


def test_band_key_material_is_g_of_the_band_trigger_for_both_tasks():
    x, s0 = key_material("a", 40, 1, "denoise", family="band")
    k = band_trigger("a", 40, 1)[None]
    assert torch.equal(x, k)
    assert torch.equal(s0, verification_target(k, gradient_kernel("a"), "denoise"))
    assert not torch.allclose(s0, x)  # the keyed ∇ does change the band's content
    xs, ss = key_material("a", 20, 3, "sr", scale=3, family="band")
    assert xs.shape == ss.shape == (1, 3, 60, 60)
    assert torch.equal(xs, host_input(band_trigger("a", 20, 3)[None], "sr", 3))
    xb, sb = key_material("b", 40, 1, "denoise", family="band")
    assert not torch.allclose(xb, x) and not torch.allclose(sb, s0)


def test_the_family_is_a_config_field_and_reaches_the_calibration_keys():
    m = build("trigger_key", {"key_family": "band"})
    x, s0 = m.key_material(WatermarkKey("a"))
    fx, fs0 = key_material("a", 40, 1, "denoise", family="band")
    assert torch.equal(x, fx) and torch.equal(s0, fs0)
    rb = calibration.random_key_material(3, 1, 40, 1, "denoise", 2, True, "band")
    rf = calibration.random_key_material(3, 1, 40, 1, "denoise", 2, True)
    assert rb[0].shape == rf[0].shape == (3, 1, 40, 40)
    assert not torch.allclose(rb[0], rf[0])
    with pytest.raises(InputError, match="key_family"):
        build("trigger_key", {"key_family": "stripes"})
    with pytest.raises(InputError, match="key family"):
        key_material("a", 40, 1, "denoise", family="stripes")
