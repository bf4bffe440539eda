"""The copyright visualizer R(S; φ) → the owner's logo (the seed's eq. (2)).

R is a small conv net trained *after* embedding: on S (positives, with small Gaussian
noise, so a verification output close to S still shows the logo) towards the logo I, and
on outputs that are not the owner's verification (the unmarked host's output on K, other
keys' S0, the marked host on other keys' triggers) towards a blank (all-zero) image, so
R shows the logo only for a real verification output. The seed trains only the positive
term (‖R(S) − I‖²); the negatives are the choice that makes "R shows the logo" evidence.

* :func:`builtin_logo` — a © glyph (ring and C), 1 on the glyph, 0 elsewhere.
* :func:`load_logo` — ``"builtin"`` or a PNG/JPEG path, as ``1×L×L`` grey in [0, 1].
* :class:`CopyrightVisualizer` — ``B×C×T×T`` → ``B×1×L×L`` (sigmoid), any T ≥ 8.
* :func:`train_visualizer` — Adam (the seed: lr 1e-3, defaults) on positives/negatives.
* :func:`logo_similarity` — ``1 − MSE(R, I) / MSE(blank, I)``: 1 is the logo, 0 (or
  below) is as far as a blank; the logo "shows" at ≥ :data:`SHOWN`.
* :func:`render` — R(M′(K)) as a ``1×L×L`` image for ``verify-model`` to save.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks

#: logo_similarity at or above which the logo counts as shown
SHOWN = 0.5


def builtin_logo(size: int = 32) -> torch.Tensor:
    """A © glyph: ``1×size×size``, 1 on the ring and the C, 0 elsewhere."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(t, t, indexing="ij")
    r = (x ** 2 + y ** 2).sqrt()
    ring = (r > 0.78) & (r < 0.95)
    angle = torch.atan2(y, x).abs()
    c = (r > 0.3) & (r < 0.5) & (angle > 0.7)
    return (ring | c).float()[None]


def load_logo(source: str | os.PathLike, size: int) -> torch.Tensor:
    """The copyright image I: ``"builtin"`` or an image file, as ``1×size×size`` in [0, 1].

    Raises:
        InputError: a missing or unreadable file, or a flat image (nothing to show).
    """
    if str(source) == "builtin":
        return builtin_logo(size)
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"logo {path} does not exist (give a PNG/JPEG or 'builtin')")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            grey = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"logo {path} is not a readable image: {err}") from err
    logo = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).float()
    logo = logo.reshape(1, size, size) / 255
    if float(logo.std()) < 1 / 255:
        raise InputError(f"logo {path} is flat: a blank logo cannot be told from 'no logo'")
    return logo


class CopyrightVisualizer(nn.Module):
    """R: two stride-2 convs, a pooled ``L/4`` grid, two ×2 upsampling convs, sigmoid.

    Args:
        channels: image channels C of S.
        width: feature channels.
        logo_size: L (a multiple of 4).

    Shapes:
        ``B×C×T×T`` (T ≥ 8) → ``B×1×L×L`` in (0, 1).
    """

    def __init__(self, channels: int = 1, width: int = 16, logo_size: int = 32) -> None:
        super().__init__()
        if logo_size % 4:
            raise InputError(f"logo_size must be a multiple of 4, got {logo_size}")
        self.encode = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(logo_size // 4))
        self.decode = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``B×C×T×T`` → ``B×1×L×L``."""
        return torch.sigmoid(self.decode(self.encode(s.clamp(0, 1))))


def logo_similarity(shown: torch.Tensor, logo: torch.Tensor) -> torch.Tensor:
    """``1 − MSE(shown, I) / MSE(0, I)`` per item: 1 = the logo, ≤ 0 = blank or worse.

    Args:
        shown: ``B×1×L×L`` visualizer outputs.
        logo: ``1×L×L`` the logo I.
    """
    err = (shown - logo).pow(2).flatten(1).mean(1)  # b
    return 1 - err / logo.pow(2).mean().clamp_min(1e-12)


def train_visualizer(net: CopyrightVisualizer, s: torch.Tensor, negatives: torch.Tensor,
                     logo: torch.Tensor, steps: int, lr: float = 1e-3, batch_size: int = 16,
                     noise: float = 0.02, generator: torch.Generator | int = 0,
                     device: torch.device | str = "cpu",
                     callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
    """Train R in place: S (+ N(0, σ²), σ ~ U(0, ``noise``)) → logo, negatives → blank.

    Args:
        net: the visualizer.
        s: ``1×C×T×T`` the verification image S.
        negatives: ``N×C×T×T`` outputs that must stay blank.
        logo: ``1×L×L`` the logo I.
        steps: Adam steps; half of each batch positives, half negatives.
        lr: learning rate (the seed: 1e-3).
        batch_size: items per step (>= 2).
        noise: largest σ of the positives' noise.
        generator: draws (an int seeds a fresh CPU generator).
        device: where to train.
        callbacks: ``visualizer_loss`` every ~10% of the steps; progress.

    Returns:
        ``loss_end``, ``shown_s`` (logo similarity on S), ``shown_negative_max``.
    """
    if negatives.ndim != 4 or negatives.shape[1:] != s.shape[1:]:
        raise InputError(f"visualizer negatives must be N×{tuple(s.shape[1:])}, got "
                         f"{tuple(negatives.shape)}")
    g = generator if isinstance(generator, torch.Generator) else \
        torch.Generator().manual_seed(int(generator))
    cb = Callbacks.of(callbacks)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    half = max(1, batch_size // 2)
    s_dev, neg_dev = s.to(device), negatives.to(device)
    target = torch.cat([logo[None].expand(half, -1, -1, -1),
                        torch.zeros((half, *logo.shape))]).to(device)  # 2h 1 l l
    every = max(1, steps // 10)
    loss = torch.zeros(())
    for step in range(steps):
        sig = torch.rand((half, 1, 1, 1), generator=g) * noise
        pos = s_dev + (sig * torch.randn((half, *s.shape[1:]), generator=g)).to(device)
        neg = neg_dev[torch.randint(0, len(negatives), (half,), generator=g).to(device)]
        loss = F.mse_loss(net(torch.cat([pos, neg])), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps - 1:
            cb.on_metrics(step, {"visualizer_loss": float(loss.detach())})
            cb.on_progress(step + 1, steps, "visualizer")
    net.eval()
    with torch.no_grad():
        shown_s = float(logo_similarity(net(s_dev).cpu(), logo)[0])
        shown_neg = float(logo_similarity(net(neg_dev).cpu(), logo).max())
    return {"loss_end": float(loss.detach()), "shown_s": shown_s,
            "shown_negative_max": shown_neg}


@torch.no_grad()
def render(net: CopyrightVisualizer, s_prime: torch.Tensor) -> torch.Tensor:
    """R(S′): the visualized copyright image of a triggered output, ``1×L×L`` in [0, 1].

    Args:
        s_prime: ``C×T×T`` or ``1×C×T×T`` the suspect model's output on K.
    """
    x = s_prime[None] if s_prime.ndim == 3 else s_prime
    params = list(net.parameters())
    device = params[0].device if params else torch.device("cpu")
    net.eval()
    return net(x.float().to(device))[0].cpu()


__all__ = ["SHOWN", "CopyrightVisualizer", "builtin_logo", "load_logo", "logo_similarity",
           "render", "train_visualizer"]
