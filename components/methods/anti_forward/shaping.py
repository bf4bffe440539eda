"""Filters that shape the stamp residual and weigh the image loss (no learned parts)."""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F


def blur(x: torch.Tensor, sigma: float, border: str) -> torch.Tensor:
    """Gaussian blur of σ px (kernel 2·⌈3σ⌉ + 1), same shape."""
    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type=border)


def local_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over ``window``² neighbourhoods (edges: over the pixels inside), same shape."""
    out = F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)
    return out[..., :x.shape[-2], :x.shape[-1]]


def texture_weight(xw: torch.Tensor, mix: float, power: float) -> torch.Tensor:
    """B×1×S×S weights ``(1 − mix) + mix·m``, ``m ∝ (local luma std + 0.02)^power`` with
    mean 1 per image (std over 7×7 windows; no gradient): power −1 weighs a loss towards
    flat regions, power > 0 scales a stamp up where texture hides it."""
    gray = xw.detach().mean(dim=1, keepdim=True)
    mu, var = local_mean(gray, 7), local_mean(gray * gray, 7)
    m = ((var - mu * mu).clamp_min(0).sqrt() + 0.02).pow(power)
    return (1 - mix) + mix * m / m.mean(dim=(2, 3), keepdim=True)
