"""One benchmark run: every entrant through the same attacks on the same photos.

``run_benchmark(settings, photos)`` returns the tidy long-format table (``COLUMNS``):

    method, family, attack, strength, label, metric, value, n, note

Per entrant: ``psnr`` / ``ssim`` (``none`` row), per (attack, strength) ``bit_accuracy``,
``detection_rate`` (TPR at the method's declared level), ``false_positive_rate`` (the same
attack on the clean photo), ``p_value_median``, ``unreadable_rate`` (all from
``evaluation.run_suite``), the calibrated ``fpr_clean`` on clean photos against
``fpr_keys`` random keys (``evaluation.calibrate_fpr``, Clopper–Pearson interval in the
note), timing and peak memory (``timing``), the copy and black-box removal attacks
(``forgery``; with ``forgery_targets`` also over separate target photos and the
surrogate-learning attack, ``surrogate_forgery``) and the white-box removal against the public
decoder (``whitebox``). Model
methods (family ``model``) get their own rows: their shipped host through the model attacks
(``models``). Anything an entrant cannot do (package missing, no weights, photos too
small, an error of the method on this input) is a row with an empty value and the reason in
``note``; the run goes on.

Marked photos are rounded to 8-bit levels before they are attacked or verified: what a user
saves and shares is an 8-bit file, and verifying the saved files gives the same verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from neuralmark.components.benchmark.entrants import Entrant, entrants
from neuralmark.components.benchmark.estimation_forgery import (
    MAX_SOURCES,
    estimation_forgery_rows,
)
from neuralmark.components.benchmark.forgery import copy_attack_rows, removal_attack_rows
from neuralmark.components.benchmark.forgery_targets import forgery_targets
from neuralmark.components.benchmark.images import PhotoSet
from neuralmark.components.benchmark.models import (
    check_model_methods,
    model_methods,
    model_rows,
    model_suite,
)
from neuralmark.components.benchmark.surrogate_forgery import applies as surrogate_applies
from neuralmark.components.benchmark.surrogate_forgery import surrogate_rows
from neuralmark.components.benchmark.sweeps import suite, sweeps
from neuralmark.components.benchmark.timing import timing_rows
from neuralmark.components.benchmark.whitebox import whitebox_removal_rows
from neuralmark.components.errors import InputError
from neuralmark.components.evaluation import calibrate_fpr, embed_all, run_suite
from neuralmark.components.imageio import quantize_8bit
from neuralmark.components.methods.base import WatermarkKey

COLUMNS = ("method", "family", "attack", "strength", "label", "metric", "value", "n", "note")
Row = dict[str, Any]
Progress = Callable[[int, int, str], None]


class BenchmarkSettings(BaseModel):
    """What a benchmark measures (frozen; unknown fields are errors).

    Attributes:
        methods: registered method keys (``None``: every content method).
        peers: peer names (``None``: every known peer; ``[]``: none).
        attacks: attacks to sweep (``None``: all of ``sweeps.SWEEPS``).
        quick: three-point sweeps, fewer timing points.
        size: side of the benchmark photos, px.
        limit: at most this many photos.
        key_secret: the owner's secret.
        key_message: the claimed message (8 bits).
        alpha: the peers' p-value level (pgd_signer's default; our methods use their own).
        fpr_keys: random keys per clean photo for the calibrated FPR.
        batch_size: photos per embed / verify call in the sweep.
        batch_sizes: batch sizes timed (``None``: [1, 4], quick [1, 2]).
        resolutions: sides timed at batch 1 (``None``: 256…2048, quick [256, 512]).
        timing_repeats: calls per timing (median).
        forgery: run the copy and removal attacks (black box and white box).
        forgery_targets: separate clean target photos for the forgeries
            (``forgery_targets.forgery_targets``: photo crops and procedural images), each
            forged from the first 10 marked benchmark photos, and the surrogate-learning
            attack on keyed decoders (``surrogate_forgery``); 0: the forgeries go leave-one-out
            over the benchmark photos and the surrogate attack is not run.
        whitebox_steps: APGD iterations of the white-box removal.
        model_methods: model method keys for the model table (``None``: every registered
            model method; ``[]``: none); a method without shipped files is a row saying so.
        model_attacks: model attacks to sweep (``None``: all of ``models.MODEL_SWEEPS``;
            those of ``models.OPTIONAL_MODEL_SWEEPS`` only when named).
        model_key_secret: the key the shipped hosts were marked under (the shipped
            trigger_key host's card states its demo key, ``neuralmark-demo``).
        seed: seeds the attacks' random draws and the FPR keys.
        device: ``cpu``, ``cuda`` or ``auto`` (our methods; the peers run on the CPU).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    methods: list[str] | None = None
    peers: list[str] | None = None
    attacks: list[str] | None = None
    quick: bool = False
    size: int = Field(256, ge=8)
    limit: int | None = Field(8, ge=1)
    key_secret: str = "neuralmark-benchmark"
    key_message: int = Field(7, ge=0, lt=256)
    alpha: float = Field(1e-6, gt=0.0, lt=1.0)
    fpr_keys: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    batch_sizes: list[int] | None = None
    resolutions: list[int] | None = None
    timing_repeats: int = Field(1, ge=1)
    forgery: bool = True
    forgery_targets: int = Field(0, ge=0)
    whitebox_steps: int = Field(20, ge=1)
    model_methods: list[str] | None = None
    model_attacks: list[str] | None = None
    model_key_secret: str = "neuralmark-demo"
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"

    def key(self) -> WatermarkKey:
        """The owner's key every entrant embeds and verifies with."""
        return WatermarkKey(self.key_secret, self.key_message)

    def timing_batches(self) -> list[int]:
        return self.batch_sizes or ([1, 2] if self.quick else [1, 4])

    def timing_resolutions(self) -> list[int]:
        return self.resolutions or ([256, 512] if self.quick else [256, 512, 1024, 2048])

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass
class BenchmarkResult:
    """The table and what produced it."""

    rows: list[Row]
    settings: BenchmarkSettings
    photos: list[str]
    entrants: list[dict[str, str]] = field(default_factory=list)


def _row(entrant: Entrant, metric: str, note: str, attack: str = "none") -> Row:
    return {"method": entrant.name, "family": entrant.family, "attack": attack,
            "strength": None, "label": attack, "metric": metric, "value": None, "n": 0,
            "note": note}


def _tag(rows: list[Row], entrant: Entrant) -> list[Row]:
    return [{**r, "family": entrant.family, "note": r.get("note", "")} for r in rows]


def benchmark_entrant(entrant: Entrant, clean: torch.Tensor, settings: BenchmarkSettings,
                      progress: Progress | None = None) -> list[Row]:
    """Every measurement of one entrant on ``clean`` (N×3×S×S); failures become rows."""
    if entrant.method is None:
        return [_row(entrant, "unavailable", entrant.unavailable)]
    if len(clean) == 0:
        return [_row(entrant, "unavailable", "no usable photo")]
    if clean.shape[-1] < entrant.min_size:
        return [_row(entrant, "unavailable", f"photos are {clean.shape[-1]} px; "
                     f"{entrant.name} needs at least {entrant.min_size} px a side")]
    method, key = entrant.method, settings.key()
    base = {"method": entrant.name, "family": entrant.family}
    try:
        marked = quantize_8bit(embed_all(method, clean, key, settings.batch_size))
    except (ValueError, RuntimeError) as err:
        return [_row(entrant, "unavailable", f"embed failed: {err}")]
    rows = _tag(run_suite(method, clean, key, suite(settings.attacks, settings.quick),
                          watermarked=marked, batch_size=settings.batch_size,
                          seed=settings.seed, progress=progress), entrant)
    for r in rows:
        r["method"] = entrant.name
    cal = calibrate_fpr(method, clean, n_keys=settings.fpr_keys, seed=settings.seed,
                        batch_size=settings.batch_size)
    level = "its own rule" if cal["alpha"] is None else f"p ≤ {cal['alpha']:g}"
    rows.append({**base, "attack": "none", "strength": None, "label": "none",
                 "metric": "fpr_clean", "value": cal["fpr"], "n": cal["trials"],
                 "note": f"{cal['detections']} of {cal['trials']} clean (photo, random key) "
                         f"trials detected at {level}; 95% CI [{cal['ci_low']:.2e}, "
                         f"{cal['ci_high']:.2e}]"})
    try:
        rows += timing_rows(method, clean, key, batch_sizes=settings.timing_batches(),
                            resolutions=settings.timing_resolutions(),
                            repeats=settings.timing_repeats, base=base)
    except (ValueError, RuntimeError) as err:
        rows.append(_row(entrant, "embed_ms", f"timing failed: {err}", "timing_batch"))
    if settings.forgery:
        targets = None
        if settings.forgery_targets:
            targets = forgery_targets(settings.forgery_targets, clean.shape[-1]).images
            targets = targets.to(clean.device)
        sources, originals = marked[:MAX_SOURCES], clean[:MAX_SOURCES]
        rows += (copy_attack_rows(method, clean, marked, key, base) if targets is None else
                 copy_attack_rows(method, originals, sources, key, base, targets=targets))
        budget = next(r["value"] for r in rows if r["metric"] == "psnr")
        rows += estimation_forgery_rows(method, clean, marked, key, budget, base,
                                        steps=settings.whitebox_steps, targets=targets)
        if targets is not None and surrogate_applies(method):
            rows += surrogate_rows(method, originals, sources, key, budget, base, targets,
                                   seed=settings.seed)
        swept = {name: strengths for name, strengths in sweeps(settings.quick).items()
                 if settings.attacks is None or name in dict(suite(settings.attacks))}
        rows += removal_attack_rows(method, marked, key, swept, budget, base, seed=settings.seed)
        rows += whitebox_removal_rows(method, marked, key, budget, base,
                                      steps=settings.whitebox_steps, seed=settings.seed)
    return rows


def run_benchmark(settings: BenchmarkSettings, photos: PhotoSet,
                  progress: Progress | None = None) -> BenchmarkResult:
    """Benchmark every requested entrant on ``photos``.

    Args:
        settings: what to measure.
        photos: the photos (``images.load_folder`` / ``images.load_heldout``).
        progress: ``progress(done, total, desc)``, called once per entrant.

    Returns:
        The tidy table (``COLUMNS``), skipped photos and unavailable entrants included.

    Raises:
        InputError: unknown method, peer, attack or model attack names.
    """
    suite(settings.attacks, settings.quick)  # unknown attack names fail before any work
    models = (model_methods() if settings.model_methods is None
              else list(settings.model_methods))
    check_model_methods(models)
    msuite = model_suite(settings.model_attacks, settings.quick) if models else []
    chosen = entrants(settings.methods, settings.peers, settings.alpha,
                      settings.resolved_device(), allow_empty=bool(models))
    clean = photos.images.to(settings.resolved_device())
    rows: list[Row] = photos.rows()
    if len(clean) == 0 and not photos.skipped:
        raise InputError("no photos to benchmark")
    total = len(chosen) + len(models)
    for i, entrant in enumerate(chosen):
        if progress is not None:
            progress(i, total, entrant.name)
        rows += benchmark_entrant(entrant, clean, settings)
    for i, key in enumerate(models):
        if progress is not None:
            progress(len(chosen) + i, total, f"{key} (model attacks)")
        rows += model_rows(key, settings.model_key_secret, msuite, seed=settings.seed,
                           device=settings.resolved_device())
    if progress is not None:
        progress(total, total, "done")
    for r in rows:
        for c in COLUMNS:
            r.setdefault(c, "" if c == "note" else None)
    info = [{"name": e.name, "family": e.family, "source": e.source,
             "unavailable": e.unavailable} for e in chosen]
    info += [{"name": k, "family": "model", "source": "model attacks", "unavailable": ""}
             for k in models]
    return BenchmarkResult(rows=[{c: r[c] for c in COLUMNS} for r in rows], settings=settings,
                           photos=list(photos.names), entrants=info)
