"""PatchGAN discriminator (Isola et al. 2017): B×3×H×W → B×1×h×w real/fake logits.

``conv4×4/2(w) → [conv4×4/2(2^i·w) → norm → LeakyReLU] × (n_layers − 1) →
conv4×4/1 → norm → LeakyReLU → conv4×4/1(1)``. Each logit sees one patch (70×70
px with ``n_layers=3``); the loss averages over patches. Inputs smaller than the
receptive field still give at least a 1×1 map (convs are padded).
:func:`gan_bce` is the non-saturating GAN loss on those logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.nets.unet import norm_layer


class PatchDiscriminator(nn.Module):
    """Patch-wise real/fake classifier.

    Args:
        in_ch: input channels.
        width: channels of the first conv.
        n_layers: stride-2 convolutions.
        norm: ``batch`` / ``instance`` / ``none``.

    Shapes:
        ``B×in_ch×H×W`` (H, W ≥ 8) → ``B×1×h×w`` logits (not probabilities).
    """

    def __init__(self, in_ch: int = 3, width: int = 64, n_layers: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, n_layers):
            nxt = width * min(2**i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), norm_layer(norm, nxt),
                       nn.LeakyReLU(0.2)]
            ch = nxt
        nxt = width * min(2**n_layers, 8)
        layers += [nn.Conv2d(ch, nxt, 4, stride=1, padding=2), norm_layer(norm, nxt),
                   nn.LeakyReLU(0.2), nn.Conv2d(nxt, 1, 4, stride=1, padding=2)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1)  # b 1 h w


def gan_bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss: BCE of patch ``logits`` (B×1×h×w) against all-real / all-fake.

    The discriminator minimises ``gan_bce(D(real), True) + gan_bce(D(fake), False)``; the
    generator minimises ``gan_bce(D(fake), True)``. Returns a scalar (mean over patches).
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
