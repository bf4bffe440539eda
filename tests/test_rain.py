"""Rain synthesis (components/data/rain.py): deterministic, measurable, aligned, hazy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kornia.filters import median_blur
from PIL import Image, ImageOps

from neuralmark.components.data.rain import (
    RainParams,
    add_rain,
    item_seed,
    rain_layer,
    sample_rain_params,
    streak_kernel,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clean(photo: np.ndarray) -> torch.Tensor:
    """The astronaut photo at 128², ``3×H×W`` float in [0, 1]."""
    img = ImageOps.fit(Image.fromarray(photo), (128, 128), method=Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10.0 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_same_seed_same_bytes_tensor_and_pil(clean: torch.Tensor) -> None:
    params = sample_rain_params(11, scale=128 / 400)
    assert params == sample_rain_params(11, scale=128 / 400)
    a1, a2 = add_rain(clean, params, 5), add_rain(clean, params, 5)
    assert a1.numpy().tobytes() == a2.numpy().tobytes()
    pil = Image.fromarray((clean.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    p1, p2 = add_rain(pil, params, 5), add_rain(pil, params, 5)
    assert isinstance(p1, Image.Image) and p1.mode == "RGB" and p1.size == pil.size
    assert p1.tobytes() == p2.tobytes()


def test_different_seeds_differ(clean: torch.Tensor) -> None:
    assert sample_rain_params(1) != sample_rain_params(2)
    params = RainParams()
    assert not torch.equal(add_rain(clean, params, 1), add_rain(clean, params, 2))
    assert item_seed("2008_000008") == item_seed("2008_000008")
    assert item_seed("2008_000008") != item_seed("2008_000009")
    assert item_seed("2008_000008", 0) != item_seed("2008_000008", 1)


def test_rain_changes_image_measurably(clean: torch.Tensor) -> None:
    # default params: a clearly visible but not destroying rain
    assert 15.0 < psnr(add_rain(clean, RainParams(), 0), clean) < 35.0
    # drawn conditions (light … heavy) stay in the documented band
    values = [psnr(add_rain(clean, sample_rain_params(s, scale=128 / 400), s), clean)
              for s in range(10)]
    assert all(12.0 < v < 32.0 for v in values), values
    assert max(values) - min(values) > 3.0  # densities really vary


def test_rainy_image_stays_aligned_with_clean(clean: torch.Tensor) -> None:
    rainy = add_rain(clean, sample_rain_params(3, scale=128 / 400), 3)
    # without haze, screen blending only brightens
    assert bool((rainy >= clean - 1e-6).all())
    # removing the thin streaks (median filter) gives back a close match of B, pixel-aligned
    derained = median_blur(rainy[None], (5, 5))[0]
    reference = median_blur(clean[None], (5, 5))[0]
    aligned = corr(derained, reference)
    shifted = corr(derained[:, :, 4:], reference[:, :, :-4])
    assert aligned > 0.95
    assert aligned > shifted + 0.02


def test_haze_follows_airlight(clean: torch.Tensor) -> None:
    dry = RainParams(density=0.0)
    torch.testing.assert_close(add_rain(clean, dry, 0), clean)
    bright = add_rain(clean, RainParams(density=0.0, haze=0.3, airlight=1.0), 0)
    dark = add_rain(clean, RainParams(density=0.0, haze=0.3, airlight=0.0), 0)
    torch.testing.assert_close(bright, clean * 0.7 + 0.3)  # I = J·t + A·(1 − t)
    torch.testing.assert_close(dark, clean * 0.7)
    assert bright.mean() > clean.mean() > dark.mean()
    hazy = sample_rain_params(4, haze=True)
    assert 0.1 <= hazy.haze <= 0.4 and 0.7 <= hazy.airlight <= 1.0
    assert sample_rain_params(4).haze == 0.0


def test_shapes_modes_and_batches(clean: torch.Tensor) -> None:
    params = RainParams(length=8, width=1.0)
    batch = torch.stack([clean, clean])
    out = add_rain(batch, params, 9)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert not torch.equal(out[0], out[1])  # each image of a batch gets its own drops
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    grey = Image.fromarray((clean[0].numpy() * 255).astype(np.uint8), "L")
    rainy = add_rain(grey, params, 9)
    assert rainy.mode == "L" and rainy.size == grey.size
    with pytest.raises(ValueError):
        add_rain(clean[0], params, 9)
    with pytest.raises(TypeError):
        add_rain(np.zeros((3, 8, 8)), params, 9)  # type: ignore[arg-type]


def test_streak_geometry() -> None:
    vertical = streak_kernel(RainParams(angle=0.0, length=15, width=1.0, motion_blur=0.0))
    k = vertical.shape[-1]
    assert k % 2 == 1 and math.isclose(float(vertical.max()), 1.0, rel_tol=1e-6)
    col, row = vertical[:, k // 2], vertical[k // 2, :]
    assert int((col > 0.5).sum()) >= 14 and int((row > 0.5).sum()) <= 2
    slanted = streak_kernel(RainParams(angle=30.0, length=15, width=1.0, motion_blur=0.0))
    c = slanted.shape[-1] // 2
    assert slanted[c - 5, c + 3] > 0.5 > slanted[c - 5, c - 3]  # top leans right
    layer = rain_layer(32, 48, RainParams(density=0.02), seed=0)
    assert layer.shape == (1, 1, 32, 48) and float(layer.max()) <= 0.6 + 1e-6


def test_sampled_rain_keeps_its_look_across_sizes() -> None:
    def energy(size: int, seed: int) -> float:  # mean streak brightness per pixel
        params = sample_rain_params(seed, scale=size / 400)
        return float(rain_layer(size, size, params, seed=seed).mean())

    for seed in (3, 21):
        assert energy(64, seed) == pytest.approx(energy(256, seed), rel=0.2)


def test_invalid_params_are_named() -> None:
    with pytest.raises(ValueError, match="intensity"):
        RainParams(intensity=1.5)
    with pytest.raises(ValueError, match="haze"):
        RainParams(haze=1.0)
