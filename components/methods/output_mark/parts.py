"""What training and evaluation need of an ``OutputMark``, as a ``Protocol``.

``method.py`` imports ``training`` and ``evaluation`` (``fit`` runs the training
sequence), so they cannot import the class back; they are typed against this
protocol instead, which ``OutputMark`` satisfies.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark.config import OutputMarkConfig


class OutputMarkParts(Protocol):
    """The networks, logo, calibration and helpers of an ``output_mark`` method.

    Attributes:
        config: the method's config.
        M: the protected model (B×3×H×W → B×3×H×W).
        H: the embedder (B → B′, or A → marked target when task-specific).
        R: the extractor (B×3×S×S → logo estimate B×3×S×S).
        D: the PatchGAN discriminator of stage 1.
        device: where the networks live.
        train_groups: source group of each training pair, or ``None``.
        null_scores: calibrated NC scores of clean images (sorted).
        calibration_sources: ``"<source>:<count>"`` per calibration call.
        trained: whether a training sequence has finished.
    """

    config: OutputMarkConfig
    M: nn.Module
    H: nn.Module
    R: nn.Module
    D: nn.Module
    device: torch.device
    train_groups: list[str] | None
    null_scores: list[float]
    calibration_sources: list[str]
    trained: bool

    @property
    def logo(self) -> torch.Tensor:
        """δ, 3×S×S."""

    def to(self, device: str | torch.device) -> Any:
        """Move every network to ``device``."""

    def set_logo(self, source: Any, key: WatermarkKey | None = None) -> torch.Tensor:
        """Replace δ (before training)."""

    def set_groups(self, groups: Any) -> None:
        """Remember the source group of each training pair."""

    def working_pairs(self, pairs: Any, what: str = "pairs") -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``(A, B)`` at the working size."""

    def model_outputs(self, a: torch.Tensor) -> torch.Tensor:
        """M's outputs on N×3×S×S inputs."""

    def marked_outputs(self, a: torch.Tensor) -> torch.Tensor:
        """B′ for N×3×S×S inputs."""

    def hit_mask(self, ncs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """N bools: NC above the threshold on a readable image."""

    def calibrate(self, clean: torch.Tensor, source: str = "clean",
                  key: WatermarkKey | None = None) -> list[float]:
        """Add NC scores of clean images to the null distribution."""

    def reset_calibration(self) -> None:
        """Forget the null scores."""

    def per_image_fpr(self) -> float | None:
        """Calibrated rate of clean images with NC above the threshold."""


__all__ = ["OutputMarkParts"]
