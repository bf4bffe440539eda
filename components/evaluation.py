"""One evaluation entry point over an attack grid, and one tidy table out.

``run_suite`` embeds the carriers once, runs every (attack, strength) of a
suite on the marked images *and* on the clean carriers (same random draw for
both), verifies both, and returns rows::

    method, attack, strength, label, metric, value, n

``value`` is a mean (or a share, or a median) over the ``n`` images it was
computed from. ``summarize`` flattens the rows into MLflow-safe metric names
for the gate; ``rows_to_csv`` / ``rows_from_csv`` are the table on disk that
plots and notebooks read.

Metrics per (attack, strength):

- ``bit_accuracy``: mean ``Verdict.bit_accuracy`` over marked images that report one.
- ``detection_rate``: share of marked images detected (TPR by ``Verdict.detected``, the
  method's own rule, or at ``p ≤ alpha`` when ``alpha`` is given).
- ``false_positive_rate``: share of attacked *clean* carriers detected.
- ``p_value_median``: median p-value over marked images that report one.
- ``unreadable_rate``: share of marked images whose verdict is ``unreadable``.

Plus ``psnr`` and ``ssim`` of marked vs clean, once, on the ``none`` row.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from neuralmark.components.attacks.registry import (
    Suite,
    attack_seed,
    build_attack,
    canonical_name,
    label,
)
from neuralmark.components.files import atomic_file
from neuralmark.components.methods.base import (
    InputError,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    random_keys,
)
from neuralmark.components.metrics import psnr, ssim
from neuralmark.components.stats import clopper_pearson

COLUMNS = ("method", "attack", "strength", "label", "metric", "value", "n")
Row = dict[str, Any]
Progress = Callable[[int, int, str], None]


def _method_name(method: WatermarkMethod) -> str:
    return method.key or type(method).__name__


def _report(progress: Any, done: int, total: int, desc: str) -> None:
    if progress is None:
        return
    hook = getattr(progress, "on_progress", None)
    (hook or progress)(done, total, desc)


def _batches(n: int, batch_size: int) -> list[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _verify(method: WatermarkMethod, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
    """``method.verify`` with an input the method rejects counted as unreadable."""
    try:
        with torch.no_grad():
            verdicts = method.verify(images, key)
    except InputError as err:
        return [Verdict.unreadable(f"input rejected: {err}") for _ in range(images.shape[0])]
    if len(verdicts) != images.shape[0]:
        raise RuntimeError(
            f"{_method_name(method)}.verify returned {len(verdicts)} verdicts "
            f"for {images.shape[0]} images"
        )
    return list(verdicts)


def _is_detected(v: Verdict, alpha: float | None) -> bool:
    if v.status == Status.UNREADABLE:
        return False
    if alpha is None:
        return bool(v.detected)
    return v.p_value is not None and v.p_value <= alpha


def embed_all(method: WatermarkMethod, carriers: torch.Tensor, key: WatermarkKey,
              batch_size: int = 16) -> torch.Tensor:
    """Embed in batches (gradients enabled: PGD-style signers need them).

    Args:
        carriers: N×3×H×W in [0, 1].

    Returns:
        N×3×H×W marked images, detached.
    """
    parts = [method.embed(carriers[s], key).detach() for s in _batches(len(carriers), batch_size)]
    return torch.cat(parts)


def _verdict_rows(marked: list[Verdict], clean: list[Verdict], alpha: float | None,
                  base: Row) -> list[Row]:
    rows: list[Row] = []

    def add(metric: str, value: float, n: int) -> None:
        rows.append({**base, "metric": metric, "value": float(value), "n": int(n)})

    accs = [v.bit_accuracy for v in marked if v.bit_accuracy is not None]
    if accs:
        add("bit_accuracy", sum(accs) / len(accs), len(accs))
    add("detection_rate", sum(_is_detected(v, alpha) for v in marked) / len(marked), len(marked))
    add("false_positive_rate",
        sum(_is_detected(v, alpha) for v in clean) / len(clean), len(clean))
    pvals = [v.p_value for v in marked if v.p_value is not None]
    if pvals:
        add("p_value_median", statistics.median(pvals), len(pvals))
    add("unreadable_rate",
        sum(v.status == Status.UNREADABLE for v in marked) / len(marked), len(marked))
    return rows


def run_suite(
    method: WatermarkMethod,
    carriers: torch.Tensor,
    key: WatermarkKey,
    suite: Suite,
    *,
    watermarked: torch.Tensor | None = None,
    alpha: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | Any | None = None,
) -> list[Row]:
    """Evaluate a content method over an attack grid.

    Args:
        method: a content method (``embed`` / ``verify``).
        carriers: N×3×H×W clean images in [0, 1].
        key: the owner's key used to embed and verify.
        suite: ``[(attack name, [strength, ...]), ...]`` (see ``attacks.registry``).
        watermarked: N×3×H×W already-marked carriers; skips embedding.
        alpha: if given, "detected" means ``p_value <= alpha``; else ``Verdict.detected``.
        batch_size: images per ``embed`` / ``verify`` call.
        seed: seeds the attacks' random draws (crop offsets, noise).
        progress: ``progress(done, total, desc)`` or an object with ``on_progress``.

    Returns:
        Tidy rows with keys ``method, attack, strength, label, metric, value, n``.
    """
    if not isinstance(carriers, torch.Tensor) or carriers.ndim != 4 or len(carriers) == 0:
        raise ValueError("carriers must be a non-empty N×3×H×W tensor")
    configs = [(canonical_name(name), s) for name, strengths in suite for s in strengths]
    total = len(configs) + 1
    name = _method_name(method)

    if watermarked is None:
        _report(progress, 0, total, "embed")
        watermarked = embed_all(method, carriers, key, batch_size)
    elif watermarked.shape != carriers.shape:
        raise ValueError(f"watermarked {tuple(watermarked.shape)} does not match "
                         f"carriers {tuple(carriers.shape)}")
    watermarked = watermarked.detach()
    _report(progress, 1, total, "embed")

    quality = {"method": name, "attack": "none", "strength": None, "label": "none"}
    rows: list[Row] = []
    for metric, fn in (("psnr", psnr), ("ssim", ssim)):
        values = torch.cat([fn(watermarked[s], carriers[s])
                            for s in _batches(len(carriers), batch_size)])  # n
        rows.append({**quality, "metric": metric, "value": float(values.mean()),
                     "n": len(carriers)})

    for i, (attack_name, strength) in enumerate(configs):
        attack = build_attack(attack_name, strength)
        attack_label = label(attack_name, strength)
        generator = torch.Generator().manual_seed(attack_seed(seed, attack_label))
        marked_v: list[Verdict] = []
        clean_v: list[Verdict] = []
        for s in _batches(len(carriers), batch_size):
            with torch.no_grad():
                params = attack.sample(s.stop - s.start, generator)
                attacked_marked = attack.apply(watermarked[s], params)
                attacked_clean = attack.apply(carriers[s], params)
            marked_v += _verify(method, attacked_marked, key)
            clean_v += _verify(method, attacked_clean, key)
        base = {"method": name, "attack": attack_name, "strength": attack.strength,
                "label": attack_label}
        rows += _verdict_rows(marked_v, clean_v, alpha, base)
        _report(progress, i + 2, total, attack_label)
    return rows


def calibrate_fpr(
    method: WatermarkMethod,
    clean_images: torch.Tensor,
    n_keys: int = 20,
    alpha: float | None = None,
    seed: int = 0,
    *,
    batch_size: int = 16,
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """Measure the false-positive rate on clean images against random keys.

    A trial is one (clean image, random key) pair, the keys being
    ``random_keys(n_keys, Generator(seed))`` (a wrong owner's key). It is a false
    positive when its p-value is at most the level (``alpha``, else the method's
    ``detection_alpha``); for a method that declares no p-value level
    (``detection_alpha is None``) when ``verify`` says ``detected``. Unreadable inputs
    are never false positives. The method's declared contract decides how:

    - ``keyed_detection = False``: the key does not decide detection, so another key is
      not another trial; each clean image is verified once.
    - ``null_p_values`` not ``None``: its p-values (the same keys, one decode per image).
    - otherwise ``verify`` once per random key.

    The interval is exact Clopper–Pearson; it treats trials as independent, which is
    exact across images and an approximation across keys on the same image.

    Args:
        method: a content method.
        clean_images: N×3×H×W unmarked images in [0, 1].
        n_keys: random keys per image.
        alpha: p-value level; ``None`` = the method's ``detection_alpha``.
        seed: seeds the random keys.
        batch_size: images per call.
        confidence: level of the two-sided interval.

    Returns:
        ``{fpr, ci_low, ci_high, trials, detections, unreadable, alpha}`` (``alpha`` is the
        level used; ``None`` when trials were judged by ``Verdict.detected``).
    """
    if not isinstance(clean_images, torch.Tensor) or clean_images.ndim != 4 \
            or len(clean_images) == 0:
        raise ValueError("clean_images must be a non-empty N×3×H×W tensor")
    if n_keys < 1:
        raise ValueError(f"n_keys must be >= 1, got {n_keys}")
    level = method.detection_alpha if alpha is None else float(alpha)
    if level is not None and not 0 < level < 1:
        raise ValueError(f"the p-value level must lie in (0, 1), got {level}")
    n_trial_keys = n_keys if method.keyed_detection else 1
    parts = _null_p_values(method, clean_images, n_trial_keys, seed, batch_size) \
        if level is not None else None
    if parts is not None:
        pvals = torch.cat(parts)  # n k
        detected = pvals <= level  # NaN compares False: unreadable is no detection
        unreadable = torch.isnan(pvals)
    else:
        detected, unreadable = _verify_random_keys(method, clean_images, n_trial_keys, seed,
                                                   batch_size, level)
    trials = int(detected.numel())
    detections = int(detected.sum())
    lo, hi = clopper_pearson(detections, trials, confidence)
    return {
        "fpr": detections / trials,
        "ci_low": lo,
        "ci_high": hi,
        "trials": trials,
        "detections": detections,
        "unreadable": int(unreadable.sum()),
        "alpha": level,
    }


def _null_p_values(method: WatermarkMethod, images: torch.Tensor, n_keys: int, seed: int,
                   batch_size: int) -> list[torch.Tensor] | None:
    """The method's fast path per batch (same keys for every batch), or ``None``."""
    parts = []
    for s in _batches(len(images), batch_size):
        try:
            with torch.no_grad():
                p = method.null_p_values(images[s], n_keys, torch.Generator().manual_seed(seed))
        except InputError:  # as in ``_verify``: an input the method rejects is unreadable
            p = torch.full((s.stop - s.start, n_keys), math.nan, dtype=torch.float64)
        if p is None:
            return None
        p = torch.as_tensor(p, dtype=torch.float64)
        if p.shape != (s.stop - s.start, n_keys):
            raise RuntimeError(f"{_method_name(method)}.null_p_values returned "
                               f"{tuple(p.shape)}, expected {(s.stop - s.start, n_keys)}")
        parts.append(p)
    return parts


def _verify_random_keys(method: WatermarkMethod, images: torch.Tensor, n_keys: int, seed: int,
                        batch_size: int, level: float | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(detected, unreadable), both N×K bool, from ``verify`` against each random key."""
    detected, unreadable = [], []
    for key in random_keys(n_keys, torch.Generator().manual_seed(seed)):
        verdicts = [v for s in _batches(len(images), batch_size)
                    for v in _verify(method, images[s], key)]
        detected.append([_is_detected(v, level) for v in verdicts])
        unreadable.append([v.status == Status.UNREADABLE for v in verdicts])
    return torch.tensor(detected).T, torch.tensor(unreadable).T  # n k


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Flatten suite rows into MLflow-safe metric names for logging and the gate.

    Keys: ``psnr``, ``ssim``; per label ``bit_accuracy/<label>``,
    ``detection_rate/<label>``, ``fpr/<label>``, ``p_value_median/<label>``,
    ``unreadable_rate/<label>``; and ``bit_accuracy_mean_attacked``,
    ``detection_rate_mean_attacked`` (unweighted means over every label except
    ``none``). The calibrated ``fpr`` comes from ``calibrate_fpr``, not from here.

    Raises:
        ValueError: rows from more than one method.
    """
    methods = {r["method"] for r in rows}
    if len(methods) > 1:
        raise ValueError(f"summarize one method at a time, got {sorted(methods)}")
    names = {"false_positive_rate": "fpr"}
    out: dict[str, float] = {}
    attacked: dict[str, list[float]] = {"bit_accuracy": [], "detection_rate": []}
    for r in rows:
        metric, lab, value = r["metric"], r["label"], float(r["value"])
        if metric in ("psnr", "ssim"):
            out[metric] = value
            continue
        out[f"{names.get(metric, metric)}/{lab}"] = value
        if metric in attacked and lab != "none":
            attacked[metric].append(value)
    for metric, values in attacked.items():
        if values:
            out[f"{metric}_mean_attacked"] = sum(values) / len(values)
    return out


def _format_cell(value: Any) -> str:
    return "" if value is None else str(value)


def rows_to_csv(rows: Sequence[Row], path: str | os.PathLike) -> Path:
    """Write rows as CSV (columns ``COLUMNS``) atomically (``files.atomic_file``).

    Raises:
        ValueError: a row lacks one of ``COLUMNS`` (nothing is written).
    """
    for i, r in enumerate(rows):
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            raise ValueError(f"row {i} is missing columns {missing}")
    with atomic_file(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: _format_cell(r[c]) for c in COLUMNS})
    return Path(path)


def rows_from_csv(path: str | os.PathLike) -> list[Row]:
    """Read rows written by ``rows_to_csv`` (strength ``None`` where empty)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a suite table: missing columns {sorted(missing)}")
        return [
            {
                "method": r["method"],
                "attack": r["attack"],
                "strength": float(r["strength"]) if r["strength"] else None,
                "label": r["label"],
                "metric": r["metric"],
                "value": float(r["value"]),
                "n": int(r["n"]),
            }
            for r in reader
        ]
