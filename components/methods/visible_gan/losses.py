"""DeepStamp's losses (eq. 1 of the seed) and GMAN's combination of them.

* ℒ_f: the task loss, KL divergence between the frozen classifier's prediction on the
  clean image and on the marked one (the seed: "the difference in the inferred labels").
* ℒ_v: the removal loss. V is trained to restore the clean image from the marked one
  (ℓ2 + ℓ1); W pays the share of the mark's squared error that V removes,
  ``relu(1 − MSE(V(x′), x) / MSE(x′, x))`` (seed: "the ℓ2 loss from the auto-encoder V").
  A ratio, not a margin on ``MSE(V(x′), x)``: the earlier hinge
  ``relu(margin − MSE(V(x′), x))`` was satisfied by making the mark louder (measured at
  tiny: the marked image's MSE doubled, 0.0045 → 0.009, while V removed ~5 % of it), so it
  rewarded loudness, not marks V cannot predict. The ratio is scale-free: a louder mark
  that V removes in the same proportion scores the same.
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


def removal_loss(restored: torch.Tensor, marked: torch.Tensor,
                 clean: torch.Tensor) -> torch.Tensor:
    """ℒ_v for W: the share of the mark V removes, ``relu(1 − MSE(V(x′), x) / MSE(x′, x))``.

    0 when V leaves the whole mark (or makes things worse), 1 when it restores ``x``
    exactly. All three are ``B×3×S×S``; gradients reach W through ``restored`` and
    ``marked``. Under data-parallel training both MSEs are the global batch's (the ratio
    is not linear in them).
    """
    removed = distributed.global_mean(F.mse_loss(restored, clean))
    mark = distributed.global_mean(F.mse_loss(marked, clean))
    return F.relu(1 - removed / mark.clamp_min(1e-8))


def gman_combine(losses: list[torch.Tensor], softness: float) -> torch.Tensor:
    """GMAN's soft combination of the generator's losses against several adversaries.

    ``N·Σ softmax(λ·ℒ)_i·ℒ_i`` (Durugkar et al.'s soft-mean, scaled by the number of
    adversaries N): λ = 0 is the seed's plain sum ℒ_f + ℒ_v + ℒ_d; a larger λ leans on the
    adversary currently winning. The weights carry no gradient.
    """
    stacked = torch.stack([distributed.global_mean(x) for x in losses])  # global batch's
    weights = torch.softmax(softness * stacked.detach(), dim=0)
    return len(losses) * (weights * stacked).sum()
