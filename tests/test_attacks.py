"""Evaluation attacks and their registry."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from neuralmark.components.attacks.image import (
    JPEG,
    Brightness,
    Combo,
    Contrast,
    Crop,
    GaussianBlur,
    GaussianNoise,
    Resize,
    Rotate,
    WebP,
)
from neuralmark.components.attacks.registry import (
    BENCHMARK_SUITE,
    available_attacks,
    build_attack,
    curve_suite,
    label,
)

ALL_CONFIGS = [(name, s) for name, strengths in BENCHMARK_SUITE for s in strengths] + [
    ("webp", 60), ("resize", 1.5), ("rotate", 20), ("noise", 0.1), ("brightness", 0.6),
    ("contrast", 0.6),
]


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@pytest.mark.parametrize(("name", "strength"), ALL_CONFIGS,
                         ids=[f"{n}-{s}" for n, s in ALL_CONFIGS])
def test_attack_keeps_batch_channels_range_and_replays(photo_batch, name, strength):
    attack = build_attack(name, strength)
    params = attack.sample(photo_batch.shape[0], torch.Generator().manual_seed(3))
    out = attack.apply(photo_batch, params)
    again = attack.apply(photo_batch, params)
    redrawn = attack.apply(photo_batch,
                           attack.sample(photo_batch.shape[0], torch.Generator().manual_seed(3)))

    assert out.shape[:2] == photo_batch.shape[:2]
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, again)
    assert torch.equal(out, redrawn)
    assert isinstance(attack.name, str) and hasattr(attack, "strength")


def test_resize_and_crop_output_sizes(photo_batch):
    assert Resize(0.5)(photo_batch).shape == (2, 3, 48, 64)
    assert Resize(1.5)(photo_batch).shape == (2, 3, 144, 192)
    assert Crop(0.9)(photo_batch).shape == (2, 3, 86, 115)
    assert Combo()(photo_batch).shape == (2, 3, 86, 115)


def test_crop_offsets_come_from_the_generator(photo_batch):
    crop = Crop(0.5)
    a = crop(photo_batch, torch.Generator().manual_seed(0))
    b = crop(photo_batch, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    params = {"offset": torch.tensor([[0.0, 0.0], [0.999, 0.999]])}
    out = crop.apply(photo_batch, params)
    assert torch.equal(out[0], photo_batch[0, :, :48, :64])
    assert torch.equal(out[1], photo_batch[1, :, 48:, 64:])


def test_jpeg_is_the_real_pil_codec(photo_batch):
    out = JPEG(60)(photo_batch)
    arr = (photo_batch[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=60)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    got = (out[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(("weak", "strong"), [
    (JPEG(90), JPEG(50)),
    (WebP(90), WebP(40)),
    (GaussianBlur(0.5), GaussianBlur(2.0)),
    (GaussianNoise(0.01), GaussianNoise(0.08)),
    (Rotate(2), Rotate(15)),
    (Brightness(1.1), Brightness(1.5)),
    (Contrast(1.1), Contrast(1.6)),
], ids=["jpeg", "webp", "blur", "noise", "rotate", "brightness", "contrast"])
def test_stronger_attack_changes_image_more(photo_batch, weak, strong):
    g = torch.Generator()
    weak_mse = _mse(weak(photo_batch, g.manual_seed(0)), photo_batch)
    strong_mse = _mse(strong(photo_batch, g.manual_seed(0)), photo_batch)
    assert 0 < weak_mse < strong_mse


def test_straight_through_gradient_flows_through_codecs(photo_batch):
    for codec in (JPEG(50), WebP(50), Combo()):
        x = photo_batch.clone().requires_grad_(True)
        out = codec(x, torch.Generator().manual_seed(0))
        weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert float(x.grad.abs().sum()) > 0
    x = photo_batch.clone().requires_grad_(True)
    JPEG(50)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # identity gradient


def test_differentiable_attacks_pass_gradients(photo_batch):
    for attack in (Resize(0.5), Rotate(5), GaussianBlur(1.0), Contrast(1.2)):
        x = photo_batch.clone().requires_grad_(True)
        attack(x).mean().backward()
        assert float(x.grad.abs().sum()) > 0, attack


def test_rotate_90_matches_rot90_and_fills_corners_with_zeros():
    x = torch.rand(1, 3, 33, 33, generator=torch.Generator().manual_seed(0))
    out = Rotate(90).apply(x, {})
    assert torch.allclose(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4)
    corner = Rotate(45).apply(torch.ones(1, 3, 33, 33), {})[0, :, 0, 0]
    assert torch.all(corner == 0)


def test_value_attacks_follow_their_formula(photo_batch):
    assert torch.allclose(Brightness(1.3).apply(photo_batch, {}), (photo_batch * 1.3).clamp(0, 1))
    grey_weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    flat = Contrast(0.5).apply(photo_batch, {})  # no clipping when lowering contrast
    mean_before = (photo_batch * grey_weights).sum(1).mean(dim=(1, 2))
    mean_after = (flat * grey_weights).sum(1).mean(dim=(1, 2))
    assert torch.allclose(mean_before, mean_after, atol=1e-5)
    assert float(flat.std()) < float(photo_batch.std())


def test_noise_has_the_requested_std_and_is_seeded():
    grey = torch.full((2, 3, 64, 64), 0.5)
    noise = GaussianNoise(0.05)
    params = noise.sample(2, torch.Generator().manual_seed(7))
    out = noise.apply(grey, params)
    assert abs(float((out - grey).std()) - 0.05) < 0.003
    assert not torch.equal(out[0], out[1])  # one seed per image
    assert torch.equal(out, noise.apply(grey, params))


def test_blur_kernel_size_rule():
    assert GaussianBlur(1.0).kernel_size == 7
    assert GaussianBlur(0.5).kernel_size == 5
    assert GaussianBlur(2.2).kernel_size == 15


def test_combo_is_jpeg_after_crop_after_brightness(photo_batch):
    combo = Combo(quality=75, fraction=0.9, brightness=1.2)
    params = combo.sample(2, torch.Generator().manual_seed(5))
    assert set(params) == {"crop.offset"}
    manual = JPEG(75).apply(Crop(0.9).apply(Brightness(1.2).apply(photo_batch, {}),
                                            {"offset": params["crop.offset"]}), {})
    assert torch.equal(combo.apply(photo_batch, params), manual)


def test_registry_errors_and_labels():
    with pytest.raises(ValueError, match="valid names: .*jpeg"):
        build_attack("jpg", 50)
    with pytest.raises(ValueError, match="takes no strength"):
        build_attack("combo", 3)
    with pytest.raises(ValueError, match="quality"):
        build_attack("jpeg", 0)
    assert isinstance(build_attack("identity", None), type(build_attack("none", None)))
    assert build_attack("jpeg", None).strength == 75
    assert label("jpeg", 75) == "jpeg_75"
    assert label("jpeg", 75.0) == "jpeg_75"
    assert label("resize", 0.5) == "resize_0.5"
    assert label("rotate", 5) == "rotate_5"
    assert label("noise", 0.02) == "noise_0.02"
    assert label("combo", None) == "combo"
    assert label("none", None) == "none"
    assert label("gaussian_blur", 1) == "blur_1"


def test_suites_are_buildable_with_unique_safe_labels():
    names = [n for n, _ in BENCHMARK_SUITE]
    assert names == ["none", "jpeg", "resize", "crop", "rotate", "blur", "noise", "brightness",
                     "contrast", "combo"]
    for suite in (BENCHMARK_SUITE, curve_suite()):
        labels = [label(n, s) for n, strengths in suite for s in strengths]
        assert len(labels) == len(set(labels))
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", lab) for lab in labels)
    curves = dict(curve_suite())
    assert min(curves["rotate"]) == 0 and max(curves["rotate"]) == 30
    assert min(curves["resize"]) == 0.3 and max(curves["resize"]) == 1.5
    assert min(curves["jpeg"]) == 30 and max(curves["jpeg"]) == 100
    assert set(curves) <= set(available_attacks())
