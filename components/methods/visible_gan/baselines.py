"""The seed's three baselines (Dekel et al., CVPR'17): static blend, opacity, displacement.

Every stamper — these three and DeepStamp itself (``VisibleGan.stamper``) — is a callable
``stamper(images, generator) -> marked`` on ``B×3×H×W`` images in [0, 1], so the evaluation
runs them side by side on the same images with the same random draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuralmark.components.methods.visible_gan.mark import blend, place_mark


@dataclass(frozen=True)
class StaticBlend:
    """The same mark, at the same place and opacity, on every image (S).

    Attributes:
        mark: ``4×R×R`` RGBA.
        scale: mark side as a fraction of the short image side.
        beta: blend factor.
    """

    mark: torch.Tensor
    scale: float
    beta: float
    name: str = "static"

    def __call__(self, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = images.shape
        canvas = place_mark(self.mark.to(images.device), h, w, self.scale, batch=b)
        return blend(images, canvas, self.beta)


@dataclass(frozen=True)
class OpacityVariation:
    """The static mark with a random opacity per image (O): α·u, u ~ U(low, high)."""

    mark: torch.Tensor
    scale: float
    beta: float
    low: float = 0.5
    high: float = 1.0
    name: str = "opacity"

    def __call__(self, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = images.shape
        canvas = place_mark(self.mark.to(images.device), h, w, self.scale, batch=b)
        u = self.low + (self.high - self.low) * torch.rand(b, generator=generator)
        canvas = torch.cat([canvas[:, :3], canvas[:, 3:] * u.view(b, 1, 1, 1).to(canvas)], 1)
        return blend(images, canvas, self.beta)


@dataclass(frozen=True)
class Displacement:
    """The static mark moved by a random integer shift per image (D).

    Attributes:
        fraction: largest shift along each axis, as a fraction of the short image side.
    """

    mark: torch.Tensor
    scale: float
    beta: float
    fraction: float = 0.15
    name: str = "displacement"

    def __call__(self, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = images.shape
        reach = int(round(self.fraction * min(h, w)))
        shifts = torch.randint(-reach, reach + 1, (b, 2), generator=generator)
        canvas = place_mark(self.mark.to(images.device), h, w, self.scale, shifts=shifts)
        return blend(images, canvas, self.beta)
