"""A perceptual loss that needs no downloaded weights (stand-in for seed 001's VGG loss).

Seed 001 uses ``ℓ_vgg``: the L2 distance of VGG ``conv2_2`` features. No
pretrained VGG can be downloaded here, so the project's perceptual term is the
documented *non-learned* substitute ``"structural"``:

``ℓ_perc(x, y) = (1 − SSIM_7(x, y)) + Σ_l 2^{-l} · |L_l(x) − L_l(y)|₁ + |∇x − ∇y|₁``

* ``SSIM_7``: SSIM with a 7×7 box window (luminance/contrast/structure
  agreement — what VGG's early layers mostly respond to);
* ``L_l``: level ``l`` of a Laplacian pyramid (``levels`` band-pass images:
  ``x − up(down(x))`` with 2× average-pool down-sampling and bilinear
  up-sampling, plus the final low-pass): differences per frequency band, like a
  conv2-level feature map's multi-scale edges;
* ``∇``: horizontal and vertical finite differences: edge fidelity.

Every term is 0 for identical images, differentiable and batched, and built
from pooling ops only, so it costs about as much as one small conv layer (a
training step on CPU must stay cheap). It is not a learned perceptual metric:
it cannot tell texture "styles" apart as VGG can, which matters little here (H
must keep B′ close to B; surrogates use it as one of the seed's loss options).
Shapes: ``B×C×H×W`` in [0, 1], any H, W ≥ 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def laplacian_bands(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass images of a Laplacian pyramid.

    Args:
        x: B×C×H×W.
        levels: number of band-pass levels (the last low-pass residual is appended).

    Returns:
        Up to ``levels + 1`` tensors B×C×⌈H/2^l⌉×⌈W/2^l⌉ (fewer for tiny images).
    """
    bands = []
    cur = x
    for _ in range(levels):
        if min(cur.shape[-2:]) < 2:
            break
        low = F.avg_pool2d(cur, 2, ceil_mode=True)                           # b c h/2 w/2
        up = F.interpolate(low, size=cur.shape[-2:], mode="bilinear", align_corners=False)
        bands.append(cur - up)
        cur = low
    bands.append(cur)
    return bands


def ssim_box(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM with a ``window``² box window (data range 1). Scalar."""
    pool = {"kernel_size": window, "stride": 1, "padding": window // 2,
            "count_include_pad": False}
    mx, my = F.avg_pool2d(x, **pool), F.avg_pool2d(y, **pool)
    vx = F.avg_pool2d(x * x, **pool) - mx * mx
    vy = F.avg_pool2d(y * y, **pool) - my * my
    cxy = F.avg_pool2d(x * y, **pool) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def structural_perceptual_loss(x: torch.Tensor, y: torch.Tensor, levels: int = 3,
                               window: int = 7) -> torch.Tensor:
    """The non-learned perceptual loss of the module docstring (scalar, mean over the batch).

    Args:
        x: B×C×H×W in [0, 1] (e.g. B′).
        y: B×C×H×W in [0, 1] (e.g. B).
        levels: Laplacian-pyramid levels.
        window: SSIM window (odd; shrunk for tiny images).

    Returns:
        Scalar loss ≥ 0, 0 iff ``x == y``.
    """
    if x.shape != y.shape:
        raise ValueError(f"perceptual loss needs equal shapes, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    win = max(1, min(window, (min(x.shape[-2:]) // 2) * 2 - 1))
    ssim_term = 1 - ssim_box(x, y, win)
    lap = sum(2.0**-i * (a - b).abs().mean()
              for i, (a, b) in enumerate(zip(laplacian_bands(x, levels),
                                             laplacian_bands(y, levels), strict=True)))
    d = x - y
    grad = ((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
            + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())
    return ssim_term + lap + grad


class StructuralPerceptualLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`structural_perceptual_loss` (no parameters)."""

    def __init__(self, levels: int = 3, window: int = 7) -> None:
        super().__init__()
        self.levels, self.window = levels, window

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return structural_perceptual_loss(x, y, self.levels, self.window)
