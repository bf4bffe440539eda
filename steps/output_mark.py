"""Steps of the output_mark pipeline (seed 001, issue #6): pairs → stage 1 → stage 2 → matrix.

Each step calls one library function (``neuralmark.components.methods.output_mark``'s
``training`` and ``matrix``, ``neuralmark.components.attacks.surrogate``,
``neuralmark.components.data.pairs``; no training loop, loss or metric here) and logs
to MLflow. ``train_marking`` and ``finetune_stage2`` run the stages of the same
training sequence as ``OutputMark.fit`` (``training.stage1_method`` /
``stage2_method``), so a pipeline-trained model is calibrated like a fitted one. Both
train data-parallel when their pod has several GPUs (``neuralmark.runtime.ddp``:
``train_in_processes``, one process per GPU, as ``train_model`` does); with one GPU or
none, in the step's process.

Caching: the pipeline runs with caching off, but the expensive, deterministic
steps — ``train_surrogate_cell`` (one invocation per matrix cell),
``train_ablation`` and ``train_independent_model`` — are decorated with
``enable_cache=True``. In ZenML 0.98 a step's own ``enable_cache`` wins over the
pipeline's (``orchestrators.utils.is_setting_enabled``), but a run config's
top-level ``enable_cache:`` overrides every step, so the pipeline's YAML must
not set it. A cell's cache key covers its parameters (arch, loss, schedule) and
the *content hash* of its input tensors (``TensorMaterializer``), so a rerun
whose stage 1 reproduces the same B′ (same seed, CPU) reuses every cell.
"""

from __future__ import annotations

from typing import Annotated, Any

import mlflow
import torch
from zenml import log_metadata, step

import neuralmark.integrations.materializers  # noqa: F401  (tensor, method and report materializers)
from neuralmark.components import plots
from neuralmark.components.attacks.surrogate import SurrogateSettings, cell_name
from neuralmark.components.data import pairs
from neuralmark.components.errors import InputError
from neuralmark.components.files import atomic_write_text
from neuralmark.components.methods.base import WatermarkKey, WatermarkMethod
from neuralmark.components.methods.output_mark import (
    OutputMark,
    matrix,
    seeds,
    tables,
    training,
)
from neuralmark.components.methods.registry import build
from neuralmark.components.report import Report
from neuralmark.integrations.run_context import run_reports_dir
from neuralmark.integrations.tracking import log_config, log_report, step_callbacks
from neuralmark.runtime.ddp import train_in_processes, train_processes
from neuralmark.runtime.stack import TRACKER_NAME


@step(experiment_tracker=TRACKER_NAME)
def make_pairs(manifest: str, task: str, size: int, seed: int = 0,
               prepared: str | None = None, test_splits: list[str] | None = None) -> tuple[
        Annotated[torch.Tensor, "train_inputs"], Annotated[torch.Tensor, "train_targets"],
        Annotated[torch.Tensor, "test_inputs"], Annotated[torch.Tensor, "test_targets"],
        Annotated[list[str], "train_groups"]]:
    """(A, B) pairs for training and test: synthesised from the dataset, or prepared ones.

    Args:
        manifest: validated ``manifest.csv`` of clean images (when ``prepared`` is unset).
        task: ``derain`` or ``debone`` (``neuralmark.components.data.pairs.build_pairs``).
        size: side the images are loaded at.
        seed: salt of the per-item rain seeds.
        prepared: a prepared paired dataset's ``manifest.csv`` (``voc_derain``,
            ``chestxray8``) to read instead.
        test_splits: splits pooled into the test set (default ``["val", "test"]``).

    Returns:
        ``train_inputs``, ``train_targets``, ``test_inputs``, ``test_targets``
        (N×3×size×size) and ``train_groups`` (the source photo of each training
        pair: the H/R vs surrogate split keeps a photo's crops together).
    """
    splits = test_splits or ["val", "test"]
    if prepared:
        train = pairs.load_prepared_pairs(prepared, "train", size)
        groups = pairs.split_groups(prepared, "train")
        tests = [pairs.load_prepared_pairs(prepared, s, size) for s in splits]
        test = (torch.cat([t[0] for t in tests]), torch.cat([t[1] for t in tests]))
    else:
        train, groups, test = pairs.synthesised_pairs(manifest, task, size, seed, splits)
    mlflow.set_tags({"output_mark.task": task, "output_mark.target_kind": pairs.target_kind(task),
                     "output_mark.pairs": prepared or "synthesised from " + manifest})
    log_metadata({"train_pairs": int(train[0].shape[0]), "test_pairs": int(test[0].shape[0]),
                  "train_groups": len(set(groups)), "target_kind": pairs.target_kind(task)})
    return train[0], train[1], test[0], test[1], groups


