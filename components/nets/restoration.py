"""Restoration hosts: DnCNN, RED and VDSR, the networks a model watermark protects.

The hosts of Quan et al. (TNNLS'21, seed 002): DnCNN and RED for denoising, VDSR (and
DnCNN, "SR-DnCNN") for super-resolution. Every host maps ``B×C×H×W`` to ``B×C×H×W``
(``C`` = 1 or 3) at any ``H×W``: convolutions are 3×3, stride 1, padding 1. SR hosts take
the bicubic-upsampled low-resolution image (``components/data/restoration.sr_pairs``), as
VDSR and DnCNN-3 do, so input and output have the target size.

* :class:`DnCNN` (Zhang et al., TIP 2017): conv+ReLU, ``depth − 2`` × (conv+BN+ReLU), conv;
  residual learning, ``out = x − net(x)`` (the net predicts the noise).
* :class:`RED` (Mao et al., NIPS 2016, RED-Net): ``depth/2`` convs, ``depth/2`` transposed
  convs, symmetric skips every 2 layers; ``out = x + net(x)``.
* :class:`VDSR` (Kim et al., CVPR 2016): conv+ReLU, ``depth − 2`` × (conv+ReLU), conv;
  ``out = x + net(x)``.
* :func:`build_host` — by name, with the papers' sizes as defaults (:data:`HOST_DEFAULTS`,
  the ``full`` profile); any smaller ``depth``/``width`` for ``tiny``.

RED and VDSR start as the identity (zeroed output layer); DnCNN keeps its own init.
Outputs are not clamped: the residual is learned in the unbounded range, as in the papers
(callers clamp to [0, 1] where they need an image).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from neuralmark.components.errors import InputError

#: host names :func:`build_host` takes
HOST_ARCHS: tuple[str, ...] = ("dncnn", "red", "vdsr")
#: ``(depth, width)`` of each paper: DnCNN-S 17 layers (DnCNN-3, blind/SR: 20), RED30,
#: VDSR 20 layers; all 64 channels wide
HOST_DEFAULTS: dict[str, tuple[int, int]] = {"dncnn": (17, 64), "red": (30, 64),
                                             "vdsr": (20, 64)}
#: DnCNN's BatchNorm scale init: N(0, 2/(9·W)) with |γ| clipped up to this (its MatConvNet
#: ``DnCNN_init``: ``clipping(sqrt(2/(9*64))*randn(64,1), 0.025)``)
DNCNN_BN_MIN = 0.025


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) normal init of every conv (fan-in, ReLU), zero biases: the three papers'."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _zero_last(conv: nn.Module) -> None:
    """Zero the output layer: the residual host starts as the identity (its input)."""
    for param in conv.parameters():
        nn.init.zeros_(param)


def _check_sizes(arch: str, channels: int, depth: int, width: int, min_depth: int) -> None:
    if channels not in (1, 3):
        raise InputError(f"{arch}: channels must be 1 (gray) or 3 (RGB), got {channels}")
    if depth < min_depth:
        raise InputError(f"{arch}: depth must be >= {min_depth}, got {depth}")
    if width < 1:
        raise InputError(f"{arch}: width must be >= 1, got {width}")


class DnCNN(nn.Module):
    """DnCNN: a plain conv stack with BatchNorm that predicts the residual (the noise).

    Args:
        channels: image channels C (1 gray, 3 RGB).
        depth: conv layers D (>= 2): first conv+ReLU, ``D − 2`` conv+BN+ReLU, last conv.
        width: feature channels W.

    Shapes:
        ``B×C×H×W`` → ``B×C×H×W``; ``forward(x) = x − body(x)``.

    Init: He normal convs; BN scale γ ~ N(0, 2/(9·W)) with |γ| clipped up to 0.025 and
    β = 0, as DnCNN's own code; the middle convs have no bias (BN follows).
    """

    def __init__(self, channels: int = 3, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        _check_sizes("dncnn", channels, depth, width, 2)
        layers: list[nn.Module] = [_conv(channels, width), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [_conv(width, width, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        layers.append(_conv(width, channels))
        self.body = nn.Sequential(*layers)
        _he_init(self)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    gamma = torch.randn(width) * math.sqrt(2.0 / (9.0 * width))
                    small = gamma.abs() < DNCNN_BN_MIN
                    gamma[small] = torch.where(gamma[small] < 0, -DNCNN_BN_MIN, DNCNN_BN_MIN)
                    m.weight.copy_(gamma)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` noisy (or upsampled LR) → ``B×C×H×W`` restored."""
        return x - self.body(x)


