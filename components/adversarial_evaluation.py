"""Adversarial and certified robustness of a stamp scanner, as tidy rows.

Works with any method exposing the anti-forwarding scanner API (``Scanner``; a
``WatermarkMethod`` declares it with ``has_scanner = True``): ``classifier_module()``
(B×3×H×W in [0, 1] → B×2 logits, class 1 = stamped, no noise), ``scanner_logits(images)``,
``certify(images, *, n0, n, certify_alpha, generator) -> list[Certificate]``,
``to_grid(images)`` (the deployed scanner's own view of the images: the space where
``certify`` and the scan statistic add their noise; a view maps to itself),
``config.sigma`` and ``smoothed`` (whether ``verify`` smooths with that σ).

``adversarial_rows`` attacks stamped images toward "not stamped" (removal, so
the image can be forwarded) and, optionally, clean images toward "stamped"
(forgery), and judges every image on the scanner's *deployed* decision:
the argmax of the logits when ``sigma == 0``, the smoothed decision of
``method.certify`` (Cohen et al.; abstain = no decision) when ``sigma > 0``.
So an attack that fools the base classifier but not the smoothed one counts
as a failure. (The seed compares a plain and a smoothed scanner under APGD too, but
its smoothed figure is not a decision: see ``detection_rate_adversarial``.)

``certified_rows`` gives certified accuracy against the L2 radius (stamped
images labelled 1, clean images 0).

Rows have the columns of ``neuralmark.components.evaluation`` (``method, attack,
strength, label, metric, value, n``), so ``summarize`` flattens them to
MLflow names such as ``attack_success_rate/apgd_linf_8`` and
``certified_accuracy/certified_l2_0.5``, and ``rows_to_csv`` writes them.

Metrics of ``adversarial_rows`` (per attack label; strength = ε in 1/255):

- ``detection_rate_adversarial``: share of attacked stamped images decided
  "stamped" (robust detection). Not the seed's "71.22%": seed 004's ``evaluate_rs.py``
  reports a soft vote share (the mean over images and 1000 noise draws of single noisy
  forwards voting "stamped": no majority, no abstention, no confidence bound, no
  calibrated threshold) after a transfer attack on the noise-free detector, which
  ``detection_rate_adversarial`` of a smoothed scanner (a certified majority) and the
  ``_verify`` metrics (the calibrated rule) are not (af10 measured the three on the same
  attacked images: ``scripts/anti_forward_apgd_curve.py``).
- ``attack_success_rate``: among stamped images decided "stamped" before the
  attack, the share decided otherwise after it (abstaining counts as success:
  the stamp is no longer confirmed).
- ``abstain_rate_adversarial``: smoothed scanners only.
- ``false_positive_rate_adversarial`` / ``forgery_success_rate``: the same on
  clean images attacked toward "stamped" (``forge=True``).
- ``linf_distance_max``: largest measured ``‖adv − x‖∞`` (on the [0, 1] scale).
- ``queries_per_image``: Square only, measured forwards per image (a query
  to a smoothed scanner's soft score costs ``eot_iter`` base forwards).

With ``also_verify`` the same adversarial images are also judged by
``method.verify`` (the deployed rule); those metrics end in ``_verify``.

and on label ``none``: ``detection_rate_unattacked``,
``false_positive_rate_unattacked`` (+ ``abstain_rate_unattacked``).
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from neuralmark.components.attacks.adversarial import (
    ATTACK_NAMES,
    STAMPED,
    NoisyClassifier,
    QueryCounter,
    apgd,
    apgd_eot,
    attack_label,
    goal_labels,
    square,
)
from neuralmark.components.evaluation import Row, _batches, _method_name, _report
from neuralmark.components.smoothing import Certificate, certified_accuracy


class Scanner(Protocol):
    """What these evaluations need from a method (the anti_forward scanner API).

    Attributes:
        key: the ``method`` column of the rows.
        config: has ``sigma``, the smoothing noise σ (0 = none).
        smoothed: whether ``verify`` smooths with ``config.sigma`` (anti_forward's
            ``baseline`` keeps a σ in its config but was never trained under noise).
    """

    key: str
    config: Any
    smoothed: bool

    def classifier_module(self) -> nn.Module: ...

    def scanner_logits(self, images: torch.Tensor) -> torch.Tensor: ...

    def to_grid(self, images: torch.Tensor) -> torch.Tensor: ...

    def certify(self, images: torch.Tensor, *, n0: int | None = None, n: int | None = None,
                certify_alpha: float | None = None,
                generator: torch.Generator | None = None) -> list[Certificate]: ...

    def verify(self, images: torch.Tensor, key: Any = None) -> list[Any]: ...


def _seed(seed: int, text: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(text.encode())) % (2**63)


def smoothing_sigma(method: Scanner) -> float:
    """σ of the scanner's deployed decision: ``config.sigma`` if it smooths, else 0."""
    return float(method.config.sigma) if method.smoothed else 0.0


