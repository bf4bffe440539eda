"""SqueezeNet-like decoder: image → k bit logits (pgd_signer, seed 000)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Fire(nn.Module):
    """SqueezeNet fire module: 1×1 squeeze, then parallel 1×1 and 3×3 expands.

    Shapes: ``B×in_ch×H×W`` → ``B×2·expand×H×W``.
    """

    def __init__(self, in_ch: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act(self.squeeze(x))
        return self.act(torch.cat([self.expand1(s), self.expand3(s)], dim=1))


class SqueezeDecoder(nn.Module):
    """Decoder CNN mapping ``B×3×H×W`` images in [0,1] to ``B×n_bits`` logits.

    Fully convolutional with global average pooling, so any H, W ≥ 32 works;
    the method feeds it its working size. ``width`` scales every layer
    (width=32 → ~0.3 M parameters).
    """

    def __init__(self, n_bits: int = 32, width: int = 32, input_stride: int = 1) -> None:
        super().__init__()
        w = width
        #: anti-aliased down-sampling before the first conv: the decoder then only
        #: sees (and PGD only writes) low/mid frequencies, which survive JPEG,
        #: blur, noise and resizing
        self.input_stride = input_stride
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1), nn.ReLU(),          # /2
            Fire(w, w // 2, w),                                           # 2w
            nn.MaxPool2d(3, stride=2, padding=1),                         # /4
            Fire(2 * w, w // 2, 3 * w // 2),                              # 3w
            Fire(3 * w, 3 * w // 4, 2 * w),                               # 4w
            nn.MaxPool2d(3, stride=2, padding=1),                         # /8
            Fire(4 * w, w, 3 * w),                                        # 6w
            nn.MaxPool2d(3, stride=2, padding=1),                         # /16
            Fire(6 * w, 3 * w // 2, 4 * w),                               # 8w
        )
        # Whitening of the pooled features (fitted on clean images, as in SSL
        # watermarking, Fernandez et al. 2022): directions that natural images
        # barely use are amplified, so PGD can move every bit within a 40 dB
        # budget even before EM training has shaped the features.
        self.register_buffer("feat_mean", torch.zeros(8 * w))
        self.register_buffer("feat_whiten", torch.eye(8 * w))
        self.head = nn.Linear(8 * w, n_bits)
        nn.init.orthogonal_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # He init with zero biases: PyTorch's default shrinks the signal ~3× per
        # layer, leaving a fresh decoder almost blind to its input.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``B×8w`` of ``B×3×H×W`` images in [0,1]."""
        if self.input_stride > 1:
            h, w = x.shape[-2:]
            x = F.interpolate(x, size=(h // self.input_stride, w // self.input_stride),
                              mode="bilinear", antialias=True, align_corners=False)
        return self.pooled_input(x)

    def pooled_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``B×8w`` of images already down-sampled by ``input_stride``."""
        # per-image standardisation: brightness and contrast changes (and most of
        # a global colour cast) do not move the features
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return self.features((x - mean) / (std + 0.02)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.pooled(x) - self.feat_mean) @ self.feat_whiten  # b 8w
        return self.head(f)                                       # b k

    @torch.no_grad()
    def fit_whitening(self, feats: torch.Tensor, shrink: float = 1e-3) -> None:
        """Set the whitening from pooled features ``N×8w`` of clean (augmented) images."""
        mu = feats.mean(0)
        cov = torch.cov((feats - mu).T)
        cov = cov + shrink * cov.diagonal().mean() * torch.eye(cov.shape[0], device=cov.device)
        ev, vecs = torch.linalg.eigh(cov)
        self.feat_mean.copy_(mu)
        self.feat_whiten.copy_(vecs @ torch.diag(ev.clamp_min(1e-12).rsqrt()) @ vecs.T)
