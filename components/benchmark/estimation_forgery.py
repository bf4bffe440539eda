"""Forgery from several marked photos: the attacks a keyed decoder must survive (issue #17).

``forgery.copy_attack_rows`` moves one photo's mark with the method's public decoder. A
method whose verifier is keyed (``pgd_signer`` with its per-owner decoder) defeats that,
so here the attacker holds up to ``max_sources`` photos marked under the victim's key
(never the key), their clean originals (the strongest reading: paired estimates), and the
public files, and estimates the mark instead of reading it:

- **residual copy** (Kutter et al.'s copy attack): the mark of each marked photo is
  estimated as the photo minus a denoised copy (3×3 median, kornia), the estimates are
  averaged (content averages out, a shared mark does not), scaled to the method's own
  embedding PSNR on the target and added to it.
- **feature mean shift** (against any keyed readout over public features): the mean shift
  of the public decoder's whitened pooled features between the marked photos and their
  clean originals is estimated, and the target is pushed by L2 PGD (within the method's
  embedding PSNR) so that its public features move by that shift. Applies to a method with
  a public feature extractor (``decoder.pooled``); a method whose verifier *is* a public
  linear readout over such features falls to it.

Each target is a clean photo that is not among its sources (leave-one-out over the photo
set); the forged photo is rounded to 8 bits and verified under the victim's key at the
method's claimed level (``detection_alpha``). Rows give the success rate with its exact
95% interval, the number of sources, and the forged photos' PSNR to their targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from neuralmark.components.benchmark.forgery import _detected
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.metrics import psnr
from neuralmark.components.stats import clopper_pearson

Row = dict[str, Any]
MAX_SOURCES = 10


def _quantize(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round() / 255


def _radius(shape: torch.Size, budget_db: float) -> float:
    """L2 radius of ``PSNR ≥ budget_db`` for one C×H×W image (a hair inside it)."""
    return math.sqrt(math.prod(shape)) * 10 ** (-(budget_db + 0.05) / 20)


def _sources(n: int, i: int, max_sources: int) -> list[int]:
    """The photos (other than ``i``) whose marks the attacker holds for target ``i``."""
    return [j for j in range(n) if j != i][:max_sources]


def residual_copy(clean: torch.Tensor, marked: torch.Tensor, budget_db: float,
                  max_sources: int = MAX_SOURCES) -> torch.Tensor:
    """Forged photos N×3×H×W: target ``i`` gets the mean residual of the other marked photos.

    Args:
        clean: N×3×H×W clean photos in [0, 1] (the targets).
        marked: the same photos marked under the victim's key (the sources).
        budget_db: the forged photo's PSNR to its target (the method's embedding PSNR).
        max_sources: marked photos the attacker holds per target.
    """
    import kornia  # the benchmark's own dependency; here so importing the package stays light

    residual = marked - kornia.filters.median_blur(marked, (3, 3))        # n c h w
    forged = []
    for i in range(clean.shape[0]):
        mark = residual[_sources(clean.shape[0], i, max_sources)].mean(0)  # c h w
        mark = mark * (_radius(mark.shape, budget_db) / mark.norm().clamp_min(1e-12))
        forged.append((clean[i] + mark).clamp(0, 1))
    return _quantize(torch.stack(forged))


def _public_features(method: Any, images: torch.Tensor) -> torch.Tensor:
    """Whitened pooled features B×D of the method's public decoder (differentiable)."""
    dec = method.decoder
    return (dec.pooled(method._to_working(images)) - dec.feat_mean) @ dec.feat_whiten


def has_public_features(method: Any) -> bool:
    """Whether the mean-shift attack applies: a public decoder with whitened pooled features."""
    dec = getattr(method, "decoder", None)
    return (hasattr(dec, "pooled") and hasattr(dec, "feat_whiten")
            and hasattr(method, "_to_working"))


