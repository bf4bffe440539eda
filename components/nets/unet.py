"""UNet (Ronneberger et al. 2015) for image-to-image tasks: B×3×H×W in [0,1] → same.

Used by ``output_mark`` (seed 001) as the protected model M, the embedder H and
the "UNet" surrogate. Fully convolutional; any H, W: the input is reflect-padded
to a multiple of ``2**depth`` and the output cropped back, so odd sizes work.

Output head (``output``):

* ``"sigmoid"``: ``sigmoid(head(x))`` — a free image in (0, 1);
* ``"residual"``: ``clamp(x + head(x), 0, 1)`` — identity at initialisation
  (the last conv starts near zero), which is what an embedder that must change
  its input invisibly, or a restoration model, wants.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Output = Literal["sigmoid", "residual"]


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch`` / ``instance`` (affine) / ``group`` / ``none`` normalisation for ``channels``.

    ``group``: ``nn.GroupNorm`` with gcd(8, channels) groups, per image like ``instance``
    (no running statistics: training and eval mode compute the same function), but each
    group's statistics span several channels.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected batch, instance, group or none")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``x`` (B×C×H×W) on the bottom/right to a multiple of ``multiple``.

    Returns:
        The padded tensor and the original ``(H, W)`` to crop back to.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def finish(x: torch.Tensor, head: torch.Tensor, output: Output) -> torch.Tensor:
    """Apply the output head: ``sigmoid(head)`` or ``clamp(x + head, 0, 1)``."""
    if output == "sigmoid":
        return torch.sigmoid(head)
    if output == "residual":
        return (x + head).clamp(0.0, 1.0)
    raise ValueError(f"unknown output {output!r}; expected sigmoid or residual")


class DoubleConv(nn.Module):
    """(conv3×3 → norm → LeakyReLU) × 2. Shapes: B×in×H×W → B×out×H×W."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1), norm_layer(norm, out_ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), norm_layer(norm, out_ch),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    """UNet with ``depth`` down/up levels, ``width`` channels at full resolution.

    Channels double at every level (capped at ``8·width``); skips concatenate.

    Args:
        in_ch: input channels (3).
        out_ch: output channels (3).
        width: channels of the first level.
        depth: number of 2× down-samplings (≥ 1).
        norm: ``batch`` / ``instance`` / ``none``.
        output: ``sigmoid`` or ``residual`` (needs ``in_ch == out_ch``).

    Shapes:
        ``B×in_ch×H×W`` (any H, W ≥ 2) → ``B×out_ch×H×W`` in [0, 1].
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, width: int = 32, depth: int = 4,
                 norm: str = "batch", output: Output = "sigmoid") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"UNet depth must be ≥ 1, got {depth}")
        if output == "residual" and in_ch != out_ch:
            raise ValueError("a residual UNet needs in_ch == out_ch")
        self.depth, self.output = depth, output
        chans = [min(width * 2**i, width * 8) for i in range(depth + 1)]
        self.inc = DoubleConv(in_ch, chans[0], norm)
        self.downs = nn.ModuleList(DoubleConv(chans[i], chans[i + 1], norm) for i in range(depth))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.up_convs = nn.ModuleList(
            DoubleConv(2 * chans[i], chans[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_ch, 1)
        if output == "residual":
            # near-identity at initialisation; not exactly zero, so gradients reach
            # every layer from the first step
            nn.init.normal_(self.head.weight, std=1e-3)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, (h, w) = pad_to_multiple(x, 2**self.depth)
        skips = [self.inc(xp)]                                   # b c0 H W
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))       # b c_{i+1} H/2^i W/2^i
        y = skips.pop()
        for up, conv in zip(self.ups, self.up_convs, strict=True):
            y = conv(torch.cat([up(y), skips.pop()], dim=1))
        head = self.head(y)[..., :h, :w]                          # b out H W
        return finish(x, head, self.output)
