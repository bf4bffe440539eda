"""Verification of a visible mark: normalised cross-correlation with the mark's template.

The mark adds ``β·α·(c − x)`` to an image. Its template is that change on a mid-grey
image, high-passed (image minus its Gaussian blur, kornia) so smooth image content does not
count; the statistic of an image is the largest normalised cross-correlation (NCC, over the
three colour channels) between its high-passed view and the template, over every shift of
up to ``radius`` px (a displaced or W-perturbed mark is still found). Everything runs at the
square ``detect_size`` view of the image's centred square (``detection_view``): the mark is
a square sized by the short side, so this view shows it square at any aspect ratio. Clean
images score near 0, marked ones near 1; the p-value is empirical against clean images
(``neuralmark.components.stats.empirical_p_value``).

Own code for the NCC (a few conv2d calls): kornia has no template matching.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from neuralmark.components.methods.base import resize_square
from neuralmark.components.methods.visible_gan.mark import mark_box, place_mark

HIGHPASS_SIGMA = 1.5


def detection_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centred square of side ``min(H, W)``, resized to ``size``: B×3×H×W → B×3×size×size."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize_square(images[..., top:top + side, left:left + side], size)


def highpass(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its Gaussian blur (σ = 1.5 px): B×C×H×W → same shape."""
    return x - kornia.filters.gaussian_blur2d(x, (7, 7), (HIGHPASS_SIGMA, HIGHPASS_SIGMA),
                                              border_type="reflect")


def template(mark: torch.Tensor, size: int, scale: float, beta: float) -> torch.Tensor:
    """The zero-mean, unit-norm template of the mark at a ``size²`` view: ``3×side×side``."""
    canvas = place_mark(mark, size, size, scale)                      # 1 4 s s
    change = beta * canvas[:, 3:] * (canvas[:, :3] - 0.5)             # 1 3 s s
    top, left, side = mark_box(size, size, scale)
    t = highpass(change)[0, :, top:top + side, left:left + side]
    t = t - t.mean()
    return t / t.norm().clamp_min(1e-8)


def ncc_statistic(views: torch.Tensor, tmpl: torch.Tensor, scale: float,
                  radius: int) -> torch.Tensor:
    """Largest NCC of the template in each view, over shifts of up to ``radius`` px.

    Args:
        views: ``B×3×S×S`` images in [0, 1] at the detection size.
        tmpl: ``3×side×side`` from ``template``.
        scale: mark scale (where the template sits).
        radius: search radius in px.

    Returns:
        ``B`` statistics in [−1, 1].
    """
    s = views.shape[-1]
    top, left, side = mark_box(s, s, scale)
    hp = highpass(views)
    pad = radius
    hp = F.pad(hp, (pad, pad, pad, pad))
    region = hp[:, :, top:top + side + 2 * pad, left:left + side + 2 * pad]  # b 3 side+2r ..
    num = F.conv2d(region, tmpl[None])                                     # b 1 2r+1 2r+1
    ones = torch.ones(1, 3, side, side, dtype=views.dtype, device=views.device)
    sums = F.conv2d(region, ones)
    sq = F.conv2d(region * region, ones)
    n = 3 * side * side
    # NCC = Σ t·(p − mean p) / ‖p − mean p‖ with Σ t = 0 and ‖t‖ = 1
    energy = (sq - sums * sums / n).clamp_min(1e-10).sqrt()
    return (num / energy).flatten(1).amax(dim=1)
