"""Factory of the image-to-image networks of seed 001 (protected models, surrogates).

``build_image_net(arch, width)`` with ``arch`` one of :data:`SURROGATE_ARCHS`:

* ``cnet``: plain conv stack (``CNet``, 6 layers);
* ``res9`` / ``res16``: ResNet generators with 9 / 16 residual blocks;
* ``unet``: ``UNet`` (depth 3 by default).

All map ``B×3×H×W`` in [0, 1] to the same shape in [0, 1]; ``output`` picks the
head (``sigmoid``, the default for surrogates, or ``residual``). :func:`apply_net`
runs any such network over a large batch in eval mode, in chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
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


@torch.no_grad()
def apply_net(net: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              batch_size: int = 32, device: torch.device | None = None) -> torch.Tensor:
    """Run an image-to-image ``net`` over ``x`` in eval mode, ``batch_size`` images at a time.

    Args:
        net: a B×3×H×W → B×3×H×W module (or any callable).
        x: N×3×H×W input batch (any device).
        batch_size: images per forward pass.
        device: where to run (default: the device of ``net``'s first parameter, else CPU).

    Returns:
        N×3×H×W outputs on the CPU; a module's train/eval mode is restored afterwards.
    """
    is_module = isinstance(net, nn.Module)
    if device is None:
        params = list(net.parameters()) if is_module else []
        device = params[0].device if params else torch.device("cpu")
    was_training = is_module and net.training
    if is_module:
        net.eval()
    out = [net(x[i:i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
    if was_training:
        net.train()
    return torch.cat(out) if out else x[:0].clone()
