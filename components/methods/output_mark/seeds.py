"""The surrogate matrix over several seeds: mean ± interval per cell, never one lucky run.

One tiny derain run gave a matrix mean of 0.88 with stage 2, another (same command,
other code revision and thread count) 0.62 (issue #19): a single seed says little.
:func:`seed_matrix_rows` retrains the whole sequence for one seed (M, stage 1,
stage 2, every matrix cell) and scores it; :func:`seed_spread_rows` does that for
each seed; :func:`spread_summary` reduces the rows to mean, standard deviation,
a Student-t 95% interval, min and max over the seeds per (stage, cell, metric) (the
shared :mod:`neuralmark.components.seed_spread`, rates clipped to [0, 1]).

What a seed changes: ``config.seed`` (M, H, R, D, the split, the stage loops) and
the stage-2 surrogate's seed; the attacker's surrogates get their own seed
(:func:`attacker_settings`), never the stage-2 surrogate's, so no matrix cell is the
surrogate R was fine-tuned on. The data (pairs and their rain) stay fixed.

Shapes: images are ``N×3×H×W`` float32 in [0, 1]; rows are the tidy rows of
:mod:`.matrix` plus ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from neuralmark.components import seed_spread
from neuralmark.components.attacks.surrogate import (
    SurrogateSettings,
    attack_cell,
    attack_cell_ladder,
)
from neuralmark.components.environment import environment
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks, WatermarkKey
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.matrix import (
    attack_pairs,
    attacker_quality_rows,
    clean_attack_pairs,
    evaluation_rows,
    theft_bar_rows,
)
from neuralmark.components.methods.output_mark.method import OutputMark
from neuralmark.components.methods.output_mark.training import (
    clean_variety_images,
    stage1_method,
    stage2_method,
)
from neuralmark.components.reproducibility import pinned
from neuralmark.components.seed_spread import CONFIDENCE

#: added to the stage-2 surrogate's seed for the attacker's cells: an attacker does not
#: share the owner's random draws, and a cell equal to the stage-2 surrogate (same arch,
#: loss, data and seed) would not be held out
ATTACKER_SEED_OFFSET = 101
#: label of the rows holding the mean success rate over the matrix's cells
MATRIX_MEAN = "matrix_mean"
#: label of the rows holding a stage's training metrics (:data:`TRAINING_METRICS`)
TRAINING = "training"
#: what a seed's rows carry from each stage's training (stage 2's keys are ``stage2_``-
#: prefixed in its metrics): the stopping rule's checkpoint (its step, −1 when none
#: qualified and the last step ships; 1 when the ``fewest_clean`` fallback was kept;
#: checkpoints scored and qualified) and stage 1's last logged high-band share of H's
#: residual. Only keys every seed of one config has (a spread needs each on two seeds);
#: B′ dB is Table 1's ``psnr_marked`` row of each stage.
TRAINING_METRICS: tuple[str, ...] = ("selected_step", "selected_fallback", "checkpoints_scored",
                                     "checkpoints_qualified", "h_highband")


def attacker_settings(config: OutputMarkConfig,
                      overrides: Mapping[str, Any] | None = None) -> SurrogateSettings:
    """The matrix cells' schedule: ``config.surrogate`` + ``overrides``, with the attacker's seed.

    Unless ``overrides`` sets ``seed``, the seed is the stage-2 surrogate's plus
    :data:`ATTACKER_SEED_OFFSET`.

    Raises:
        InputError: an override that is not a ``SurrogateSettings`` field.
    """
    values = {**config.surrogate.model_dump(), "seed": config.surrogate.seed
              + ATTACKER_SEED_OFFSET, **dict(overrides or {})}
    try:
        return SurrogateSettings.model_validate(values)
    except ValueError as err:
        raise InputError(f"invalid matrix surrogate settings: {err}") from None


def seeded_config(config: OutputMarkConfig | Mapping[str, Any], seed: int) -> OutputMarkConfig:
    """``config`` with ``seed`` for the method and for the stage-2 surrogate."""
    cfg = config if isinstance(config, OutputMarkConfig) else OutputMarkConfig(**dict(config))
    return cfg.model_copy(update={"seed": int(seed), "surrogate": cfg.surrogate.model_copy(
        update={"seed": int(seed)})})


def seed_matrix_rows(seed: int, train_pairs: tuple[torch.Tensor, torch.Tensor],
                     test_pairs: tuple[torch.Tensor, torch.Tensor],
                     config: OutputMarkConfig | Mapping[str, Any],
                     cells: Sequence[tuple[str, str]], key: WatermarkKey,
                     groups: Sequence[str] | None = None,
                     surrogate: Mapping[str, Any] | None = None,
                     callbacks: Callbacks | Sequence[Any] = (),
                     manifest: str | None = None,
                     bundle_dir: str | os.PathLike | None = None, twins: bool = False,
                     attacker_quality: bool = False,
                     theft_bar: bool = False) -> list[dict[str, Any]]:
    """Train the whole sequence with one seed and score the matrix (no baseline, no ablations).

    Args:
        seed: the run's seed (:func:`seeded_config`).
        train_pairs, test_pairs: ``(A, B)`` N×3×H×W in [0, 1].
        config: the output_mark config the seed is put into.
        cells: ``(arch, loss)`` matrix cells.
        key: the owner's key.
        groups: source group of each training pair.
        surrogate: overrides of the cells' schedule (:func:`attacker_settings`).
        callbacks: metrics/progress sinks.
        manifest: the sample dataset's manifest, for ``config.clean_variety``
            (:func:`.training.clean_variety_images`, drawn with this seed).
        bundle_dir: if given, the stage-2 model is saved as the bundle
            ``bundle_dir/seed<seed>`` (for ``scripts/output_mark_surrogate_diagnosis.py``).
        twins: also train each cell's clean twin (the same attacker: arch, loss, seed and
            budget, on the unmarked M's outputs, :func:`.matrix.clean_attack_pairs`) after
            every marked cell, and report its flag rate as the cell's false-positive rows
            (``clean_twin_<cell>``; outside the success mean).
        attacker_quality: add :func:`.matrix.attacker_quality_rows` (stage ``attacker``:
            each cell's fidelity to B′ and task PSNR, the service's task PSNR).
        theft_bar: train each cell's attacker on to twice its budget in the same run
            (``attack_cell_ladder``: the cell's outputs are the budget's, to the bit) and
            judge the cell against the om10 theft bar (:func:`.matrix.theft_bar_rows`:
            stage ``attacker``, ``met_theft_bar`` per cell); doubles the attacker's time.

    Returns:
        :func:`.matrix.evaluation_rows` (Table 1 for stage 1 and 2, each cell with the
        stage-1 and the stage-2 R), per stage the mean success rate over the cells
        (label :data:`MATRIX_MEAN`) and the stage's training metrics present in its
        metrics (label :data:`TRAINING`, :data:`TRAINING_METRICS`), each with ``seed``.
    """
    cfg = seeded_config(config, seed)
    schedule = attacker_settings(cfg, surrogate)
    budgets = {arch: _budgets(schedule, arch) for arch, _ in cells} if theft_bar else {}
    with pinned(cfg.seed, cfg.cpu_threads):
        clean = clean_variety_images(cfg, manifest)
        s1, m1 = stage1_method(train_pairs, cfg, key, callbacks, groups, clean=clean)
        s2, m2 = stage2_method(s1, train_pairs, callbacks, clean=clean)
        stage1, stage2 = cast(OutputMark, s1), cast(OutputMark, s2)
        if bundle_dir is not None:
            stage2.to_bundle(Path(bundle_dir) / f"seed{seed}")
        a, marked = attack_pairs(stage1, train_pairs)
        query, _ = stage1.working_pairs(test_pairs, "test pairs")
        doubled = []
        if theft_bar:  # one run to 2k per cell: its k-step outputs are attack_cell's
            ladders = [attack_cell_ladder(marked, a, query, arch, loss, schedule,
                                          budgets[arch], callbacks)
                       for arch, loss in cells]
            outputs = [ladder[min(ladder)] for ladder in ladders]
            doubled = [ladder[max(ladder)] for ladder in ladders]
        else:
            outputs = [attack_cell(marked, a, query, arch, loss, schedule, callbacks)
                       for arch, loss in cells]
        twin_outputs = []
        if twins:  # after every marked cell: each surrogate seeds itself, so the marked
            # cells are the same with or without twins
            a_clean, clean_targets = clean_attack_pairs(stage1, train_pairs)
            twin_outputs = [attack_cell(clean_targets, a_clean, query, arch, loss, schedule,
                                        callbacks) for arch, loss in cells]
    rows = evaluation_rows(stage1, stage2, None, key, test_pairs, cells, outputs, [], None,
                           twin_outputs=twin_outputs)
    for stage in ("stage1", "stage2"):
        rates = [r["value"] for r in rows
                 if r["stage"] == stage and r["metric"] == "success_rate"]
        rows.append({**rows[-1], "attack": MATRIX_MEAN, "label": MATRIX_MEAN, "stage": stage,
                     "metric": "success_rate", "value": sum(rates) / len(rates)})
    template = rows[-1]
    for stage, metrics, prefix in (("stage1", m1, ""), ("stage2", m2, "stage2_")):
        rows += [{**template, "attack": TRAINING, "label": TRAINING, "stage": stage,
                  "metric": name, "value": float(metrics[prefix + name]), "n": 1}
                 for name in TRAINING_METRICS if prefix + name in metrics]
    if attacker_quality or theft_bar:
        with torch.no_grad():
            service = stage1.marked_outputs(query)
        _, targets = stage2.working_pairs(test_pairs, "test pairs")
        if attacker_quality:
            rows += attacker_quality_rows(cells, outputs, service, targets)
        if theft_bar:
            rows += theft_bar_rows(cells, outputs, doubled, service, targets)
    return [{**r, "seed": int(seed)} for r in rows]


def seed_matrix_record(rows: Sequence[Mapping[str, Any]], config: OutputMarkConfig,
                       key: WatermarkKey, argv: Sequence[str], seconds: float,
                       summary: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The seed-matrix JSON record: how it ran (the command, the float path) and its rows.

    ``environment`` is :func:`neuralmark.components.environment.environment` of this process
    (torch version, CPU kernel path and model, threads), as the MLflow runs carry it: the
    stage-1 game magnifies a one-ulp difference, so two machines' matrices differ
    (MODEL_CARD.md, om14), and a record without the machine cannot be compared.

    Args:
        rows: :func:`seed_matrix_rows` of every seed run so far.
        config: the profile's output_mark config (before the seed is put in).
        key: the owner's key.
        argv: the command line.
        seconds: wall time so far.
        summary: :func:`spread_summary` of the rows (two seeds or more), or ``None``.

    Returns:
        ``{"argv", "seconds", "key", "environment", "config", "rows"[, "summary"]}``,
        JSON-ready.
    """
    record: dict[str, Any] = {"argv": list(argv), "seconds": float(seconds),
                              "key": key.secret, "environment": environment(),
                              "config": config.model_dump(mode="json"),
                              "rows": [dict(r) for r in rows]}
    if summary is not None:
        record["summary"] = [dict(s) for s in summary]
    return record