@step(experiment_tracker=TRACKER_NAME)
def clean_variety(manifest: str, config: dict[str, Any]) -> tuple[
        Annotated[torch.Tensor, "clean_images"], Annotated[list[str], "clean_groups"]]:
    """Varied clean images for R's clean term (``config.clean_variety``;
    ``training.clean_variety_images``, the recipe's own call).

    Args:
        manifest: the sample dataset's manifest the pairs were made from.
        config: ``output_mark`` config fields (``clean_variety`` on).

    Returns:
        ``clean_images`` (K×3×S×S) and ``clean_groups`` (the photo of each; the training
        steps drop those of held-out photos).
    """
    clean = training.clean_variety_images(build("output_mark", config).config, manifest)
    if clean is None:
        raise InputError("clean_variety step run with config.clean_variety off")
    images, groups = clean
    log_metadata({"clean_variety_images": int(images.shape[0])})
    return images, list(groups)


@step(experiment_tracker=TRACKER_NAME)
def train_marking(train_inputs: torch.Tensor, train_targets: torch.Tensor,
                  train_groups: list[str], config: dict[str, Any], key_secret: str,
                  clean_images: torch.Tensor | None = None,
                  clean_groups: list[str] | None = None
                  ) -> Annotated[WatermarkMethod, "stage1_method"]:
    """M, stage 1 (H, R, D) and calibration on the held-out pairs (``training.stage1_method``).

    Args:
        train_inputs, train_targets: N×3×H×W training pairs.
        train_groups: N source groups (whole groups go to one part of the split).
        config: ``output_mark`` config fields.
        key_secret: the owner's key, whose logo is hidden.
        clean_images, clean_groups: the ``clean_variety`` step's images for R's clean term
            (``None``: the option is off).

    Returns:
        The stage-1 method (R not fine-tuned on surrogate outputs); metric
        ``stage1/clean_bank_images`` counts the extra clean images R saw.
    """
    log_config(config, prefix="method.")
    processes = train_processes()
    method, metrics = train_in_processes(
        training.stage1_method, ((train_inputs, train_targets), config, WatermarkKey(key_secret)),
        {"groups": train_groups,
         "clean": None if clean_images is None else (clean_images, clean_groups or [])},
        method="output_mark", callbacks=step_callbacks("stage1/"),
        processes=processes)
    mlflow.log_metrics({f"stage1/{k}": float(v) for k, v in metrics.items()})
    log_metadata({"stage1": {k: float(v) for k, v in metrics.items()},
                  "train_processes": processes})
    return method


@step(experiment_tracker=TRACKER_NAME)
def finetune_stage2(stage1: WatermarkMethod, train_inputs: torch.Tensor,
                    train_targets: torch.Tensor, clean_images: torch.Tensor | None = None,
                    clean_groups: list[str] | None = None
                    ) -> Annotated[WatermarkMethod, "trained_method"]:
    """Stage 2 and calibration on a copy (``training.stage2_method``): surrogate SM on
    (A, B′), fine-tune R on A, B, B′, B″ (and the ``clean_variety`` images, if given).

    Returns:
        The new method (the one registered); ``stage1`` is left as it was.
    """
    assert isinstance(stage1, OutputMark)
    processes = train_processes()
    method, metrics = train_in_processes(
        training.stage2_method, (stage1, (train_inputs, train_targets)),
        {"clean": None if clean_images is None else (clean_images, clean_groups or [])},
        method="output_mark",
        callbacks=step_callbacks("stage2/"), processes=processes)
    mlflow.log_metrics({f"stage2/{k}": float(v) for k, v in metrics.items()})
    log_metadata({"stage2": {k: float(v) for k, v in metrics.items()},
                  "train_processes": processes})
    return method


@step
def attacker_data(stage1: WatermarkMethod, train_inputs: torch.Tensor,
                  train_targets: torch.Tensor, test_inputs: torch.Tensor) -> tuple[
        Annotated[torch.Tensor, "attack_inputs"], Annotated[torch.Tensor, "attack_targets"],
        Annotated[torch.Tensor, "query_inputs"]]:
    """What an attacker of the deep mark trains on: surrogate-part A and the service's B′.

    Returns:
        ``attack_inputs`` (K×3×S×S), ``attack_targets`` (B′), ``query_inputs``
        (test inputs at the working size S, what the surrogates are run on).
    """
    assert isinstance(stage1, OutputMark)
    a, marked = matrix.attack_pairs(stage1, (train_inputs, train_targets))
    query, _ = stage1.working_pairs((test_inputs, test_inputs), "test inputs")
    return a, marked, query