def mean_shift(method: Any, clean: torch.Tensor, marked: torch.Tensor, budget_db: float,
               steps: int = 50, max_sources: int = MAX_SOURCES) -> torch.Tensor:
    """Forged photos N×3×H×W: each target PGD-pushed along the marks' public feature shift.

    Args:
        method: a method with a public decoder (``has_public_features``).
        clean: N×3×H×W clean photos in [0, 1] (targets; also the sources' originals).
        marked: the same photos marked under the victim's key.
        budget_db: least PSNR(forged, target).
        steps: L2 PGD iterations (step: a fifth of the radius, cosine-decayed).
        max_sources: marked photos the attacker holds per target.
    """
    decoder = method.decoder
    was = decoder.training
    decoder.eval()
    with torch.no_grad():
        shift = _public_features(method, marked) - _public_features(method, clean)  # n d
    forged = []
    for i in range(clean.shape[0]):
        x = clean[i:i + 1]
        goal = (_public_features(method, x) + shift[_sources(len(clean), i, max_sources)]
                .mean(0)).detach()
        radius = _radius(x.shape[1:], budget_db)
        delta = torch.zeros_like(x)
        for t in range(steps):
            delta.requires_grad_(True)
            loss = (_public_features(method, (x + delta).clamp(0, 1)) - goal).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = 0.2 * radius * 0.5 * (1 + math.cos(math.pi * t / steps))
                delta = delta - step * grad / grad.norm().clamp_min(1e-12)
                delta = delta * (radius / delta.norm().clamp_min(1e-12)).clamp(max=1.0)
                delta = (x + delta).clamp(0, 1) - x
        forged.append((x + delta).detach())
    decoder.train(was)
    return _quantize(torch.cat(forged))


def _rate_rows(method: Any, forged: torch.Tensor, targets: torch.Tensor, key: WatermarkKey,
               row: Mapping[str, Any], sources: int, how: str) -> list[Row]:
    with torch.no_grad():
        hits = _detected(method.verify(forged, key))
    n, k = len(hits), sum(hits)
    lo, hi = clopper_pearson(k, n)
    alpha = getattr(method, "detection_alpha", None)
    level = f"p ≤ {alpha:g}" if alpha is not None else "its own rule"
    note = (f"{how}; {sources} marked photos per target; {k}/{n} forged photos detected "
            f"under the victim's key at {level}; 95% CI [{lo:.3f}, {hi:.3f}]")
    return [{**row, "metric": "forgery_success_rate", "value": k / n, "n": n, "note": note},
            {**row, "metric": "forgery_psnr", "value": float(psnr(forged, targets).mean()),
             "n": n, "note": "forged vs its clean target"}]


def estimation_forgery_rows(method: Any, clean: torch.Tensor, marked: torch.Tensor,
                            key: WatermarkKey, budget_db: float, base: Mapping[str, Any],
                            steps: int = 50, max_sources: int = MAX_SOURCES) -> list[Row]:
    """Rows of the residual-copy and feature-mean-shift forgeries (labels ``residual_copy``,
    ``mean_shift``): ``forgery_success_rate`` (note: its 95% interval) and ``forgery_psnr``.

    Args:
        method: a content method.
        clean: N×3×H×W clean photos (N ≥ 2).
        marked: the same photos marked under ``key`` (the victim's), 8-bit.
        key: the victim's key, used only to verify.
        budget_db: the method's embedding PSNR (what the forgery may change).
        base: ``method`` / ``family`` cells.
        steps: the mean-shift attack's PGD steps.
        max_sources: marked photos the attacker holds per target (≤ N − 1 are available).
    """
    rows: list[Row] = []
    sources = min(max_sources, clean.shape[0] - 1)
    for label in ("residual_copy", "mean_shift"):
        row = {**base, "attack": label, "strength": float(sources), "label": label}
        if sources < 1:
            rows.append({**row, "metric": "forgery_success_rate", "value": None, "n": 0,
                         "note": "needs at least 2 photos (sources and a target)"})
            continue
        if label == "residual_copy":
            forged = residual_copy(clean, marked, budget_db, max_sources)
            how = "mean (photo − median-3×3) residual, scaled to the method's PSNR, added"
        elif has_public_features(method):
            with torch.enable_grad():
                forged = mean_shift(method, clean, marked, budget_db, steps, max_sources)
            how = (f"public-feature mean shift, {steps} L2-PGD steps within the method's "
                   "PSNR")
        else:
            rows.append({**row, "metric": "forgery_success_rate", "value": None, "n": 0,
                         "note": "does not apply: no public feature extractor"})
            continue
        rows += _rate_rows(method, forged, clean, key, row, sources, how)
    return rows
