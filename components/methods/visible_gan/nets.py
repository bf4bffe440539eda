"""DeepStamp's networks: W (watermarking), V (removal autoencoder), D (discriminator), F.

Sizes follow the seed: W has four conv layers (7 channels in: image + RGBA mark; 4 out),
V five conv layers, D three layers. The classifiers F / F′ are CIFAR-style versions of the
seed's AlexNet, VGG16 and ResNet50 (torchvision's constructors where their stems fit a
32² input; never pretrained weights, none can be downloaded) plus a small ResNet for ``tiny``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class WatermarkNet(nn.Module):
    """W: ``B×7×S×S`` (image ⊕ RGBA mark canvas, [0, 1]) → ``B×4×S×S`` unbounded mark change.

    Four 3×3 convolutions; the method bounds the output (``max_delta·tanh``). The last layer
    starts small so an untrained W stays close to the static mark.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(7, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 4, 3, padding=1))
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def forward(self, images: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([images, canvas], dim=1) * 2 - 1)  # b 4 s s


class RemovalNet(nn.Module):
    """V, the attacker's removal autoencoder: marked ``B×3×S×S`` → estimate of the clean image.

    Five convolutions (down, bottleneck, up); predicts a residual added to its input.
    ``S`` must be even.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, marked: torch.Tensor) -> torch.Tensor:
        return marked + self.net(marked * 2 - 1)  # b 3 s s (clamp when judging)


class MarkDiscriminator(nn.Module):
    """D: ``B×3×S×S`` → ``B×1×(S/4)×(S/4)`` patch logits; "real" is the static blend.

    Three convolutions (two stride-2). The seed calls D's layers transposed convolutions;
    a discriminator reduces resolution, so these are strided convolutions.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


def _resnet_small(classes: int, width: int) -> nn.Module:
    down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False),
                         nn.BatchNorm2d(2 * width))
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        BasicBlock(width, width),
        BasicBlock(width, 2 * width, stride=2, downsample=down),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))


def _alexnet(classes: int, width: int) -> nn.Module:
    # torchvision's AlexNet stem (11×11 stride 4) leaves nothing of a 32² image: the
    # CIFAR-style AlexNet (5 conv, 3 fc) is written here
    w = width
    return nn.Sequential(
        nn.Conv2d(3, 4 * w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4 * w, 12 * w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12 * w, 24 * w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24 * w, 16 * w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16 * w, 16 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * w, 64 * w), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(64 * w, 64 * w), nn.ReLU(), nn.Linear(64 * w, classes))


def _scaled(channels: int, multiplier: float) -> int:
    return max(1, round(channels * multiplier))


def _torchvision_init(net: nn.Module) -> nn.Module:
    """torchvision's VGG / ResNet initialisation (He normal, fan-out; BN 1 / 0)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def _vgg16(classes: int, multiplier: float = 1.0) -> nn.Module:
    # torchvision's VGG16-BN feature stack (cfg "D": 13 convs, five 2×2 poolings; 32² →
    # 512·m×1×1), every conv's width × ``multiplier``
    cfg = [c if c == "M" else _scaled(c, multiplier) for c in torchvision.models.vgg.cfgs["D"]]
    features = torchvision.models.vgg.make_layers(cfg, batch_norm=True)
    return _torchvision_init(nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(cfg[-2], classes)))


def _resnet50(classes: int, multiplier: float = 1.0) -> nn.Module:
    # torchvision's ResNet-50 stages (its Bottleneck, [3, 4, 6, 3], expansion 4) with the
    # usual CIFAR stem (3×3 conv, no max-pool); every width × ``multiplier``. Written out
    # because torchvision's ResNet hard-codes the stage widths 64…512.
    stem = _scaled(64, multiplier)
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, padding=1, bias=False),
                               nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
    inplanes = stem
    for i, blocks in enumerate((3, 4, 6, 3)):
        planes, stride = _scaled(64 * 2**i, multiplier), 1 if i == 0 else 2
        out = planes * Bottleneck.expansion
        down = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                             nn.BatchNorm2d(out))
        layers.append(Bottleneck(inplanes, planes, stride, down))
        layers += [Bottleneck(out, planes) for _ in range(blocks - 1)]
        inplanes = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, classes)]
    return _torchvision_init(nn.Sequential(*layers))


def build_classifier(arch: str, classes: int, width: int = 16,
                     width_multiplier: float = 1.0) -> nn.Module:
    """A freshly initialised classifier: ``B×3×S×S`` in [0, 1] → ``B×classes`` logits.

    Args:
        arch: ``resnet_small``, ``alexnet``, ``vgg16`` or ``resnet50``.
        classes: number of classes.
        width: base width of ``resnet_small`` and ``alexnet`` (16: AlexNet's published
            64…384 channels).
        width_multiplier: the seed's three (``alexnet``, ``vgg16``, ``resnet50``) only:
            every layer's width times this (AlexNet's from ``width``), depth and shape
            unchanged; < 1 for a CPU-sized table.

    Raises:
        ValueError: unknown ``arch``, or a multiplier that is not in (0, 1] or is given
            for ``resnet_small`` (which has ``width`` alone).
    """
    if not 0 < width_multiplier <= 1:
        raise ValueError(f"width_multiplier must be in (0, 1], got {width_multiplier}")
    if width_multiplier != 1 and arch == "resnet_small":
        raise ValueError("resnet_small takes `width`, not width_multiplier")
    if arch == "resnet_small":
        body = _resnet_small(classes, width)
    elif arch == "alexnet":
        body = _alexnet(classes, _scaled(width, width_multiplier))
    elif arch == "vgg16":
        body = _vgg16(classes, width_multiplier)
    elif arch == "resnet50":
        body = _resnet50(classes, width_multiplier)
    else:
        raise ValueError(f"unknown classifier {arch!r}; expected resnet_small, alexnet, "
                         "vgg16 or resnet50")
    return _Centred(body)


class _Centred(nn.Module):
    """Feeds ``2x − 1`` to the wrapped classifier (inputs arrive in [0, 1])."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1)
