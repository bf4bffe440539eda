"""trigger_key's key families (issue #13, tk9, tk10): the opt-in ``band`` and ``midband``
families and the default.

Pure functions of the secret, no training: the ``band`` trigger is deterministic per
secret, differs across secrets, has the declared shape, range, mean and spread, and puts its
power near the key's frequency; S0 is G(K) with the key's ∇; the ``midband`` family keeps the
white trigger and maps it by a keyed, zero-mean 7×7 Gabor of the seed's ∇ norm whose energy
lies in 0.07–0.25 cycle/px (the 3×3 ∇'s does not); the default ``filter`` family
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


def test_midband_kernel_is_keyed_zero_mean_of_the_seed_norm_and_mid_band():
    from neuralmark.components.methods.trigger_key.trigger import (
        MIDBAND_SIZE,
        SEED_GRADIENT,
        midband_kernel,
    )

    a1, a2, b = midband_kernel("a"), midband_kernel("a"), midband_kernel("b")
    assert torch.equal(a1, a2) and not torch.allclose(a1, b)
    assert a1.shape == (MIDBAND_SIZE, MIDBAND_SIZE) and a1.dtype == torch.float32
    f = torch.fft.fftfreq(64)
    r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    for secret in ("a", "b", "owner secret", "neuralmark-attacker"):
        h = midband_kernel(secret)
        assert float(h.sum()) == pytest.approx(0.0, abs=1e-5)
        assert float(h.norm()) == pytest.approx(float(SEED_GRADIENT.norm()), rel=1e-5)
        power = torch.fft.fft2(h.double(), s=(64, 64)).abs().pow(2)
        # the mark's energy sits in the mid band, not the 3×3 derivative's high band
        assert float(power[(r > 0.07) & (r < 0.25)].sum() / power.sum()) > 0.7, secret
        g = torch.fft.fft2(gradient_kernel(secret).double(), s=(64, 64)).abs().pow(2)
        assert float(g[(r > 0.07) & (r < 0.25)].sum() / g.sum()) < 0.3, secret


def test_midband_key_material_is_the_white_trigger_under_the_keyed_gabor():
    from neuralmark.components.methods.trigger_key.trigger import apply_gradient, midband_kernel

    x, s0 = key_material("a", 40, 1, "denoise", family="midband")
    fx, fs0 = key_material("a", 40, 1, "denoise")
    assert torch.equal(x, fx) and not torch.allclose(s0, fs0)  # same K, another map
    assert x.shape == s0.shape == (1, 1, 40, 40)
    assert torch.equal(s0, (x - apply_gradient(x, midband_kernel("a"))).clamp(0, 1))
    xb, sb = key_material("b", 40, 1, "denoise", family="midband")
    assert not torch.allclose(xb, x) and not torch.allclose(sb, s0)
    xs, ss = key_material("a", 20, 3, "sr", scale=2, family="midband")
    assert xs.shape == ss.shape == (1, 3, 40, 40)
    # the seed's ∇ (the ablation) is the same in every family
    xu, su = key_material("a", 40, 1, "denoise", keyed=False, family="midband")
    assert torch.equal(su, key_material("a", 40, 1, "denoise", keyed=False)[1])
    m = build("trigger_key", {"key_family": "midband"})
    mx, ms0 = m.key_material(WatermarkKey("a"))
    assert torch.equal(mx, x) and torch.equal(ms0, s0)
    rm = calibration.random_key_material(3, 1, 40, 1, "denoise", 2, True, "midband")
    rf = calibration.random_key_material(3, 1, 40, 1, "denoise", 2, True)
    assert torch.equal(rm[0], rf[0]) and not torch.allclose(rm[1], rf[1])


def test_band_trigger_is_band_noise_from_the_keys_stream():
    from neuralmark.components.methods.trigger_key.trigger import band_noise, keyed_generator

    k = band_noise(band_frequency("a"), 40, 1, keyed_generator("a", "band/trigger"))
    assert torch.equal(k, band_trigger("a", 40, 1))
    low = band_noise((0.0, 0.2), 32, 1, torch.Generator().manual_seed(0), amplitude=0.05)
    assert float(low.std()) == pytest.approx(0.05, rel=0.05)
