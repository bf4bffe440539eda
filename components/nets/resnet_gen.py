"""ResNet generator (Johnson et al. 2016 / CycleGAN): the Res9 / Res16 surrogates.

``c7s1-w → d2w → d4w → R4w × n_blocks → u2w → uw → c7s1-3`` with instance
norm and reflection padding; ``n_blocks`` = 9 (Res9) or 16 (Res16) in seed
001's surrogate matrix. Fully convolutional; the input is reflect-padded to a
multiple of 4 and the output cropped back, so any H, W works. Output head as
in ``unet`` (``sigmoid`` by default for surrogates).
"""

from __future__ import annotations

import torch
from torch import nn

from neuralmark.components.nets.unet import Output, finish, norm_layer, pad_to_multiple


class ResBlock(nn.Module):
    """conv3×3 → norm → ReLU → conv3×3 → norm, plus identity. B×C×H×W → same."""

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """Encoder (two stride-2 convs) → ``n_blocks`` residual blocks → decoder.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        width: channels after the first conv (64 in CycleGAN).
        n_blocks: residual blocks at 1/4 resolution (9: Res9, 16: Res16).
        norm: ``instance`` / ``batch`` / ``none``.
        output: ``sigmoid`` or ``residual``.

    Shapes:
        ``B×in_ch×H×W`` → ``B×out_ch×H×W`` in [0, 1].
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, width: int = 64, n_blocks: int = 9,
                 norm: str = "instance", output: Output = "sigmoid") -> None:
        super().__init__()
        w = width
        self.output = output
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_ch, w, 7), norm_layer(norm, w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), norm_layer(norm, 2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), norm_layer(norm, 4 * w), nn.ReLU(),
            *[ResBlock(4 * w, norm) for _ in range(n_blocks)],
            nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1),
            norm_layer(norm, 2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1),
            norm_layer(norm, w), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(w, out_ch, 7),
        )
        if output == "residual":
            last = self.net[-1]
            nn.init.normal_(last.weight, std=1e-3)  # near-identity, gradients flow
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, (h, w) = pad_to_multiple(x, 4)
        return finish(x, self.net(xp)[..., :h, :w], self.output)
