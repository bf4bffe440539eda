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
set, or a separate set of targets, ``forgery_targets``, with the first ``max_sources``
marked photos as every target's sources: marked once, reused); the forged photo is rounded
to 8 bits and verified under the victim's key at the method's claimed level
(``detection_alpha``). Rows give the success rate with its exact 95% interval, the number of
sources, and the forged photos' PSNR to their targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from neuralmark.components.benchmark.forgery import _detected
from neuralmark.components.benchmark.l2_pgd import l2_pgd, psnr_radius
from neuralmark.components.imageio import quantize_8bit
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.metrics import psnr
from neuralmark.components.stats import clopper_pearson

Row = dict[str, Any]
MAX_SOURCES = 10


def _sources(n: int, i: int, max_sources: int) -> list[int]:
    """The photos (other than ``i``) whose marks the attacker holds for target ``i``."""
    return [j for j in range(n) if j != i][:max_sources]


def _source_sets(n: int, targets: torch.Tensor | None, max_sources: int) -> list[list[int]]:
    """Per target, the marked photos the attacker holds: the first ``max_sources`` for
    separate ``targets``, else leave-one-out over the ``n`` photos."""
    if targets is not None:
        return [list(range(min(n, max_sources)))] * targets.shape[0]
    return [_sources(n, i, max_sources) for i in range(n)]


def residual_copy(clean: torch.Tensor, marked: torch.Tensor, budget_db: float,
                  max_sources: int = MAX_SOURCES,
                  targets: torch.Tensor | None = None) -> torch.Tensor:
    """Forged photos: each target gets the mean residual of the attacker's marked photos.

    Args:
        clean: N×3×H×W clean photos in [0, 1] (the targets when ``targets`` is not given).
        marked: the same photos marked under the victim's key (the sources).
        budget_db: the forged photo's PSNR to its target (the method's embedding PSNR).
        max_sources: marked photos the attacker holds per target.
        targets: T×3×H×W separate clean targets (then the sources are the first
            ``max_sources`` marked photos); default leave-one-out over ``clean``.

    Returns:
        N×3×H×W (or T×3×H×W) forged photos, 8-bit.
    """
    import kornia  # the benchmark's own dependency; here so importing the package stays light

    residual = marked - kornia.filters.median_blur(marked, (3, 3))        # n c h w
    goals = clean if targets is None else targets
    forged = []
    for i, chosen in enumerate(_source_sets(clean.shape[0], targets, max_sources)):
        mark = residual[chosen].mean(0)                                    # c h w
        mark = mark * (psnr_radius(mark.shape, budget_db) / mark.norm().clamp_min(1e-12))
        forged.append((goals[i] + mark).clamp(0, 1))
    return quantize_8bit(torch.stack(forged))


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
               steps: int = 50, max_sources: int = MAX_SOURCES,
               targets: torch.Tensor | None = None) -> torch.Tensor:
    """Forged photos: each target PGD-pushed along the marks' public feature shift.

    Args:
        method: a method with a public decoder (``has_public_features``).
        clean: N×3×H×W clean photos in [0, 1] (the sources' originals; also the targets
            when ``targets`` is not given).
        marked: the same photos marked under the victim's key.
        budget_db: least PSNR(forged, target).
        steps: L2 PGD iterations (step: a fifth of the radius, cosine-decayed).
        max_sources: marked photos the attacker holds per target.
        targets: T×3×H×W separate clean targets (sources: the first ``max_sources``).

    Returns:
        N×3×H×W (or T×3×H×W) forged photos, 8-bit.
    """
    decoder = method.decoder
    was = decoder.training
    decoder.eval()
    with torch.no_grad():
        shift = _public_features(method, marked) - _public_features(method, clean)  # n d
    goals = clean if targets is None else targets
    wanted = torch.stack([shift[chosen].mean(0) for chosen in
                          _source_sets(clean.shape[0], targets, max_sources)])      # t d
    with torch.no_grad():
        wanted = wanted + _public_features(method, goals)
    forged = [l2_pgd(lambda z, w=wanted[i:i + 32]: (_public_features(method, z) - w)
                     .pow(2).sum(1), goals[i:i + 32], budget_db, steps)
              for i in range(0, goals.shape[0], 32)]  # 32 targets at a time: memory
    decoder.train(was)
    return quantize_8bit(torch.cat(forged))


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
                            steps: int = 50, max_sources: int = MAX_SOURCES,
                            targets: torch.Tensor | None = None,
                            mean_shift_targets: int | None = None) -> list[Row]:
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
        max_sources: marked photos the attacker holds per target (≤ N − 1 are available
            leave-one-out, ≤ N with separate ``targets``).
        targets: T×3×H×W separate clean targets (``forgery_targets``); default
            leave-one-out over ``clean``.
        mean_shift_targets: the costlier mean shift runs on the first this many targets
            only (``None``: all).
    """
    rows: list[Row] = []
    if targets is None:
        sources = min(max_sources, clean.shape[0] - 1)
    else:
        sources = min(max_sources, clean.shape[0])
    for label in ("residual_copy", "mean_shift"):
        row = {**base, "attack": label, "strength": float(sources), "label": label}
        if sources < 1:
            rows.append({**row, "metric": "forgery_success_rate", "value": None, "n": 0,
                         "note": "needs at least 2 photos (sources and a target)"})
            continue
        goals = clean if targets is None else targets
        if label == "residual_copy":
            forged = residual_copy(clean, marked, budget_db, max_sources, targets)
            how = "mean (photo − median-3×3) residual, scaled to the method's PSNR, added"
        elif has_public_features(method):
            if targets is not None and mean_shift_targets is not None:
                goals = targets[:mean_shift_targets]
            with torch.enable_grad():
                forged = mean_shift(method, clean, marked, budget_db, steps, max_sources,
                                    None if targets is None else goals)
            how = (f"public-feature mean shift, {steps} L2-PGD steps within the method's "
                   "PSNR")
        else:
            rows.append({**row, "metric": "forgery_success_rate", "value": None, "n": 0,
                         "note": "does not apply: no public feature extractor"})
            continue
        rows += _rate_rows(method, forged, goals, key, row, sources, how)
    return rows
