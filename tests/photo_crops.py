"""Small crops of a real photograph, shared by the anti_forward tests that train or attack a
micro scanner: ``n`` random ``window``² windows of ``photo`` (H×W×3 uint8; 96² by default,
``tests/test_anti_forward.py`` takes 128²), each resized to ``size``² with antialiasing, as
an n×3×size×size tensor in [0, 1] (seeded by ``n``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crops(photo, n: int, size: int = 32, window: int = 96) -> torch.Tensor:
    """``n`` crops of a real photo (n×3×size×size in [0, 1])."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    g = torch.Generator().manual_seed(n)
    out = []
    for _ in range(n):
        i, j = torch.randint(0, x.shape[1] - window, (2,), generator=g).tolist()
        out.append(F.interpolate(x[None, :, i:i + window, j:j + window], size=(size, size),
                                 mode="bilinear", antialias=True)[0])
    return torch.stack(out).clamp(0, 1)
