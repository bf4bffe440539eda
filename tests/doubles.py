"""Shared pieces of the test-only methods registered by test modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class NothingToTrain:
    """Mixin for test doubles whose mark is a fixed keyed pattern: no parameters.

    ``fit`` has nothing to learn and reports no metrics; ``training_loss`` is a
    constant (there is no parameter for a gradient to reach).
    """

    def fit(self, data: Any, callbacks: Sequence[Any] = ()) -> dict[str, float]:
        return {}

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(())