class RED(nn.Module):
    """RED-Net: conv encoder, transposed-conv decoder, symmetric skips every 2 layers.

    Args:
        channels: image channels C (1 gray, 3 RGB).
        depth: total layers, even (>= 2): ``n = depth/2`` convs then ``n`` transposed convs.
        width: feature channels W.

    Shapes:
        ``B×C×H×W`` → ``B×C×H×W``; every layer is 3×3, stride 1, padding 1 (the paper's
        denoising setting: no pooling), so any ``H×W`` works.

    With ``h_k`` the output of encoder layer ``k`` and ``g_j`` that of decoder layer ``j``
    (``g_j`` mirrors ``h_{n−j}``), the skips are ``g_j ← ReLU(g_j + h_{n−j})`` for every
    even ``n − j >= 2``; the last skip is the input itself: ``forward(x) = x + g_n``
    (the choice where RED-Net leaves the output skip open; the residual form, like VDSR).
    Init: He normal, zero biases; the output layer zeroed (see :class:`VDSR`).
    """

    def __init__(self, channels: int = 3, depth: int = 30, width: int = 64) -> None:
        super().__init__()
        _check_sizes("red", channels, depth, width, 2)
        if depth % 2:
            raise InputError(f"red: depth must be even (as many convs as deconvs), got {depth}")
        n = depth // 2
        self.n = n
        self.encoder = nn.ModuleList(
            [_conv(channels if k == 0 else width, width) for k in range(n)])
        self.decoder = nn.ModuleList(
            [nn.ConvTranspose2d(width, channels if j == n - 1 else width, 3, padding=1)
             for j in range(n)])
        self.relu = nn.ReLU()
        _he_init(self)
        _zero_last(self.decoder[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` degraded → ``B×C×H×W`` restored."""
        feats: dict[int, torch.Tensor] = {}
        h = x
        for k, conv in enumerate(self.encoder, start=1):
            h = self.relu(conv(h))  # b W h w
            if k % 2 == 0 and k < self.n:
                feats[k] = h
        for j, deconv in enumerate(self.decoder, start=1):
            h = deconv(h)
            if j < self.n:
                skip = feats.get(self.n - j)
                h = self.relu(h if skip is None else h + skip)
        return x + h


class VDSR(nn.Module):
    """VDSR: a plain conv stack learning the residual of the bicubic-upsampled input.

    Args:
        channels: image channels C (1 gray/luma as the paper, 3 RGB).
        depth: conv layers (>= 2): conv+ReLU, ``depth − 2`` conv+ReLU, conv.
        width: feature channels W.

    Shapes:
        ``B×C×H×W`` upsampled LR → ``B×C×H×W`` HR estimate; ``forward(x) = x + body(x)``.

    Init: He normal, zero biases (the paper's), except the output conv, zeroed so the
    host starts as the identity (the choice: the paper's all-He start relies on its
    lr-0.1 SGD with gradient clipping; with the seed's Adam at 1e-3 a plain deep stack
    starts from a residual as large as the image and needs many more steps to recover).
    """

    def __init__(self, channels: int = 3, depth: int = 20, width: int = 64) -> None:
        super().__init__()
        _check_sizes("vdsr", channels, depth, width, 2)
        layers: list[nn.Module] = [_conv(channels, width), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [_conv(width, width), nn.ReLU(inplace=True)]
        layers.append(_conv(width, channels))
        self.body = nn.Sequential(*layers)
        _he_init(self)
        _zero_last(self.body[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` upsampled LR → ``B×C×H×W`` HR."""
        return x + self.body(x)


_HOSTS: dict[str, type[nn.Module]] = {"dncnn": DnCNN, "red": RED, "vdsr": VDSR}


def build_host(arch: str, channels: int = 3, depth: int | None = None,
               width: int | None = None) -> nn.Module:
    """Build a fresh restoration host by name.

    Args:
        arch: ``dncnn``, ``red`` or ``vdsr`` (any case).
        channels: image channels, 1 (gray) or 3 (RGB).
        depth: layers; ``None`` = the paper's (:data:`HOST_DEFAULTS`). RED needs an even one.
        width: feature channels; ``None`` = the paper's (64).

    Returns:
        The host (``B×C×H×W`` → ``B×C×H×W``), initialised as its class states, in train
        mode; the draw uses torch's global generator (seed it for a reproducible init).
        For SR-DnCNN the DnCNN paper's blind/SR model (DnCNN-3) has ``depth=20``.

    Raises:
        InputError: unknown ``arch``, or channels/depth/width the host cannot take.
    """
    key = str(arch).strip().lower()
    if key not in _HOSTS:
        raise InputError(f"unknown host architecture {arch!r}; expected one of {list(HOST_ARCHS)}")
    d, w = HOST_DEFAULTS[key]
    return _HOSTS[key](channels=channels, depth=d if depth is None else int(depth),
                       width=w if width is None else int(width))


def host_channels(net: nn.Module) -> int:
    """Image channels C a host takes (in-channels of its first conv).

    Raises:
        InputError: ``net`` has no convolution.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return int(m.in_channels)
    raise InputError(f"{type(net).__name__} has no convolution: not an image host")


__all__ = ["DNCNN_BN_MIN", "HOST_ARCHS", "HOST_DEFAULTS", "RED", "VDSR", "DnCNN",
           "build_host", "host_channels"]
