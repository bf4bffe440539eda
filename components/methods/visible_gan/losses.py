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
* ℒ_vis (not in the seed): a hinge that keeps the mark visible,
  ``relu(floor − contrast(x′) / contrast(static))`` per image, where ``contrast`` is the
  mean absolute luma change over the mark's pixels (the ``contrast`` row of the
  evaluation). The ratio ℒ_v alone let W win by fading the mark: at tiny its contrast fell
  from 0.213 to 0.101 (static blend 0.142). With ℒ_vis (weight 1, floor 0.9) the tiny
  pipeline's W keeps 0.91× the static blend's contrast (0.65× for the same recipe without
  it). A constraint, not an adversary: it is added to GMAN's combination, outside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuralmark.components import distributed
from neuralmark.components.nets.patchgan import gan_bce

__all__ = ["contrast", "gan_bce", "gman_combine", "removal_attack_loss", "removal_loss",
           "task_loss", "visibility_loss"]


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


def contrast(marked: torch.Tensor, clean: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean absolute luma change over the mark's pixels, per image (visibility).

    Args:
        marked, clean: ``B×3×H×W`` in [0, 1].
        support: ``B×1×H×W`` (or ``1×1×H×W``) 0/1 mask of the mark's pixels.

    Returns:
        ``B`` values (differentiable in ``marked``).
    """
    weights = torch.tensor([0.299, 0.587, 0.114], device=marked.device,
                           dtype=marked.dtype).view(1, 3, 1, 1)
    change = ((marked - clean) * weights).sum(1, keepdim=True).abs()          # b 1 h w
    support = support.to(change).expand_as(change)
    return (change * support).sum(dim=(1, 2, 3)) / support.sum(dim=(1, 2, 3)).clamp_min(1)


def visibility_loss(marked: torch.Tensor, static: torch.Tensor, clean: torch.Tensor,
                    support: torch.Tensor, floor: float) -> torch.Tensor:
    """ℒ_vis: how far W's mark falls below ``floor`` × the static blend's contrast.

    ``mean_b relu(floor − contrast(x′_b) / contrast(s_b))``: 0 while every image's mark is
    at least ``floor`` times as visible as the static blend on that image, growing as W fades
    it. ``marked`` (DeepStamp), ``static`` (the static blend) and ``clean`` are ``B×3×S×S``;
    ``support`` ``B×1×S×S`` or ``1×1×S×S``, the mark's pixels. The static contrast carries no
    gradient (it is the reference); it is floored at 1e-3 (a mark the colour of the image).
    A plain mean over images, so data-parallel gradient averaging needs nothing more.
    """
    reference = contrast(static, clean, support).detach().clamp_min(1e-3)
    return F.relu(floor - contrast(marked, clean, support) / reference).mean()
