"""CNet: the seed's "vanilla convolutional network only consisting of several conv layers".

A plain stack ``conv3×3 → ReLU`` × (``n_layers`` − 1) → ``conv3×3`` at full
resolution, no skips, no down-sampling, no normalisation (the weakest surrogate
of seed 001's matrix). Any H, W (zero padding keeps the size).
"""

from __future__ import annotations

import torch
from torch import nn

from neuralmark.components.nets.unet import Output, finish


class CNet(nn.Module):
    """Plain convolutional image-to-image network.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        width: channels of every hidden layer.
        n_layers: convolutions in total (≥ 2).
        output: ``sigmoid`` (default) or ``residual``.

    Shapes:
        ``B×in_ch×H×W`` → ``B×out_ch×H×W`` in [0, 1].
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, width: int = 64, n_layers: int = 6,
                 output: Output = "sigmoid") -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"CNet needs at least 2 layers, got {n_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU()]
        for _ in range(n_layers - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, out_ch, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return finish(x, self.net(x), self.output)
