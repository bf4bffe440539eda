"""Small crops of a real photograph, shared by the anti_forward tests that train or attack a
micro scanner: ``n`` random 96² windows of ``photo`` (H×W×3 uint8), each resized to
``size``² with antialiasing, as an n×3×size×size tensor in [0, 1] (seeded by ``n``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crops(photo, n: int, size: int = 32) -> torch.Tensor:
    """``n`` crops of a real photo (n×3×size×size in [0, 1])."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    g = torch.Generator().manual_seed(n)
    out = []
    for _ in range(n):
        i, j = torch.randint(0, x.shape[1] - 96, (2,), generator=g).tolist()
        out.append(F.interpolate(x[None, :, i:i + 96, j:j + 96], size=(size, size),
                                 mode="bilinear", antialias=True)[0])
    return torch.stack(out).clamp(0, 1)