def eot_transform(method: Scanner) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Where the attacks' noise goes (APGD-EoT, Square on a smoothed score): the map of
    images into the view the deployed scanner reads and noises, ``None`` when it does not
    smooth.

    That view is ``method.to_grid``: for anti_forward's ``stamp_mode`` "stretch" the
    working-size image, for "tiles" / "conv" the photo's grid of working-size tiles, whose
    tile logits the scanner averages. (The working-size view of a tiled scanner would
    squash the whole photo into one tile: an attack on a classifier nobody deploys.)
    ``classifier_module()`` applied to a view reads it as is (``to_grid`` maps a view to
    itself), so the attacked model is the scan path, noise included.
    """
    return method.to_grid if smoothing_sigma(method) > 0 else None


def _check_batch(name: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty N×3×H×W tensor")


def scanner_decisions(method: Scanner, images: torch.Tensor, *, smoothing_n: int = 1000,
                      smoothing_n0: int | None = None, certify_alpha: float | None = None,
                      seed: int = 0, batch_size: int = 16) -> list[int | None]:
    """The scanner's deployed decision per image: 1 stamped, 0 not, ``None`` abstain.

    Unsmoothed (``smoothing_sigma(method) == 0``): argmax of
    ``method.scanner_logits``. Smoothed: the label of ``method.certify`` with
    ``smoothing_n`` estimation samples (``None`` when it abstains).

    Args:
        method: a scanner method.
        images: N×3×H×W in [0, 1].
        smoothing_n: estimation noise samples per image (smoothed scanners).
        smoothing_n0: selection samples (``None`` = the method's default).
        certify_alpha: certification level (``None`` = the method's default).
        seed: seeds the smoothing noise.
        batch_size: images per call.

    Returns:
        N decisions.
    """
    out: list[int | None] = []
    if smoothing_sigma(method) == 0:
        with torch.no_grad():
            for s in _batches(len(images), batch_size):
                out += method.scanner_logits(images[s]).argmax(dim=1).tolist()
        return out
    generator = torch.Generator().manual_seed(seed)
    for s in _batches(len(images), batch_size):
        certs = method.certify(images[s], n0=smoothing_n0, n=smoothing_n,
                               certify_alpha=certify_alpha, generator=generator)
        out += [c.label for c in certs]
    return out


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags)


def verify_decisions(method: Any, images: torch.Tensor, key: Any = None,
                     batch_size: int = 16) -> list[int]:
    """The full ``verify`` decision per image (N×3×H×W): 1 if ``Verdict.detected``, else 0."""
    return [int(bool(v.detected)) for s in _batches(len(images), batch_size)
            for v in method.verify(images[s], key)]


def _attack(name: str, classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
            sigma: float, eps: float, steps: int, queries: int, eot_iter: int,
            noise_samples: int, seed: int,
            transform: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, int]:
    """Run one attack on one batch; returns (adversarial images, model queries)."""
    if name == "apgd":  # on a smoothed scanner: transfer from the base classifier
        return apgd(classifier, images, labels, eps=eps, steps=steps, seed=seed), 0
    if name == "square":
        # black box against the deployed score: for a smoothed scanner the soft smoothed
        # classifier over ``eot_iter`` draws (one query = eot_iter base forwards)
        target = classifier if sigma == 0 else NoisyClassifier(
            classifier, sigma, samples=eot_iter, seed=seed, transform=transform)
        counter = QueryCounter(target)
        adv = square(counter, images, labels, eps=eps, queries=queries, seed=seed)
        return adv, counter.images
    if name == "apgd_eot":
        return apgd_eot(classifier, images, labels, sigma=sigma, eps=eps, steps=steps,
                        eot_iter=eot_iter, noise_samples=noise_samples, seed=seed,
                        transform=transform), 0
    raise ValueError(f"unknown adversarial attack {name!r}; valid: {', '.join(ATTACK_NAMES)}")


def _decision_rows(goal: str, before: list[int | None], after: list[int | None],
                   suffix: str, smoothed: bool) -> list[tuple[str, float, int]]:
    """(metric, value, n) of one attacked side under one decision rule."""
    out: list[tuple[str, float, int]] = []
    want = STAMPED if goal == "remove" else 1 - STAMPED  # the correct decision
    flagged = [d == STAMPED for d in after]
    held = [i for i, d in enumerate(before) if d == want]
    if goal == "remove":
        out.append((f"detection_rate_adversarial{suffix}", _share(flagged), len(after)))
        if held:
            out.append((f"attack_success_rate{suffix}",
                        _share([after[i] != want for i in held]), len(held)))
        if smoothed:
            out.append((f"abstain_rate_adversarial{suffix}",
                        _share([d is None for d in after]), len(after)))
    else:
        out.append((f"false_positive_rate_adversarial{suffix}", _share(flagged), len(after)))
        if held:
            out.append((f"forgery_success_rate{suffix}",
                        _share([after[i] == STAMPED for i in held]), len(held)))
    return out


def adversarial_rows(
    method: Scanner,
    stamped: torch.Tensor,
    clean: torch.Tensor | None = None,
    *,
    eps: float = 8 / 255,
    attacks: Sequence[str] = ATTACK_NAMES,
    steps: int = 100,
    queries: int = 1000,
    eot_iter: int = 20,
    noise_samples: int = 1,
    seed: int = 0,
    smoothing_n: int = 1000,
    smoothing_n0: int | None = None,
    certify_alpha: float | None = None,
    forge: bool = True,
    also_verify: bool = False,
    key: Any = None,
    batch_size: int = 16,
    name: str | None = None,
    progress: Callable[[int, int, str], None] | Any | None = None,
) -> list[Row]:
    """Attack success and robust detection under APGD, Square and APGD-EoT.

    ``apgd_eot`` needs noise to average over: on an unsmoothed scanner
    (``sigma == 0``) it is skipped (it would be ``apgd``). Its noise, and that
    of Square's queries on a smoothed scanner, is added where the method
    certifies (after ``eot_transform(method)``, the scanner's own view).

    Args:
        method: a scanner method (see ``Scanner``).
        stamped: N×3×H×W stamped images in [0, 1] (attacked toward "not stamped").
        clean: M×3×H×W clean images in [0, 1] (attacked toward "stamped" when
            ``forge``); ``None`` skips forgery and the unattacked FPR.
        eps: L∞ budget on the [0, 1] scale (8/255 in the seed).
        attacks: subset of ``("apgd", "square", "apgd_eot")``.
        steps: APGD iterations.
        queries: Square query budget per image.
        eot_iter: gradient samples per APGD-EoT step; also noise draws per
            Square query on a smoothed scanner.
        noise_samples: noise draws averaged inside each APGD-EoT forward.
        seed: seeds attacks and smoothing noise (a label replays the same draw).
        smoothing_n: estimation samples of the smoothed decision.
        smoothing_n0: selection samples (``None`` = method default).
        certify_alpha: certification level (``None`` = method default).
        forge: also attack the clean images toward "stamped".
        also_verify: also judge the same images by ``method.verify(images, key)``
            (the deployed rule: calibrated test, and certification when the
            method smooths); those metrics end in ``_verify``.
        key: passed to ``verify`` (``None`` for key-free scanners).
        batch_size: images per attack call.
        name: the ``method`` column (default: the method's registry key, as
            ``run_suite`` writes it, so both tables summarize together).
        progress: ``progress(done, total, desc)`` or an object with ``on_progress``.

    Returns:
        Tidy rows (see the module docstring for the metrics).
    """
    _check_batch("stamped", stamped)
    if clean is not None:
        _check_batch("clean", clean)
    unknown = [a for a in attacks if a not in ATTACK_NAMES]
    if unknown:
        raise ValueError(f"unknown adversarial attacks {unknown}; valid: {', '.join(ATTACK_NAMES)}")
    sigma = smoothing_sigma(method)
    smoothed = sigma > 0
    run = [a for a in attacks if smoothed or a != "apgd_eot"]
    name = name or _method_name(method)
    classifier = method.classifier_module()
    transform = eot_transform(method)
    decide = dict(smoothing_n=smoothing_n, smoothing_n0=smoothing_n0,
                  certify_alpha=certify_alpha, batch_size=batch_size)
    sides = [("remove", stamped)] + ([("forge", clean)] if clean is not None and forge else [])
    total = 1 + len(run) * len(sides)
    rows: list[Row] = []

    def add(attack: str, strength: float | None, lab: str, metric: str, value: float,
            n: int) -> None:
        rows.append({"method": name, "attack": attack, "strength": strength, "label": lab,
                     "metric": metric, "value": float(value), "n": int(n)})

    rules: list[tuple[str, Callable[[torch.Tensor, str], list[int | None]]]] = [
        ("", lambda x, tag: scanner_decisions(method, x, seed=_seed(seed, tag), **decide))]
    if also_verify:
        rules.append(("_verify", lambda x, tag: verify_decisions(method, x, key, batch_size)))

    before: dict[tuple[str, str], list[int | None]] = {}
    for suffix, rule in rules:
        before["remove", suffix] = rule(stamped, "none/s")
        add("none", None, "none", f"detection_rate_unattacked{suffix}",
            _share([d == STAMPED for d in before["remove", suffix]]), len(stamped))
        if smoothed and not suffix:
            add("none", None, "none", "abstain_rate_unattacked",
                _share([d is None for d in before["remove", suffix]]), len(stamped))
        if clean is not None:
            before["forge", suffix] = rule(clean, "none/c")
            add("none", None, "none", f"false_positive_rate_unattacked{suffix}",
                _share([d == STAMPED for d in before["forge", suffix]]), len(clean))
    _report(progress, 1, total, "unattacked")

    done = 1
    for attack in run:
        lab = attack_label(attack, eps)
        strength = round(float(eps) * 255, 4)
        for goal, images in sides:
            adv_parts, used = [], 0
            for i, s in enumerate(_batches(len(images), batch_size)):
                batch = images[s].detach()
                labels = goal_labels(goal, len(batch), batch.device)
                adv, q = _attack(attack, classifier, batch, labels, sigma=sigma, eps=eps,
                                 steps=steps, queries=queries, eot_iter=eot_iter,
                                 noise_samples=noise_samples,
                                 seed=_seed(seed, f"{lab}/{goal}/{i}") % (2**31),
                                 transform=transform)
                adv_parts.append(adv)
                used += q
            adv = torch.cat(adv_parts)  # n c h w
            for suffix, rule in rules:
                after = rule(adv, f"{lab}/{goal}/decide")
                for metric, value, n in _decision_rows(goal, before[goal, suffix], after,
                                                       suffix, smoothed and not suffix):
                    add(attack, strength, lab, metric, value, n)
            if goal == "remove":
                add(attack, strength, lab, "linf_distance_max",
                    float((adv - images).abs().max()), len(adv))
            if attack == "square":
                metric = "queries_per_image" if goal == "remove" else "forgery_queries_per_image"
                add(attack, strength, lab, metric, used / len(images), len(images))
            done += 1
            _report(progress, done, total, f"{lab}/{goal}")
    return rows


def certified_rows(method: Scanner, stamped: torch.Tensor, clean: torch.Tensor | None,
                   radii: Sequence[float], *, n0: int | None = None, n: int | None = None,
                   certify_alpha: float | None = None, seed: int = 0, batch_size: int = 16,
                   name: str | None = None) -> list[Row]:
    """Certified accuracy vs L2 radius of a smoothed scanner.

    Stamped images carry label 1, clean images label 0. An image counts at
    radius r when ``method.certify`` does not abstain, its label is right and
    its certified radius is at least r (``smoothing.certified_accuracy``).
    Radii are in the space where the method adds its noise (see
    ``neuralmark.components.smoothing``).

    Rows: per radius (attack ``certified_l2``, strength r, label
    ``certified_l2_<r>``) ``certified_accuracy`` over all images,
    ``certified_accuracy_stamped`` and ``certified_accuracy_clean``; once
    (label ``certified_l2``) ``abstain_rate`` and ``certified_radius_median``
    (median over images of the radius when correct, 0 otherwise).

    Args:
        method: a smoothed scanner (``config.sigma > 0``).
        stamped: N×3×H×W stamped images in [0, 1].
        clean: M×3×H×W clean images in [0, 1], or ``None``.
        radii: L2 radii to report.
        n0, n, certify_alpha: ``certify`` parameters (``None`` = the method's defaults).
        seed: seeds the noise.
        batch_size: images per ``certify`` call.
        name: the ``method`` column (default: the registry key).

    Raises:
        ValueError: ``sigma == 0`` (nothing is certified without noise).
    """
    _check_batch("stamped", stamped)
    if method.config.sigma <= 0:
        raise ValueError(f"{_method_name(method)} has sigma = 0: an unsmoothed scanner "
                         "certifies nothing")
    if not radii:
        raise ValueError("certified_rows needs at least one radius")
    name = name or _method_name(method)
    generator = torch.Generator().manual_seed(seed)
    groups: dict[str, tuple[list[Certificate], list[int]]] = {}
    for group, images, y in (("stamped", stamped, 1), ("clean", clean, 0)):
        if images is None:
            continue
        _check_batch(group, images)
        certs = [c for s in _batches(len(images), batch_size)
                 for c in method.certify(images[s], n0=n0, n=n, certify_alpha=certify_alpha,
                                         generator=generator)]
        groups[group] = (certs, [y] * len(certs))
    certs = [c for cs, _ in groups.values() for c in cs]
    labels = [y for _, ys in groups.values() for y in ys]

    rows: list[Row] = []

    def add(strength: float | None, lab: str, metric: str, value: float, count: int) -> None:
        rows.append({"method": name, "attack": "certified_l2", "strength": strength,
                     "label": lab, "metric": metric, "value": float(value), "n": int(count)})

    radii = [float(r) for r in radii]
    overall = certified_accuracy(certs, labels, radii)
    per_group = {g: certified_accuracy(cs, ys, radii) for g, (cs, ys) in groups.items()}
    for j, r in enumerate(radii):
        lab = f"certified_l2_{r:g}"
        add(r, lab, "certified_accuracy", overall[j], len(certs))
        for g, values in per_group.items():
            add(r, lab, f"certified_accuracy_{g}", values[j], len(groups[g][0]))
    add(None, "certified_l2", "abstain_rate", _share([c.abstained for c in certs]), len(certs))
    add(None, "certified_l2", "certified_radius_median",
        statistics.median(c.radius if c.label == y else 0.0 for c, y in zip(certs, labels,
                                                                           strict=True)),
        len(certs))
    return rows
