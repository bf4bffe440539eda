"""The surrogate-learning attack on a keyed decoder (issue #17: "the best attack you can
build against your own design").

``pgd_signer`` verifies a key with a decoder whose stem, head and whitening are drawn from
the key; only the later layers and a public whitening set ship. An attacker holding a few
photos marked under the victim's key tries to *learn* that decoder: a surrogate with the
shipped architecture and later layers (frozen), a stem and head of their own (trained) and
the whitening re-fitted on the shipped set as the method does, trained to read the victim's
word on EoT views of the marked photos and random words on clean ones. Then:

- **forgery**: L2 PGD against the surrogate writes the word into clean target photos
  (within the method's own PSNR), which are verified under the victim's real key;
- **removal**: L2 PGD against the surrogate pushes the marked photos toward the word's
  complement (PSNR to the marked photo ≥ the method's own), verified under the real key.

Generous to the attacker (an upper bound on what this attack does): it is given the victim's
32-bit keyed word itself as the label (a real attacker does not have it: the word is the
BCH codeword masked by the key), the clean originals of its marked photos, and the public
whitening set as extra clean photos.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components.benchmark.forgery import _detected
from neuralmark.components.benchmark.l2_pgd import l2_pgd
from neuralmark.components.imageio import quantize_8bit
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.metrics import psnr
from neuralmark.components.stats import clopper_pearson

Row = dict[str, Any]
ATTACKER_SECRET = "surrogate-attacker"


def applies(method: Any) -> bool:
    """Whether the attack applies: a keyed decoder over a shipped public one."""
    return bool(getattr(getattr(method, "config", None), "keyed_decoder", False)) and hasattr(
        method, "whitening_views")


def decoder_views(method: Any, images: torch.Tensor, views: int,
                  generator: torch.Generator) -> torch.Tensor:
    """``views`` views per image as the decoder's input: the image itself, then EoT draws.

    Args:
        method: the ``PGDSigner``.
        images: N×3×H×W in [0, 1].
        views: views per image (≥ 1; the first is un-attacked).
        generator: the EoT draws.

    Returns:
        (views·N)×3×s×s, s = working size / input stride, view-major.
    """
    c = method.config
    xw = method._to_working(images.to(method.device))
    with torch.no_grad():
        drawn = [xw] + [method.eot(xw, generator) for _ in range(views - 1)]
        s = c.working_size // c.input_stride
        return torch.cat([F.interpolate(v, size=(s, s), mode="bilinear", antialias=True,
                                        align_corners=False) for v in drawn])


def train_surrogate(method: Any, clean: torch.Tensor, marked: torch.Tensor, word: np.ndarray,
                    steps: int = 400, views: int = 16, lr: float = 3e-3, batch: int = 64,
                    seed: int = 0) -> torch.nn.Module:
    """A surrogate of the victim's keyed decoder, learnt from marked photos.

    Args:
        method: the ``PGDSigner`` (its shipped decoder and whitening set: the public files).
        clean: N×3×H×W clean originals of the marked photos.
        marked: N×3×H×W photos marked under the victim's key.
        word: the victim's n-bit word (uint8 0/1), the generous label.
        steps: Adam steps.
        views: EoT views per photo (the first un-attacked).
        lr: Adam step.
        batch: views per class per step.
        seed: the attacker's stem / head draw, the views and the random clean words.

    Returns:
        The surrogate decoder (eval mode): images B×3×S×S → B×n logits.
    """
    from neuralmark.components.methods.pgd_signer.keying import keyed_decoder

    c = method.config
    generator = torch.Generator().manual_seed(seed)
    surrogate = keyed_decoder(method.decoder, f"{ATTACKER_SECRET}/{seed}",
                              method.whitening_views(), c.keyed_layers)
    layers = [m for m in surrogate.features if any(True for _ in m.parameters())]
    trained = [*layers[:c.keyed_layers], surrogate.head]
    surrogate.requires_grad_(False)
    for module in trained:
        module.requires_grad_(True)
    pos = decoder_views(method, marked, views, generator)                     # p c s s
    extra = method.whitening_views()
    neg = decoder_views(method, clean, views, generator)
    if extra is not None:
        neg = torch.cat([neg, extra])                                           # q c s s
    target = torch.as_tensor(word, dtype=torch.float32, device=pos.device)
    noise = torch.randint(0, 2, (neg.shape[0], target.numel()), generator=generator)
    noise = noise.float().to(pos.device)
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)

    def logits(x: torch.Tensor) -> torch.Tensor:
        f = (surrogate.pooled_input(x) - surrogate.feat_mean) @ surrogate.feat_whiten
        return surrogate.head(f)

    surrogate.train()
    for _ in range(steps):
        i = torch.randint(0, pos.shape[0], (batch,), generator=generator)
        j = torch.randint(0, neg.shape[0], (batch,), generator=generator)
        loss = (F.binary_cross_entropy_with_logits(logits(pos[i]), target.expand(batch, -1))
                + F.binary_cross_entropy_with_logits(logits(neg[j]), noise[j]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    surrogate.requires_grad_(False)
    return surrogate.eval()


def word_agreement(method: Any, decoder: torch.nn.Module, images: torch.Tensor,
                   word: np.ndarray) -> float:
    """Mean share of ``word``'s bits that ``decoder`` reads on ``images`` (N×3×H×W)."""
    bits = method.decode_bits(images, decoder=decoder)                         # n k
    return float((bits == np.asarray(word)[None]).mean())