def _budgets(schedule: SurrogateSettings, arch: str) -> tuple[int, int]:
    """The cell's budget k and 2k (the theft bar's doubling).

    Raises:
        InputError: a budget of 0 steps (an untrained attacker has no bar to meet).
    """
    k = schedule.budget(arch)
    if k < 1:
        raise InputError(f"theft_bar needs a budget of at least 1 step; {arch} has {k}")
    return k, 2 * k


def seed_spread_rows(seeds: Sequence[int], train_pairs: tuple[torch.Tensor, torch.Tensor],
                     test_pairs: tuple[torch.Tensor, torch.Tensor],
                     config: OutputMarkConfig | Mapping[str, Any],
                     cells: Sequence[tuple[str, str]], key: WatermarkKey,
                     groups: Sequence[str] | None = None,
                     surrogate: Mapping[str, Any] | None = None,
                     callbacks: Callbacks | Sequence[Any] = (),
                     manifest: str | None = None, twins: bool = False
                     ) -> list[dict[str, Any]]:
    """:func:`seed_matrix_rows` for every seed, concatenated (``manifest``: for
    ``config.clean_variety``; ``twins``: each cell's clean twin too).

    Raises:
        InputError: fewer than two seeds, or a repeated seed (no spread to measure).
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise InputError(f"a seed spread needs at least two distinct seeds, got {seeds}")
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        rows += seed_matrix_rows(seed, train_pairs, test_pairs, config, cells, key, groups,
                                 surrogate, callbacks, manifest, twins=twins)
    return rows


def unit_metric(metric: str) -> bool:
    """True for the matrix's metrics that live in [0, 1] (rates, NC, SSIM): their spread's
    interval is clipped to [0, 1]; dB and step counts are not."""
    return metric in ("success_rate", "sr_marked", "nc_mean") or metric.startswith(
        ("fpr_", "nc_", "ssim_", "sr_"))


def spread_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± Student-t interval over seeds, per (stage, label, metric): the shared
    :func:`neuralmark.components.seed_spread.spread_summary` with the matrix's [0, 1]
    metrics clipped (:func:`unit_metric`).

    Args:
        rows: tidy rows with ``seed`` (:func:`seed_spread_rows`).

    Returns:
        One dict per (stage, label, metric): ``stage``, ``label``, ``metric``,
        ``n_seeds``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``min``, ``max``,
        ``values`` (per seed, in seed order).

    Raises:
        InputError: a row without ``seed``, or fewer than two seeds.
    """
    return seed_spread.spread_summary(rows, bounded=unit_metric)


