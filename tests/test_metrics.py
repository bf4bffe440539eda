"""``components.metrics``: PSNR in plain torch agrees with torchmetrics, op for op."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from neuralmark.components.metrics import block_psnr, psnr, worst_block_psnr


@pytest.mark.parametrize("shape", [(4, 3, 64, 64), (2, 1, 17, 33), (1, 3, 256, 200)])
def test_psnr_is_torchmetrics_psnr_exactly(photo, shape):
    torch.manual_seed(0)
    b, c, h, w = shape
    clean = torch.from_numpy(photo[:h, :w, :c].copy()).permute(2, 0, 1).float() / 255
    clean = clean.expand(b, c, h, w)
    noisy = (clean + 0.01 * torch.randn(shape)).clamp(0, 1)
    expected = peak_signal_noise_ratio(noisy, clean, data_range=1.0, reduction="none",
                                       dim=(1, 2, 3))
    assert torch.equal(psnr(noisy, clean), expected)


def test_psnr_of_identical_images_is_infinite_and_shapes_are_checked(photo):
    x = torch.from_numpy(photo[:32, :32].copy()).permute(2, 0, 1)[None].float() / 255
    assert math.isinf(float(psnr(x, x)[0]))
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(x, x[..., :16])


def test_block_psnr_finds_a_blotch_the_image_psnr_averages_away(photo):
    x = torch.from_numpy(photo[:128, :96].copy()).permute(2, 0, 1)[None].float() / 255
    y = x.clone()
    y[..., 32:64, 64:96] = (y[..., 32:64, 64:96] + 0.1).clamp(0, 1)  # one 32² blotch
    blocks = block_psnr(y, x, 32)
    assert blocks.shape == (1, 4, 3)
    # the changed tile alone is finite and equals the PSNR of that tile on its own
    expected = psnr(y[..., 32:64, 64:96], x[..., 32:64, 64:96])
    assert torch.isclose(blocks[0, 1, 2], expected, atol=1e-4)
    assert torch.isinf(blocks).sum() == 11
    worst = worst_block_psnr(y, x, 32)
    assert torch.isclose(worst, expected, atol=1e-4)
    # the whole image's PSNR is 10·log10(12) ≈ 10.8 dB higher (1 of 12 tiles changed)
    assert torch.isclose(psnr(y, x) - worst, torch.tensor(10 * math.log10(12)), atol=1e-3)


def test_block_psnr_drops_partial_edge_tiles_and_checks_inputs(photo):
    x = torch.from_numpy(photo[:70, :40].copy()).permute(2, 0, 1)[None].float() / 255
    y = x.clone()
    y[..., 64:, :] = 0.5  # only in the partial bottom row: never seen
    assert block_psnr(y, x, 32).shape == (1, 2, 1)
    assert torch.isinf(worst_block_psnr(y, x, 32)).all()
    with pytest.raises(ValueError, match="H, W >= 64"):
        block_psnr(x, x, 64)
    with pytest.raises(ValueError, match="block must be"):
        block_psnr(x, x, 0)
    with pytest.raises(ValueError, match="equal shapes"):
        worst_block_psnr(x, x[..., :32])
