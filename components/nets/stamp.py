"""DeepRAFT encoder and scanner (seed 004): an invisible stamp and its detector.

Both are fully convolutional (global pooling in the scanner), so any H, W
divisible by 8 works; the method runs them at its working size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv → GroupNorm → ReLU. Shapes: B×in×H×W → B×out×H/stride×W/stride."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
                         nn.GroupNorm(min(8, out_ch), out_ch), nn.ReLU())


class StampEncoder(nn.Module):
    """Image (+ optional payload bits) → stamp residual.

    A small U-Net at half resolution (a stride-2 stem, two more down-samplings,
    skip connections), its output up-sampled ×2: the stamp has no energy at the
    highest frequencies, which JPEG and blur remove anyway, and the encoder
    costs a quarter of a full-resolution one (this runs on CPUs). With
    ``payload_bits`` the bits are mapped to a per-channel bias of the
    bottleneck (the encoder is conditioned on the payload).

    Shapes: ``x`` B×3×H×W in [0, 1] (H, W divisible by 8), ``bits`` B×k in
    {0, 1} → raw residual B×3×H×W in (−1, 1) (``tanh``); the method scales it
    by ``strength``.

    Args:
        width: channels of the first level (the bottleneck has 4×).
        payload_bits: k (0: no payload input).
    """

    def __init__(self, width: int = 32, payload_bits: int = 0) -> None:
        super().__init__()
        w = width
        self.payload_bits = payload_bits
        self.inc = _conv(3, w, stride=2)
        self.down1 = _conv(w, 2 * w, stride=2)
        self.down2 = _conv(2 * w, 4 * w, stride=2)
        self.mid = _conv(4 * w, 4 * w)
        self.bits = nn.Linear(payload_bits, 4 * w) if payload_bits else None
        self.up1 = _conv(4 * w + 2 * w, 2 * w)
        self.up2 = _conv(2 * w + w, w)
        self.out = nn.Conv2d(w, 3, 1)
        # a visible start (|residual| ~ a few % of strength): the scanner has a signal to
        # find from step 0; the image loss then hides it (std 1e-2 took 100+ steps to
        # leave chance level, and sometimes never did)
        nn.init.normal_(self.out.weight, std=0.1)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, bits: torch.Tensor | None = None) -> torch.Tensor:
        h0 = self.inc(2 * x - 1)                                         # b w h/2 w/2
        h1 = self.down1(h0)                                              # b 2w h/4 w/4
        h2 = self.down2(h1)                                              # b 4w h/8 w/8
        if self.bits is not None:
            if bits is None:
                raise ValueError(f"this encoder carries {self.payload_bits} payload bits; "
                                 "pass bits")
            h2 = h2 + self.bits(2 * bits - 1)[:, :, None, None]
        h2 = self.mid(h2)
        u1 = F.interpolate(h2, size=h1.shape[-2:], mode="bilinear", align_corners=False)
        u1 = self.up1(torch.cat([u1, h1], dim=1))                        # b 2w h/4 w/4
        u2 = F.interpolate(u1, size=h0.shape[-2:], mode="bilinear", align_corners=False)
        u2 = self.up2(torch.cat([u2, h0], dim=1))                        # b w h/2 w/2
        r = F.interpolate(self.out(u2), size=x.shape[-2:], mode="bilinear",
                          align_corners=False)                           # b 3 h w
        return torch.tanh(r)


class Scanner(nn.Module):
    """CNN classifier: stamped (class 1) or clean (class 0), plus optional payload logits.

    Five stride-2 3×3 conv blocks, global average pooling, a linear head.

    Shapes: ``x`` B×3×H×W in [0, 1] → B×(2 + payload_bits) logits; ``[:, :2]`` are
    the class logits, ``[:, 2:]`` the payload bit logits.

    Args:
        width: channels of the first block (doubling to 8× at the last).
        payload_bits: k (0: classifier only).
    """

    def __init__(self, width: int = 32, payload_bits: int = 0) -> None:
        super().__init__()
        w = width
        self.payload_bits = payload_bits
        self.features = nn.Sequential(
            _conv(3, w, 2), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2),
            _conv(4 * w, 4 * w, 2), _conv(4 * w, 8 * w, 2),
        )
        self.head = nn.Linear(8 * w, 2 + payload_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(2 * x - 1).mean(dim=(2, 3))                    # b 8w
        return self.head(f)                                              # b 2+k
