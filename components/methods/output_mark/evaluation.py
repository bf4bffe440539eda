"""Scoring outputs with R: NC per image, the seed's success rate, Table 1, model verdicts.

* :func:`extraction_nc` / :func:`success_rate` — NC of R's extraction with δ per
  output, and the share above the threshold (the seed's SR).
* :func:`quality` — the seed's Table 1 on held-out pairs: invisibility of B′
  (PSNR/SSIM against its reference), NC and SR on B′, NC and false-positive rate
  on clean A, B and targets.
* :func:`suspect_outputs` / :func:`model_decision` — a suspect model's outputs as
  one batch, and whether they show the mark: share of hits, binomial p-value of
  that count under the calibrated per-image false-positive rate, the reason in words.

Shapes: outputs are ``N×3×H×W`` float32 in [0, 1] (resized to the logo's size S).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import check_images, resize_square
from neuralmark.components.methods.output_mark.parts import OutputMarkParts
from neuralmark.components.metrics import normalized_correlation, psnr, ssim
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.stats import binomial_sf


@torch.no_grad()
def extraction_nc(extractor: nn.Module, outputs: torch.Tensor, logo: torch.Tensor,
                  batch_size: int = 32) -> torch.Tensor:
    """NC between R's extraction and the logo, per image.

    Args:
        extractor: R (B×3×S×S → B×3×S×S).
        outputs: N×3×H×W images in [0, 1] (resized to the logo's size).
        logo: 3×S×S δ.
        batch_size: images per forward pass.

    Returns:
        N NC values in [-1, 1].
    """
    rec = apply_net(extractor, resize_square(outputs.float(), logo.shape[-1]), batch_size)
    return normalized_correlation(rec, logo[None].cpu())


def success_rate(extractor: nn.Module, outputs: torch.Tensor, logo: torch.Tensor,
                 threshold: float = 0.95, batch_size: int = 32) -> float:
    """Seed 001's SR: share of ``outputs`` (N×3×H×W) whose extraction has NC > ``threshold``."""
    return float((extraction_nc(extractor, outputs, logo, batch_size) > threshold)
                 .float().mean())


def quality(method: OutputMarkParts, a: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Table-1 numbers on held-out pairs (N×3×S×S at the working size).

    Returns:
        ``psnr_marked`` / ``ssim_marked`` (B′ vs B, or vs the target when
        task-specific), ``nc_marked`` / ``sr_marked`` (R on B′), and for each clean
        source ``A``, ``B`` (= M(A)), ``target``: ``nc_clean_<s>_mean``,
        ``nc_clean_<s>_max``, ``fpr_clean_<s>``; task-specific adds PSNR/SSIM of H and
        of the plain M against the targets.
    """
    c = method.config
    b = method.model_outputs(a)
    h_ref = gt if c.task_specific else b
    bp = method.marked_outputs(a)
    logo = method.logo.cpu()
    nc_marked = extraction_nc(method.R, bp, logo, c.eval_batch)
    out = {"psnr_marked": float(psnr(bp, h_ref).clamp(max=100).mean()),
           "ssim_marked": float(ssim(bp, h_ref).mean()),
           "nc_marked": float(nc_marked.mean()),
           "sr_marked": float(method.hit_mask(nc_marked, bp).float().mean())}
    for name, x in (("A", a), ("B", b), ("target", gt)):
        ncs = extraction_nc(method.R, x, logo, c.eval_batch)
        out[f"nc_clean_{name}_mean"] = float(ncs.mean())
        out[f"nc_clean_{name}_max"] = float(ncs.max())
        out[f"fpr_clean_{name}"] = float(method.hit_mask(ncs, x).float().mean())
    if c.task_specific:
        out["psnr_task_marked"] = float(psnr(bp, gt).clamp(max=100).mean())
        out["ssim_task_marked"] = float(ssim(bp, gt).mean())
        out["psnr_task_baseline"] = float(psnr(b, gt).clamp(max=100).mean())
        out["ssim_task_baseline"] = float(ssim(b, gt).mean())
    return out


def suspect_outputs(model_or_outputs: Any, inputs: torch.Tensor | None, min_size: int,
                    working_size: int, batch_size: int = 32) -> torch.Tensor:
    """A suspect model's outputs as one N×3×H×W batch in [0, 1].

    Args:
        model_or_outputs: a model (queried on ``inputs``), a B×3×H×W tensor of its
            outputs, or a list of output images (3×H×W or 1×3×H×W, mixed sizes:
            resized to ``working_size``).
        inputs: domain-A query images when a model is given.
        min_size: smallest image side accepted.
        working_size: the size list items are resized to.
        batch_size: images per forward pass of a model.

    Raises:
        InputError: a model without ``inputs``, bad images (the message names the
            list item), or anything else.
    """
    if isinstance(model_or_outputs, nn.Module):
        if inputs is None:
            raise InputError("verify_model needs inputs= (domain-A images) to query a model")
        check_images(inputs, min_size)
        return apply_net(model_or_outputs, inputs, batch_size).clamp(0, 1)
    if isinstance(model_or_outputs, torch.Tensor):
        check_images(model_or_outputs, min_size)
        return model_or_outputs
    if isinstance(model_or_outputs, (list, tuple)) and model_or_outputs:
        items = []
        for i, t in enumerate(model_or_outputs):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"output {i} is a {type(t).__name__}, not an image tensor")
            t = t[None] if t.ndim == 3 else t
            try:
                check_images(t, min_size)
            except InputError as err:
                raise InputError(f"output {i}: {err}") from None
            items.append(resize_square(t.float(), working_size))
        return torch.cat(items)
    raise InputError("verify_model takes a model (with inputs=), a B×3×H×W tensor of its "
                     f"outputs, or a list of output images; got {type(model_or_outputs).__name__}")


@dataclass(frozen=True)
class ModelDecision:
    """The verdict on a batch of a suspect model's outputs.

    Attributes:
        detected: share ≥ ``min_share`` and (when calibrated) p ≤ ``alpha``.
        n_marked: outputs with NC > threshold.
        n_outputs: outputs scored.
        share: ``n_marked / n_outputs`` (the seed's success rate).
        p_value: P(at least ``n_marked`` hits | a clean model), binomial under the
            calibrated per-image rate; ``None`` without calibration.
        reason: the decision in words.
    """

    detected: bool
    n_marked: int
    n_outputs: int
    share: float
    p_value: float | None
    reason: str


def model_decision(ncs: torch.Tensor, threshold: float, min_share: float, alpha: float,
                   per_image_fpr: float | None) -> ModelDecision:
    """Decide over N readable outputs' NC values whether the model carries the mark.

    Args:
        ncs: N NC values (N ≥ 1).
        threshold: NC above which one output is a hit.
        min_share: least share of hits to call the model a copy.
        alpha: largest p-value to call it a copy (when calibrated).
        per_image_fpr: calibrated rate of hits on clean images (``None``: uncalibrated).
    """
    n = int(ncs.numel())
    k = int((ncs > threshold).sum())
    share = k / n
    p = binomial_sf(k, n, per_image_fpr) if per_image_fpr is not None else None
    detected = share >= min_share and (p is None or p <= alpha)
    reason = (f"{k}/{n} outputs carry the logo (NC > {threshold}); share {share:.2f} "
              f"{'≥' if share >= min_share else '<'} {min_share}")
    reason += (f"; p={p:.3g} under a per-image clean rate of {per_image_fpr:.3g}"
               if p is not None else "; p-value: no calibration (fit() or calibrate() has "
               "not run)")
    return ModelDecision(detected, k, n, share, p, reason)


__all__ = ["ModelDecision", "extraction_nc", "model_decision", "quality", "success_rate",
           "suspect_outputs"]