def _bce(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """The attacks' PGD loss per image (B×n → B): BCE never saturates, so the whole budget is
    spent (what transfers to the real decoder, if anything does), and it weighs the bits
    still read wrong most. Measured with the victim's real decoder as the surrogate (micro
    config, 4 targets, 100 steps): BCE read 1.000 of the word, the signer's hinge (margin 3)
    .945, margin 10 .813, margin 100 .633 (a large margin lets a few bits dominate)."""
    return F.binary_cross_entropy_with_logits(logits, bits, reduction="none").mean(dim=1)


def surrogate_forge(method: Any, surrogate: torch.nn.Module, targets: torch.Tensor,
                    word: np.ndarray, budget_db: float, steps: int,
                    chunk: int = 32) -> torch.Tensor:
    """Targets (T×3×H×W) pushed to read ``word`` on the surrogate; 8-bit, PSNR ≥ budget."""
    bits = torch.as_tensor(word, dtype=torch.float32, device=method.device)
    return _pgd(method, surrogate, targets, bits, budget_db, steps, chunk)


def surrogate_remove(method: Any, surrogate: torch.nn.Module, marked: torch.Tensor,
                     word: np.ndarray, budget_db: float, steps: int,
                     chunk: int = 32) -> torch.Tensor:
    """Marked photos pushed to read ``word``'s complement on the surrogate; 8-bit."""
    bits = 1 - torch.as_tensor(word, dtype=torch.float32, device=method.device)
    return _pgd(method, surrogate, marked, bits, budget_db, steps, chunk)


def _pgd(method: Any, surrogate: torch.nn.Module, images: torch.Tensor, bits: torch.Tensor,
         budget_db: float, steps: int, chunk: int) -> torch.Tensor:
    out = []
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(method.device)
        with torch.enable_grad():
            out.append(l2_pgd(lambda z: _bce(method.logits(z, surrogate),
                                             bits.expand(z.shape[0], -1)),
                              x, budget_db, steps))
    return quantize_8bit(torch.cat(out))


def _rate(hits: list[bool]) -> tuple[int, int, float, float]:
    k, n = sum(hits), len(hits)
    lo, hi = clopper_pearson(k, n)
    return k, n, lo, hi


def _removal_rows(method: Any, surrogate: torch.nn.Module, victims: torch.Tensor,
                  key: WatermarkKey, word: np.ndarray, budget_db: float, pgd_steps: int,
                  row: Mapping[str, Any], which: str) -> list[Row]:
    detected = torch.tensor(_detected(method.verify(victims, key)))
    victims = victims[detected]
    if not len(victims):
        return [{**row, "metric": "removal_success_rate", "value": None, "n": 0,
                 "note": f"nothing to remove: none of {which} is detected"}]
    attacked = surrogate_remove(method, surrogate, victims, word, budget_db, pgd_steps)
    k, n, lo, hi = _rate([not hit for hit in _detected(method.verify(attacked, key))])
    real = method.decoder_for(key)
    return [{**row, "metric": "removal_success_rate", "value": k / n, "n": n,
             "note": f"{pgd_steps} L2-PGD steps against the surrogate toward the word's "
                     f"complement on {which} (surrogate reads "
                     f"{word_agreement(method, surrogate, victims, word):.3f} of the word "
                     f"before, {word_agreement(method, surrogate, attacked, word):.3f} after; "
                     f"real decoder {word_agreement(method, real, victims, word):.3f} before, "
                     f"{word_agreement(method, real, attacked, word):.3f} after); "
                     f"{k}/{n} no longer detected; 95% CI [{lo:.3f}, {hi:.3f}]"},
            {**row, "metric": "removal_psnr",
             "value": float(psnr(attacked, victims.to(attacked.device)).mean()), "n": n,
             "note": "attacked vs its marked photo"}]


def surrogate_rows(method: Any, clean: torch.Tensor, marked: torch.Tensor, key: WatermarkKey,
                   budget_db: float, base: Mapping[str, Any], targets: torch.Tensor,
                   fresh: torch.Tensor | None = None, train_steps: int = 400,
                   pgd_steps: int = 100, views: int = 16, seed: int = 0) -> list[Row]:
    """Rows of the surrogate attack: ``forgery_success_rate`` / ``forgery_psnr`` (label
    ``surrogate_forgery``), ``removal_success_rate`` / ``removal_psnr`` on the attacker's own
    marked photos (label ``surrogate_removal_own``) and on ``fresh`` ones (label
    ``surrogate_removal``); rates with their 95% interval in the note.

    Args:
        method: a keyed ``PGDSigner`` (``applies``).
        clean: N×3×H×W clean originals of the attacker's marked photos.
        marked: the same photos marked under ``key`` (8-bit): the training set.
        key: the victim's key (its word is the generous label; verification uses the key).
        budget_db: the method's embedding PSNR.
        base: ``method`` / ``family`` cells.
        targets: T×3×H×W clean forgery targets.
        fresh: M×3×H×W photos marked under ``key`` that the surrogate never saw.
        train_steps, pgd_steps, views, seed: the surrogate's training and the PGD.
    """
    forged_row = {**base, "attack": "surrogate_forgery", "strength": float(len(clean)),
                  "label": "surrogate_forgery"}
    if not applies(method):
        note = "does not apply: no keyed decoder over a shipped public one"
        return [{**forged_row, "metric": "forgery_success_rate", "value": None, "n": 0,
                 "note": note}]
    word = method.codec.encode(key)
    surrogate = train_surrogate(method, clean, marked, word, train_steps, views, seed=seed)
    real = method.decoder_for(key)
    seen = (f"surrogate (own stem + head, shipped later layers, {len(clean)} marked photos × "
            f"{views} views, {train_steps} Adam steps, the victim's word given as label) "
            f"reads {word_agreement(method, surrogate, marked, word):.3f} of the word on its "
            f"marked photos, {word_agreement(method, surrogate, targets, word):.3f} on clean "
            "targets")
    forged = surrogate_forge(method, surrogate, targets, word, budget_db, pgd_steps)
    k, n, lo, hi = _rate(_detected(method.verify(forged, key)))
    rows = [{**forged_row, "metric": "forgery_success_rate", "value": k / n, "n": n,
             "note": f"{seen}; {pgd_steps} L2-PGD steps against it: surrogate reads "
                     f"{word_agreement(method, surrogate, forged, word):.3f}, the real "
                     f"decoder {word_agreement(method, real, forged, word):.3f} of the word "
                     f"(on the clean targets {word_agreement(method, real, targets, word):.3f}"
                     f"); {k}/{n} detected under the victim's key; "
                     f"95% CI [{lo:.3f}, {hi:.3f}]"},
            {**forged_row, "metric": "forgery_psnr",
             "value": float(psnr(forged, targets.to(forged.device)).mean()), "n": n,
             "note": "forged vs its clean target"}]
    sets = [("surrogate_removal_own", marked, "its own training photos")]
    if fresh is not None:
        sets.append(("surrogate_removal", fresh, "marked photos it never saw"))
    for label, victims, which in sets:
        row = {**base, "attack": label, "strength": budget_db, "label": label}
        rows += _removal_rows(method, surrogate, victims, key, word, budget_db, pgd_steps,
                              row, which)
    return rows