def spread_metrics(summary: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat MLflow metrics: ``spread/<stage>/<label>/<metric>/{mean,std,ci_low,ci_high}``."""
    out: dict[str, float] = {}
    for s in summary:
        base = f"spread/{s['stage']}/{s['label']}/{s['metric']}"
        for k in ("mean", "std", "ci_low", "ci_high"):
            out[f"{base}/{k}"] = float(s[k])
    return out


def spread_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The success-rate matrix over seeds as Markdown: one row per cell, stage 1 and stage 2
    as ``mean [ci_low, ci_high]`` (percent), then the per-seed values."""
    cells: dict[str, dict[str, Mapping[str, Any]]] = {}
    for s in summary:
        if s["metric"] == "success_rate":
            cells.setdefault(str(s["label"]), {})[str(s["stage"])] = s
    if not cells:
        return ""

    def fmt(s: Mapping[str, Any] | None) -> str:
        if s is None:
            return "–"
        per_seed = ", ".join(f"{100 * v:.0f}" for v in s["values"])
        return (f"{100 * s['mean']:.0f}% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}]"
                f" ({per_seed})")

    n = max(int(s["n_seeds"]) for by in cells.values() for s in by.values())
    lines = [f"Success rate over {n} seeds: mean [{100 * CONFIDENCE:.0f}% t-interval] "
             "(per seed)", "", "| cell | stage 1 (†) | stage 2 |", "|---|---|---|"]
    for label, by in cells.items():
        lines.append(f"| {label} | {fmt(by.get('stage1'))} | {fmt(by.get('stage2'))} |")
    return "\n".join(lines) + "\n"


__all__ = ["ATTACKER_SEED_OFFSET", "CONFIDENCE", "MATRIX_MEAN", "TRAINING", "TRAINING_METRICS",
           "attacker_settings", "seed_matrix_record", "seed_matrix_rows", "seed_spread_rows",
           "seeded_config", "spread_markdown", "spread_metrics", "spread_summary", "unit_metric"]
