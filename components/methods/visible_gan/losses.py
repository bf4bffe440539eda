"""DeepStamp's losses (eq. 1 of the seed) and GMAN's combination of them.

* ℒ_f: the task loss, KL divergence between the frozen classifier's prediction on the
  clean image and on the marked one (the seed: "the difference in the inferred labels").
* ℒ_v: the removal loss. V is trained to restore the clean image from the marked one
  (ℓ2 + ℓ1); W pays ``relu(margin − MSE(V(x′), x)) / margin``, i.e. while V restores the
  clean image better than the margin (seed: "the ℓ2 loss from the auto-encoder V").
* ℒ_d: the non-saturating GAN loss of D, whose "real" is the static alpha blend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuralmark.components import distributed
from neuralmark.components.nets.patchgan import gan_bce

__all__ = ["gan_bce", "gman_combine", "removal_attack_loss", "removal_loss", "task_loss"]


def task_loss(logits_clean: torch.Tensor, logits_marked: torch.Tensor) -> torch.Tensor:
    """ℒ_f: ``KL(softmax(F(x)) ‖ softmax(F(x′)))`` averaged over the batch (B×K logits)."""
    return F.kl_div(F.log_softmax(logits_marked, dim=1), F.log_softmax(logits_clean, dim=1),
                    log_target=True, reduction="batchmean")


def removal_attack_loss(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """What V minimises: ``MSE + L1`` of its restoration against the clean image."""
    return F.mse_loss(restored, clean) + F.l1_loss(restored, clean)


def removal_loss(restored: torch.Tensor, clean: torch.Tensor, margin: float) -> torch.Tensor:
    """ℒ_v for W: ``relu(margin − MSE(V(x′), x)) / margin`` (0 once V fails by the margin)."""
    # the global batch's MSE under data-parallel training (the margin is not linear)
    return F.relu(margin - distributed.global_mean(F.mse_loss(restored, clean))) / margin


def gman_combine(losses: list[torch.Tensor], softness: float) -> torch.Tensor:
    """GMAN's soft combination of the generator's losses against several adversaries.

    ``N·Σ softmax(λ·ℒ)_i·ℒ_i`` (Durugkar et al.'s soft-mean, scaled by the number of
    adversaries N): λ = 0 is the seed's plain sum ℒ_f + ℒ_v + ℒ_d; a larger λ leans on the
    adversary currently winning. The weights carry no gradient.
    """
    stacked = torch.stack([distributed.global_mean(x) for x in losses])  # global batch's
    weights = torch.softmax(softness * stacked.detach(), dim=0)
    return len(losses) * (weights * stacked).sum()
