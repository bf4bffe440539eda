"""Shared pieces of the test-only methods registered by test modules.

``AdditiveTestMethod`` is a tiny, real content watermark (a keyed ±strength pattern)
that the CLI tests drive; a test module (or a test's subprocess) registers it under
``ADDITIVE_KEY`` with ``register(ADDITIVE_KEY)(AdditiveTestMethod)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from neuralmark.components.methods.base import (
    MethodConfig,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
)

#: registry key of ``AdditiveTestMethod`` in the tests
ADDITIVE_KEY = "_test_additive"


class NothingToTrain:
    """Mixin for test doubles whose mark is a fixed keyed pattern: no parameters.

    ``fit`` has nothing to learn and reports no metrics; ``training_loss`` is a
    constant (there is no parameter for a gradient to reach).
    """

    def fit(self, data: Any, callbacks: Sequence[Any] = ()) -> dict[str, float]:
        return {}

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(())


class AdditiveConfig(MethodConfig):
    """Config of the test method."""

    strength: float = 2 / 255
    alpha: float = 1e-6


class _Gain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))


class AdditiveTestMethod(NothingToTrain, WatermarkMethod):
    """Adds a keyed ±strength pattern; verify correlates the high-pass residual with it.

    Under "no mark", the statistic ``z = Σ r·p / sqrt(Σ r²)`` of the residual ``r``
    against an independent ±1 pattern ``p`` is standard normal, so
    ``p_value = P(N(0,1) >= z)`` is a real one-sided p-value.
    """

    Config = AdditiveConfig

    def __init__(self, config: AdditiveConfig) -> None:
        super().__init__(config)
        self.gain = _Gain()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"gain": self.gain}

    @staticmethod
    def _pattern(key: WatermarkKey, shape: torch.Size) -> torch.Tensor:
        digest = hashlib.sha256(f"{key.secret}\x00{key.message}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return torch.randint(0, 2, tuple(shape), generator=gen).float() * 2 - 1

    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        pattern = self._pattern(key, images.shape[1:]).to(images)
        step = self.config.strength * self.gain.scale.detach()
        return (images + step * pattern).clamp(0, 1)

    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        pattern = self._pattern(key, images.shape[1:]).to(images).double()
        smooth = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        verdicts = []
        for r in (images - smooth).double():
            z = float((r * pattern).sum() / (r.pow(2).sum().sqrt() + 1e-12))
            p = 0.5 * math.erfc(z / math.sqrt(2))
            detected = p <= self.config.alpha
            verdicts.append(Verdict(
                detected=detected, score=z, p_value=p,
                status=Status.DETECTED if detected else Status.NOT_DETECTED,
                reason="" if detected else f"correlation z={z:.2f} is what chance gives",
                payload=key.message if detected else None,
            ))
        return verdicts
