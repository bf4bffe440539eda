"""The forger's optimiser: batched L2 PGD within a PSNR budget (issue #17's attacks).

torchattacks' PGDL2 is written for classifiers (a cross-entropy on class labels, an ε in
pixel units); the forgery attacks minimise their own losses (a hinge toward 32 bits, a
feature distance) within the method's own embedding PSNR, so this is a few lines of our own:
per image, a normalised-gradient step of a fifth of the radius (cosine-decayed), projected
back into the L2 ball of ``PSNR ≥ budget_db`` and into [0, 1]. No EoT: a forgery only has to
verify as delivered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def psnr_radius(shape: torch.Size | tuple[int, ...], budget_db: float) -> float:
    """L2 radius of ``PSNR ≥ budget_db`` for one C×H×W image (a hair inside it)."""
    return math.sqrt(math.prod(shape)) * 10 ** (-(budget_db + 0.05) / 20)


def l2_pgd(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, budget_db: float,
           steps: int) -> torch.Tensor:
    """Minimise ``loss`` over ``x + delta`` with ``PSNR(x + delta, x) ≥ budget_db``.

    Args:
        loss: images B×3×H×W → per-image losses B (differentiable).
        x: B×3×H×W images in [0, 1].
        budget_db: least PSNR of the result to ``x``.
        steps: iterations.

    Returns:
        B×3×H×W in [0, 1], detached (not rounded).
    """
    radius = psnr_radius(x.shape[1:], budget_db)
    delta = torch.zeros_like(x)
    for t in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss((x + delta).clamp(0, 1)).sum(), delta)
        with torch.no_grad():
            step = 0.2 * radius * 0.5 * (1 + math.cos(math.pi * t / steps))
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta - step * grad / norm
            scale = (radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * scale.view(-1, 1, 1, 1)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def hinge_toward(logits: torch.Tensor, bits: torch.Tensor, margin: float = 3.0) -> torch.Tensor:
    """Per-image hinge ``mean relu(margin − (2b − 1)·logit)``: B×n logits, B×n bits → B."""
    return torch.relu(margin - (2 * bits - 1) * logits).mean(dim=1)
