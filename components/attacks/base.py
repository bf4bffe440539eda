"""Image attacks with kornia's sample/apply split.

``sample(batch_size, generator)`` draws the random parameters of one call (a
dict of tensors, one row per image) and ``apply(x, params)`` applies them, so a
draw can be replayed and logged. ``__call__`` does both.

``differentiable`` attacks (kornia) are used in training and signing;
evaluation attacks run real codecs (PIL JPEG/WebP) and pass gradients
straight through where one is needed.
"""

from __future__ import annotations

from typing import ClassVar

import torch

Params = dict[str, torch.Tensor]


class ImageAttack:
    """Base class. Shapes: ``x`` is B×3×H×W float in [0, 1]; output same B and C."""

    name: ClassVar[str] = "identity"
    differentiable: ClassVar[bool] = True

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def uniform(lo: float, hi: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` draws from U(lo, hi) as a float32 CPU tensor."""
    return lo + (hi - lo) * torch.rand(n, generator=generator)
