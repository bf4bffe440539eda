"""White-box removal: APGD against a method's public decoder / scanner, within the same
perceptual budget as the black-box removal (after videoseal's
``quality_metric/eval_watermark_removal.py``).

The attacker holds a marked photo and what ships in the open-source package (the code and
the shipped weights), never the key. When a method's detector is a public differentiable
network, the attacker runs ``torchattacks.APGD`` (L2, cross-entropy, the highest-loss
iterate kept: ``perturb(best_loss=True)``, as ``attacks.adversarial.apgd_eot`` does) on a
2-class view of it, "marked" (class 1) against "not marked":

- ``anti_forward``: the scanner's own logits (``classifier_module()``, class 1 = stamped);
  the stamp is not keyed, so the scanner is the whole detector.
- ``pgd_signer``: the decoder (``logits``) reads bits without a key; the attacker reads the
  marked photo's bits with it and pushes every bit away from what it read. The 2-class view
  is ``[0, m]`` with ``m`` the mean signed agreement ``(2b − 1)·logit`` with the bits read,
  so the cross-entropy on class 1 is ``softplus(−m)`` and APGD drives ``m`` down.

A method whose shipped files hold a trained *remover* instead (``public_remover``:
``visible_gan``'s V, the GMAN's removal autoencoder, which ships in its bundle) gets that
remover run on the marked photos, no optimisation: what the public files let an attacker do
without training anything. Its change is held to the same budget: projected onto APGD's L2
ball when it is larger (a remover that gave back the clean photo exactly would sit at the
budget, since the budget is the embedding's own PSNR; a larger change damages the photo
beyond what the mark did). The note says how many changes were projected and the PSNR V's
unprojected output would have cost.

A method with neither (a keyed correlation, a template match with no public gradient,
every peer: their decoders are DCT/SVD code or ONNX graphs) gets a row
``n/a (no public differentiable decoder)``.

The budget is the black-box removal's: ``PSNR(attacked, marked) ≥`` the method's own
embedding PSNR, i.e. an L2 ball of radius ``‖·‖₂ ≤ √(3HW)·10^(−PSNR/20)`` around the marked
photo (APGD's ``eps``, a hair inside so that rounding to 8-bit levels keeps it). The attacked
photo is rounded to 8 bits (what an attacker shares) and verified with the owner's key; a
photo counts as removed when it was detected unattacked, is no longer detected, and its
PSNR to the marked photo is still within the budget.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torchattacks
from torch import nn

from neuralmark.components.attacks.adversarial import AttackModel
from neuralmark.components.imageio import quantize_8bit
from neuralmark.components.methods.base import Status, WatermarkKey
from neuralmark.components.metrics import psnr

Row = dict[str, Any]
NOT_APPLICABLE = "n/a (no public differentiable decoder)"
#: APGD's radius is this many dB inside the budget: 8-bit rounding then stays within it
ROUNDING_MARGIN_DB = 0.05


class _BitAgreement(nn.Module):
    """2-class view of a bit decoder: logits ``[0, m]``, ``m`` = mean (2b − 1)·logit over the
    bits ``reference`` (B×n, the bits read from each marked photo); B×3×H×W → B×2."""

    def __init__(self, method: Any, reference: torch.Tensor) -> None:
        super().__init__()
        self.decoder = method.decoder  # registered: eval() reaches it
        self._logits = method.logits
        self.register_buffer("sign", reference.float() * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        margin = (self._logits(images) * self.sign.to(images.device)).mean(dim=1)  # b
        return torch.stack([torch.zeros_like(margin), margin], dim=1)  # b 2


def _public_scanner(method: Any) -> bool:
    return hasattr(method, "classifier_module") and not getattr(method, "keyed_detection", True)


def _public_decoder(method: Any) -> bool:
    return hasattr(method, "logits") and hasattr(method, "decoder")


def _public_remover(method: Any) -> bool:
    return callable(getattr(method, "public_remover", None))


def has_public_decoder(method: Any) -> bool:
    """Whether the shipped files give an attacker a differentiable detector of ``method``."""
    return _public_scanner(method) or _public_decoder(method)


def public_classifier(method: Any, marked: torch.Tensor) -> nn.Module | None:
    """The attacker's 2-class view (class 1 = marked) of ``method``'s public detector for
    the photos ``marked`` (B×3×H×W), or ``None`` when it has no public differentiable one."""
    if _public_scanner(method):
        return method.classifier_module()
    if _public_decoder(method):
        with torch.no_grad():
            reference = (method.logits(marked) > 0).float()  # b n: read without the key
        return _BitAgreement(method, reference)
    return None


def l2_radius(shape: torch.Size | tuple[int, ...], budget_db: float) -> float:
    """L2 radius on [0, 1] images of ``shape`` (C×H×W) whose MSE gives PSNR ``budget_db``."""
    return math.sqrt(math.prod(shape)) * 10 ** (-budget_db / 20)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torchattacks seeds torch's global RNG; keep the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def apgd_l2_remove(classifier: nn.Module, images: torch.Tensor, eps: float, *, steps: int,
                   seed: int = 0) -> torch.Tensor:
    """APGD L2 (cross-entropy) away from class 1 on every image; the highest-loss iterate.

    Args:
        classifier: B×3×H×W → B×2 logits, differentiable.
        images: B×3×H×W marked photos in [0, 1].
        eps: L2 radius per image.
        steps: APGD iterations.
        seed: seeds the random start.

    Returns:
        B×3×H×W in [0, 1], each within ``eps`` (L2) of its input.
    """
    model = AttackModel(classifier, images.device)
    model.eval()
    attack = torchattacks.APGD(model, norm="L2", eps=float(eps), steps=int(steps), n_restarts=1,
                               seed=int(seed), loss="ce")
    labels = torch.ones(images.shape[0], dtype=torch.int64, device=images.device)
    with _seeded(seed), torch.enable_grad():
        _, adv = attack.perturb(images.detach().clone(), labels, best_loss=True)
    delta = (adv - images).flatten(1)
    scale = (eps / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)  # guard float drift
    return (images + (delta * scale[:, None]).view_as(images)).clamp(0, 1).detach()


def remover_within_budget(remover: Callable[[torch.Tensor], torch.Tensor],
                          images: torch.Tensor, eps: float,
                          ) -> tuple[torch.Tensor, int, float]:
    """``remover`` on ``images`` (B×3×H×W marked photos), its change held to L2 ``eps``.

    Returns:
        The attacked B×3×H×W in [0, 1] (each within ``eps`` of its input), how many changes
        were larger than ``eps`` and scaled onto it, and the mean PSNR of the unprojected
        output against ``images`` (what the remover alone costs).
    """
    with torch.no_grad():
        raw = remover(images).to(images.device).clamp(0, 1)
    delta = (raw - images).flatten(1)
    norm = delta.norm(dim=1)
    scale = (eps / norm.clamp_min(1e-12)).clamp(max=1.0)
    attacked = (images + (delta * scale[:, None]).view_as(images)).clamp(0, 1)
    raw_db = float(psnr(raw, images).clamp_max(100).mean())
    return attacked.detach(), int((norm > eps).sum()), raw_db


def whitebox_removal_rows(method: Any, marked: torch.Tensor, key: WatermarkKey,
                          budget_db: float, base: Mapping[str, Any], *, steps: int = 20,
                          seed: int = 0) -> list[Row]:
    """Rows ``whitebox_removal_success_rate``, ``whitebox_removal_psnr`` and, for a method
    that reads bits, ``whitebox_removal_bit_accuracy``.

    Args:
        method: a content method (or a peer).
        marked: N×3×H×W photos marked under ``key`` (8-bit levels).
        key: the owner's key, used only to verify.
        budget_db: least PSNR(attacked, marked) the attacker may leave (the method's own).
        base: ``method`` / ``family`` cells.
        steps: APGD iterations.
        seed: seeds APGD's random start.
    """
    row = {**base, "attack": "whitebox_removal", "strength": budget_db,
           "label": "whitebox_removal"}
    if not (has_public_decoder(method) or _public_remover(method)):
        return [{**row, "metric": "whitebox_removal_success_rate", "value": None, "n": 0,
                 "note": NOT_APPLICABLE}]
    with torch.no_grad():
        detected = torch.tensor([bool(v.detected) and v.status != Status.UNREADABLE
                                 for v in method.verify(marked, key)])
    if not detected.any():
        return [{**row, "metric": "whitebox_removal_success_rate", "value": None, "n": 0,
                 "note": "nothing to remove: no marked photo is detected unattacked"}]
    targets = marked[detected]
    eps = l2_radius(targets.shape[1:], budget_db + ROUNDING_MARGIN_DB)
    if has_public_decoder(method):
        classifier = public_classifier(method, targets)
        attacked = apgd_l2_remove(classifier, targets, eps, steps=steps, seed=seed)
        how = (f"APGD-L2 {steps} steps on the public "
               f"{'scanner' if _public_scanner(method) else 'decoder'}")
    else:
        attacked, projected, raw_db = remover_within_budget(method.public_remover, targets, eps)
        how = (f"the public remover V shipped in the bundle, run once (its own output: PSNR "
               f"{raw_db:.2f} dB of the marked photo; {projected} of {targets.shape[0]} "
               "changes larger than the budget, projected onto it)")
    attacked = quantize_8bit(attacked)
    quality = psnr(attacked, targets).cpu()  # n
    with torch.no_grad():
        verdicts = method.verify(attacked, key)
    still = torch.tensor([bool(v.detected) and v.status != Status.UNREADABLE
                          for v in verdicts])
    removed = ~still & (quality >= budget_db)
    accuracies = [v.bit_accuracy for v in verdicts if v.bit_accuracy is not None]
    n = int(targets.shape[0])
    note = (f"white box: {how}, "
            f"ε = {eps:.2f} (PSNR ≥ {budget_db:.2f} dB of the marked photo), on the {n} marked "
            "photos detected unattacked, rounded to 8 bits, verified with the owner's key")
    return [{**row, "metric": "whitebox_removal_success_rate",
             "value": float(removed.float().mean()), "n": n, "note": note},
            {**row, "metric": "whitebox_removal_psnr", "value": float(quality.mean()), "n": n,
             "note": "PSNR of the attacked vs the marked photo, mean over the attacked photos"}
            ] + ([{**row, "metric": "whitebox_removal_bit_accuracy",
                   "value": float(sum(accuracies) / len(accuracies)), "n": len(accuracies),
                   "note": "bit accuracy of the attacked photos against the owner's keyed "
                           "word (videoseal's removal measure)"}] if accuracies else [])
