"""CEILNet-style extractor (Fan et al. ICCV'17), the watermark extractor R of seed 001.

Seed 001 only says R "adopts the CEILNet" structure; issue #6 pins it down as
*three conv encoder layers, nine residual blocks, a deconv decoder*:

``conv3×3(w) → conv3×3/2(2w) → conv3×3/2(4w) → ResBlock(4w) × n_blocks →
deconv4×4/2(2w) → deconv4×4/2(w) → conv3×3(out)`` with batch norm and ReLU.

Choices (not in the seed): batch norm, 3×3 encoder kernels, 4×4 stride-2
deconvolutions, a sigmoid output (R's target — a logo, or the all-ones blank
image — lies in [0, 1]). Fully convolutional: reflect-padded to a multiple of
4, cropped back, so any H, W works.
"""

from __future__ import annotations

import torch
from torch import nn

from neuralmark.components.nets.resnet_gen import ResBlock
from neuralmark.components.nets.unet import Output, finish, norm_layer, pad_to_multiple


class CEILNet(nn.Module):
    """Three-conv encoder, ``n_blocks`` residual blocks, two-deconv decoder.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        width: channels of the first conv.
        n_blocks: residual blocks at 1/4 resolution (9 in the seed's setting).
        norm: ``batch`` / ``instance`` / ``none``.
        output: ``sigmoid`` (default) or ``residual``.

    Shapes:
        ``B×in_ch×H×W`` → ``B×out_ch×H×W`` in [0, 1].
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, width: int = 32, n_blocks: int = 9,
                 norm: str = "batch", output: Output = "sigmoid") -> None:
        super().__init__()
        w = width
        self.output = output
        self.encoder = nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1), norm_layer(norm, w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), norm_layer(norm, 2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), norm_layer(norm, 4 * w), nn.ReLU(),
        )
        self.blocks = nn.Sequential(*[ResBlock(4 * w, norm) for _ in range(n_blocks)])
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), norm_layer(norm, 2 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), norm_layer(norm, w), nn.ReLU(),
            nn.Conv2d(w, out_ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, (h, w) = pad_to_multiple(x, 4)
        y = self.decoder(self.blocks(self.encoder(xp)))            # b out H' W'
        return finish(x, y[..., :h, :w], self.output)