@step
def twin_data(stage1: WatermarkMethod, train_inputs: torch.Tensor,
              train_targets: torch.Tensor) -> Annotated[torch.Tensor, "twin_targets"]:
    """What each cell's clean twin trains on: M's unmarked outputs B for the attacker's
    inputs (``matrix.clean_attack_pairs``; the inputs are ``attacker_data``'s).

    Returns:
        K×3×S×S clean targets.
    """
    assert isinstance(stage1, OutputMark)
    return matrix.clean_attack_pairs(stage1, (train_inputs, train_targets))[1]


@step
def baseline_data(stage1: WatermarkMethod, train_inputs: torch.Tensor,
                  train_targets: torch.Tensor, baseline: dict[str, Any],
                  key_secret: str) -> tuple[
        Annotated[WatermarkMethod, "baseline_method"],
        Annotated[torch.Tensor, "baseline_targets"]]:
    """The spread-spectrum baseline and what an attacker of it trains on (SS-marked M(A)).

    Args:
        stage1: gives M (the same protected model) and the data split.
        baseline: ``spread_spectrum`` config overrides.
        key_secret: the owner's key (the baseline marks with it).

    Returns:
        The baseline method and the K×3×S×S marked outputs of the surrogate part.
    """
    assert isinstance(stage1, OutputMark)
    ss = build("spread_spectrum", matrix.baseline_config(stage1, baseline))
    _, targets = matrix.baseline_attack_pairs(stage1, (train_inputs, train_targets), ss,
                                              WatermarkKey(key_secret))
    return ss, targets


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def train_surrogate_cell(attack_inputs: torch.Tensor, attack_targets: torch.Tensor,
                         query_inputs: torch.Tensor, arch: str, loss: str,
                         settings: dict[str, Any], code_digest: str = "", cpu_threads: int = 1
                         ) -> Annotated[torch.Tensor, "surrogate_outputs"]:
    """One matrix cell: train SM(arch, loss) on the attacker's pairs; its outputs on test.

    Cached: a rerun with the same pairs, settings and ``code_digest`` (the
    pipeline's ``components_digest()``: only part of the cache key) never
    retrains the cell. Trained with ``cpu_threads`` torch threads (the config's).

    Returns:
        T×3×S×S surrogate outputs on ``query_inputs``.
    """
    out = matrix.cell_outputs(attack_targets, attack_inputs, query_inputs, arch, loss,
                              SurrogateSettings.model_validate(settings), cpu_threads,
                              step_callbacks("attack/"))
    log_metadata({"cell": cell_name(arch, loss), "train_pairs": int(attack_inputs.shape[0])})
    return out


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def train_ablation(train_inputs: torch.Tensor, train_targets: torch.Tensor,
                   test_inputs: torch.Tensor, test_targets: torch.Tensor,
                   train_groups: list[str], name: str,
                   config: dict[str, Any], key_secret: str, code_digest: str = "",
                   clean_images: torch.Tensor | None = None,
                   clean_groups: list[str] | None = None
                   ) -> Annotated[list[dict[str, Any]], "ablation_rows"]:
    """Stage 1 without the clean or the consistency loss, measured (cached; ``code_digest``
    is only part of the cache key; ``clean_*``: the ``clean_variety`` step's images).

    Returns:
        ``matrix.ablation_rows``.
    """
    return matrix.ablation_rows(name, (train_inputs, train_targets),
                                (test_inputs, test_targets), config, WatermarkKey(key_secret),
                                step_callbacks(f"ablation_{name}/"), groups=train_groups,
                                clean=None if clean_images is None
                                else (clean_images, clean_groups or []))


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def train_independent_model(train_inputs: torch.Tensor, train_targets: torch.Tensor,
                            query_inputs: torch.Tensor, config: dict[str, Any],
                            code_digest: str = ""
                            ) -> Annotated[torch.Tensor, "independent_outputs"]:
    """A plain model of the task, another seed, never saw B′: its test outputs (cached;
    ``code_digest`` is only part of the cache key)."""
    cfg = build("output_mark", config).config
    return matrix.independent_model_outputs((train_inputs, train_targets), query_inputs, cfg,
                                            callbacks=step_callbacks("independent/"))


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def seed_spread(train_inputs: torch.Tensor, train_targets: torch.Tensor,
                test_inputs: torch.Tensor, test_targets: torch.Tensor,
                train_groups: list[str], config: dict[str, Any], cells: list[list[str]],
                seed_list: list[int], surrogate: dict[str, Any], key_secret: str,
                code_digest: str = "", manifest: str = "", twins: bool = False
                ) -> Annotated[list[dict[str, Any]], "seed_spread_rows"]:
    """The whole sequence and the matrix once per seed (``output_mark.seeds``); cached.
    ``twins``: each cell's clean twin too (``matrix.clean_twins``).

    Returns:
        The tidy rows with ``seed`` (``seeds.seed_spread_rows``); the evaluation step
        reduces them to mean ± interval.
    """
    rows = seeds.seed_spread_rows(seed_list, (train_inputs, train_targets),
                                  (test_inputs, test_targets), build("output_mark", config)
                                  .config, [(str(a), str(b)) for a, b in cells],
                                  WatermarkKey(key_secret), train_groups, surrogate,
                                  step_callbacks("seed_spread/"), manifest or None,
                                  twins=twins)
    log_metadata({"seeds": [int(s) for s in seed_list], "rows": len(rows)})
    return rows


