"""Forgery and removal next to robustness (after videoseal's
``quality_metric/eval_watermark_forging.py`` and ``eval_watermark_removal.py``).

**Copy attack** (forgery): the attacker holds one photo marked under the victim's key and
the public files (package, shipped weights), never the key. Photo *i*'s mark is moved onto
another clean photo (*i + 1*, cyclically, or each of a separate set of target photos,
``forgery_targets``), the forged photo is rounded to 8 bits and verified under the victim's
key; a detection is a successful forgery (the rate comes with its exact 95% interval).

- A method whose bits anyone can read and write (every peer; ``pgd_signer``, whose decoder
  ships and whose signing is PGD against it) is attacked by reading the raw bits of the
  marked photo and writing them into the target with the public encoder / PGD.
- A detector whose verdict does not depend on the key (``keyed_detection = False``:
  ``anti_forward``'s stamp, ``visible_gan``'s mark) is attacked by marking the target with
  the public files under the attacker's own key.
- Any other method (its bits need the key to read) gets a row saying the attack does not
  apply.

**Removal attack** within the same perceptual budget: for each marked photo, every
size-preserving attack of the sweep (``sweeps.SIZE_PRESERVING``) whose output stays within
``PSNR(attacked, marked) ≥ budget`` (the method's own embedding PSNR: the attacker may
change the photo as much as the mark did) is tried; the photo's mark is removed when one of
them leaves it undetected (only photos detected unattacked count). Rows give the success
rate and the best PSNR of the successful removals. It is a black-box attack, so it bounds
removal from below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from neuralmark.components.attacks.registry import build_attack
from neuralmark.components.benchmark.l2_pgd import hinge_toward, l2_pgd
from neuralmark.components.benchmark.sweeps import SIZE_PRESERVING
from neuralmark.components.imageio import quantize_8bit
from neuralmark.components.methods.base import Status, Verdict, WatermarkKey
from neuralmark.components.metrics import psnr
from neuralmark.components.stats import clopper_pearson

Row = dict[str, Any]
ATTACKER_KEY = WatermarkKey("benchmark-attacker", 1)


def _pgd_write_bits(method: Any, images: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
    """pgd_signer's bits written into ``images`` (B×3×H×W) by plain L2 PGD against its public
    decoder (``pgd_steps`` steps within its ``psnr_target``; no EoT: a forgery only has to
    verify as delivered, and EoT would cost ``eot_samples``× per step)."""
    x = images.to(method.device)
    target = torch.as_tensor(np.asarray(bits), dtype=torch.float32, device=method.device)
    forged = l2_pgd(lambda z: hinge_toward(method.logits(z), target), x,
                    method.config.psnr_target, method.config.pgd_steps)
    return forged.to(images.device)


def copy_strategy(method: Any) -> str:
    """How the copy attack reaches ``method``: ``bits``, ``keyless`` or ``""`` (does not apply)."""
    if hasattr(method, "read_bits") and hasattr(method, "write_bits"):
        return "bits"
    if hasattr(method, "decode_bits") and hasattr(method, "sign_working"):
        return "bits"
    if not getattr(method, "keyed_detection", True):
        return "keyless"
    return ""


def _copy(method: Any, marked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if hasattr(method, "read_bits"):
        return method.write_bits(targets, method.read_bits(marked))
    if hasattr(method, "decode_bits"):
        return _pgd_write_bits(method, targets, method.decode_bits(marked))
    return method.embed(targets, ATTACKER_KEY).detach()


def _detected(verdicts: Sequence[Verdict]) -> list[bool]:
    return [bool(v.detected) and v.status != Status.UNREADABLE for v in verdicts]


def copy_attack_rows(method: Any, clean: torch.Tensor, marked: torch.Tensor,
                     key: WatermarkKey, base: Mapping[str, Any],
                     targets: torch.Tensor | None = None, batch_size: int = 16) -> list[Row]:
    """Rows ``forgery_success_rate`` (its 95% interval in the note) and ``forgery_psnr`` of
    the copy attack.

    Args:
        method: a content method.
        clean: N×3×H×W clean photos (the targets when ``targets`` is not given: N ≥ 2).
        marked: the same photos marked under ``key`` (the victim's): the attacker's sources.
        key: the victim's key, used only to verify.
        base: ``method`` / ``family`` cells.
        targets: T×3×H×W clean target photos; target ``j`` gets the mark of source
            ``j mod N``. Default: photo ``i``'s mark goes onto photo ``i + 1`` (cyclically).
        batch_size: targets forged per call (the PGD's memory).
    """
    row = {**base, "attack": "copy", "strength": None, "label": "copy"}
    strategy = copy_strategy(method)
    if not strategy:
        return [{**row, "metric": "forgery_success_rate", "value": None, "n": 0,
                 "note": "does not apply: its bits cannot be read without the key"}]
    if targets is None:
        if clean.shape[0] < 2:
            return [{**row, "metric": "forgery_success_rate", "value": None, "n": 0,
                     "note": "needs at least 2 photos (a source and a target)"}]
        targets, sources = clean.roll(-1, dims=0), marked  # photo i's mark onto photo i+1
    else:
        sources = marked[torch.arange(targets.shape[0]) % marked.shape[0]]
    hits: list[bool] = []
    quality: list[torch.Tensor] = []
    for i in range(0, targets.shape[0], batch_size):
        t, s = targets[i:i + batch_size], sources[i:i + batch_size]
        with torch.enable_grad():
            forged = quantize_8bit(_copy(method, s, t))
        with torch.no_grad():
            hits += _detected(method.verify(forged, key))
        quality.append(psnr(forged, t).cpu())
    how = {"bits": "raw bits read with the public decoder, written with the public "
                   "encoder / L2 PGD against it",
           "keyless": "target marked with the public files under the attacker's key"}[strategy]
    n, k = len(hits), sum(hits)
    lo, hi = clopper_pearson(k, n)
    note = (f"{how}; {k}/{n} forged photos detected under the victim's key; "
            f"95% CI [{lo:.3f}, {hi:.3f}]")
    return [{**row, "metric": "forgery_success_rate", "value": k / n, "n": n, "note": note},
            {**row, "metric": "forgery_psnr", "value": float(torch.cat(quality).mean()),
             "n": n, "note": "forged vs its clean target"}]


def removal_attack_rows(method: Any, marked: torch.Tensor, key: WatermarkKey,
                        sweep: Mapping[str, Sequence[float]], budget_db: float,
                        base: Mapping[str, Any], seed: int = 0) -> list[Row]:
    """Rows ``removal_success_rate`` and ``removal_psnr`` of the black-box removal attack.

    Args:
        method: a content method.
        marked: N×3×H×W photos marked under ``key``.
        key: the owner's key.
        sweep: attack → strengths; only ``SIZE_PRESERVING`` attacks are tried.
        budget_db: least PSNR(attacked, marked) an attack may leave.
        base: ``method`` / ``family`` cells.
        seed: seeds the attacks' random draws.
    """
    row = {**base, "attack": "removal", "strength": budget_db, "label": "removal"}
    with torch.no_grad():
        marked_hits = torch.tensor(_detected(method.verify(marked, key)))
    if not marked_hits.any():
        return [{**row, "metric": "removal_success_rate", "value": None, "n": 0,
                 "note": "nothing to remove: no marked photo is detected unattacked"}]
    marked = marked[marked_hits]
    n = marked.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    best_psnr = torch.full((n,), float("nan"))
    tried = 0
    generator = torch.Generator().manual_seed(seed)
    for name in SIZE_PRESERVING:
        for strength in sweep.get(name, ()):
            attack = build_attack(name, strength)
            with torch.no_grad():
                attacked = attack.apply(marked, attack.sample(n, generator))
                quality = psnr(attacked, marked).cpu()  # n
                allowed = quality >= budget_db
                if not allowed.any():
                    continue
                tried += 1
                hits = torch.tensor(_detected(method.verify(attacked, key)))
            success = allowed & ~hits
            better = success & (torch.isnan(best_psnr) | (quality > best_psnr))
            best_psnr[better] = quality[better]
            removed |= success
    note = (f"black box: {tried} size-preserving sweep attacks within PSNR ≥ "
            f"{budget_db:.2f} dB of the marked photo, on the {n} "
            "marked photos detected unattacked")
    rows = [{**row, "metric": "removal_success_rate", "value": float(removed.float().mean()),
             "n": n, "note": note}]
    if removed.any():
        rows.append({**row, "metric": "removal_psnr",
                     "value": float(best_psnr[removed].mean()), "n": int(removed.sum()),
                     "note": "best (highest) PSNR among the successful removals"})
    return rows
