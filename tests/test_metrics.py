"""``components.metrics``: PSNR in plain torch agrees with torchmetrics, op for op."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from neuralmark.components.metrics import psnr


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