@step(experiment_tracker=TRACKER_NAME)
def evaluate_output_mark(stage1: WatermarkMethod, stage2: WatermarkMethod,
                         baseline: WatermarkMethod, test_inputs: torch.Tensor,
                         test_targets: torch.Tensor, cells: list[list[str]],
                         deep_outputs: list[torch.Tensor], baseline_outputs: list[torch.Tensor],
                         independent_outputs: torch.Tensor | None,
                         ablations: list[list[dict[str, Any]]],
                         twin_outputs: list[torch.Tensor], task: str,
                         key_secret: str, spread_rows: list[dict[str, Any]] | None = None,
                         twins_in_fpr: bool = False
                         ) -> Annotated[Report, "report"]:
    """Tables 1–3, false positives and ablations; log tables and the heatmap to MLflow.

    ``twin_outputs`` (per cell, its clean twin's outputs; empty: no twins) add the rows
    ``clean_twin_<cell>`` and the metrics ``clean_twin_<cell>/false_positive_rate`` and
    ``fpr_clean_twins``; ``twins_in_fpr`` also counts them in the gate's ``fpr``.

    ``spread_rows`` (from ``seed_spread``) add the matrix over seeds: metrics
    ``spread/<stage>/<cell>/<metric>/{mean,std,ci_low,ci_high}`` and a Markdown table.

    Returns:
        ``Report(rows, summary)``: the summary has the gate's keys (``psnr``,
        ``detection_rate_mean_attacked``, ``fpr``, …, see
        ``matrix.gate_summary``); Markdown tables and the heatmap go under
        ``report/`` in MLflow and ``<project>/reports/<run>/``.
    """
    assert isinstance(stage1, OutputMark) and isinstance(stage2, OutputMark)
    cell_list = [(str(a), str(b)) for a, b in cells]
    rows = matrix.evaluation_rows(stage1, stage2, baseline, WatermarkKey(key_secret),
                                  (test_inputs, test_targets), cell_list, deep_outputs,
                                  baseline_outputs, independent_outputs, ablations,
                                  twin_outputs)
    markdown = tables.report_markdown(rows, task)
    summary = matrix.gate_summary(rows, twins_in_fpr=twins_in_fpr)
    spread: list[dict[str, Any]] = []
    if spread_rows:
        spread = seeds.spread_summary(spread_rows)
        summary.update(seeds.spread_metrics(spread))
        markdown += "\n## Seed spread\n\n" + seeds.spread_markdown(spread)
    report = Report(rows=rows, summary=summary,
                    extra={"task": task, "target_kind": pairs.target_kind(task),
                           "cells": [list(c) for c in cell_list], "tables": markdown,
                           "seed_spread": spread})
    out = run_reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "output_mark_tables.md", markdown)
    atomic_write_text(out / "output_mark_rows.csv", report.rows_to_csv())
    mlflow.log_text(markdown, "report/tables.md")
    log_report(report, figures={"surrogate_matrix": plots.matrix_heatmap(rows, matrix.STAGES)})
    return report
