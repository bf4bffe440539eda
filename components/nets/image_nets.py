"""Factory of the image-to-image networks of seed 001 (protected models, surrogates).

``build_image_net(arch, width)`` with ``arch`` one of :data:`SURROGATE_ARCHS`:

* ``cnet``: plain conv stack (``CNet``, 6 layers);
* ``res9`` / ``res16``: ResNet generators with 9 / 16 residual blocks;
* ``unet``: ``UNet`` (depth 3 by default).

All map ``B×3×H×W`` in [0, 1] to the same shape in [0, 1]; ``output`` picks the
head (``sigmoid``, the default for surrogates, or ``residual``).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from neuralmark.components.nets.cnet import CNet
from neuralmark.components.nets.resnet_gen import ResNetGenerator
from neuralmark.components.nets.unet import Output, UNet

SurrogateArch = Literal["cnet", "res9", "res16", "unet"]
SURROGATE_ARCHS: tuple[str, ...] = ("cnet", "res9", "res16", "unet")


def build_image_net(arch: str, width: int = 32, output: Output = "sigmoid",
                    depth: int = 3) -> nn.Module:
    """Build one image-to-image network.

    Args:
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet``.
        width: base channel count.
        output: ``sigmoid`` or ``residual`` head.
        depth: UNet depth (ignored by the other architectures).

    Returns:
        A fresh ``nn.Module`` (B×3×H×W → B×3×H×W in [0, 1]).

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch == "cnet":
        return CNet(width=width, n_layers=6, output=output)
    if arch == "res9":
        return ResNetGenerator(width=width, n_blocks=9, output=output)
    if arch == "res16":
        return ResNetGenerator(width=width, n_blocks=16, output=output)
    if arch == "unet":
        return UNet(width=width, depth=depth, output=output)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {list(SURROGATE_ARCHS)}")
