"""Steps of the trigger_key pipeline (seed 002, issue #13): host → mark → attacks → report.

Each step calls one function of ``neuralmark.components.methods.trigger_key.study`` (no
training loop, loss or metric here) and logs to MLflow. The training steps (``train_host``,
``train_independent_host``, ``embed_owner_mark``, ``embed_baseline``) run theirs
data-parallel when the pod has several GPUs (``neuralmark.runtime.ddp.train_in_processes``,
one process per GPU, as ``train_model`` does); with one GPU or none, in the step's process.
Methods travel between steps as bundles (``WatermarkMethodMaterializer``); the task pairs
do not, so every step gets the dataset's ``manifest`` and ``test_splits`` and the study
re-derives the same pairs.

Caching: the pipeline runs with caching off; the expensive, independent pieces —
``train_independent_host``, ``embed_baseline`` (Base-1, Base-2), every
``attack_host`` invocation (one per method × attack), ``uniqueness`` and ``capacity`` —
are ``enable_cache=True``, with ``code_digest`` (the components' source hash) in their
parameters so a library change retrains them (see ``pipelines/output_mark.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

import mlflow
import torch
from zenml import log_metadata, step

import neuralmark.integrations.materializers  # noqa: F401  (method and report materializers)
from neuralmark.components.attacks.model_registry import ModelAttackSettings
from neuralmark.components.files import atomic_write_text
from neuralmark.components.methods.base import WatermarkKey, WatermarkMethod
from neuralmark.components.methods.trigger_key import study, tables
from neuralmark.components.report import Report
from neuralmark.integrations.run_context import run_reports_dir
from neuralmark.integrations.tracking import log_config, log_report, step_callbacks
from neuralmark.runtime.ddp import train_in_processes, train_processes
from neuralmark.runtime.stack import TRACKER_NAME


@step(experiment_tracker=TRACKER_NAME)
def train_host(manifest: str, config: dict[str, Any], test_splits: list[str]
               ) -> Annotated[WatermarkMethod, "unmarked_method"]:
    """Train the unmarked host of the task on the manifest's train split."""
    log_config(config, prefix="method.")
    method, metrics = train_in_processes(study.train_unmarked, (config, manifest, test_splits),
                                         method="trigger_key", callbacks=step_callbacks("host/"),
                                         processes=train_processes())
    mlflow.log_metrics({f"host/{k}": float(v) for k, v in metrics.items()})
    mlflow.set_tags({"trigger_key.task": method.config.task,
                     "trigger_key.arch": method.config.arch, "trigger_key.data": manifest})
    log_metadata({"host": {k: float(v) for k, v in metrics.items()}})
    return method


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def train_independent_host(unmarked: WatermarkMethod, manifest: str, test_splits: list[str],
                           seed: int = 1000, code_digest: str = ""
                           ) -> Annotated[WatermarkMethod, "independent_method"]:
    """Another host of the task from another init and batch order (the null; cached)."""
    out, _ = train_in_processes(study.train_independent,
                                (study.as_trigger_key(unmarked), manifest, test_splits, seed),
                                method="trigger_key", callbacks=step_callbacks("independent/"),
                                processes=train_processes())
    mlflow.log_metric("independent/host_psnr", out.metrics["host_psnr"])
    return out


@step(experiment_tracker=TRACKER_NAME)
def embed_owner_mark(unmarked: WatermarkMethod, independent: WatermarkMethod, manifest: str,
                     test_splits: list[str], key_secret: str
                     ) -> tuple[Annotated[WatermarkMethod, "trained_method"],
                                Annotated[torch.Tensor, "marked_pool"]]:
    """Embed the owner's key, calibrate η (with the independent host), train R; also return
    the calibration's other-key marked hosts packed (``uniqueness`` reuses them; empty when
    the embedding ran data-parallel, whose method comes back as a bundle without them)."""
    marked, _ = train_in_processes(study.mark_owner,
                                   (study.as_trigger_key(unmarked), WatermarkKey(key_secret),
                                    [independent.host], manifest, test_splits),
                                   method="trigger_key", callbacks=step_callbacks("embed/"),
                                   processes=train_processes())
    mlflow.log_metrics({f"embed/{k}": float(v) for k, v in marked.metrics.items()})
    log_metadata({"calibration": dict(marked.calibration)})
    return marked, study.as_trigger_key(marked).pool_tensor()


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def embed_baseline(unmarked: WatermarkMethod, manifest: str, test_splits: list[str],
                   name: str, key_secret: str, code_digest: str = ""
                   ) -> Annotated[WatermarkMethod, "baseline_method"]:
    """Base-1 or Base-2 embedded in the same unmarked host (cached)."""
    out, _ = train_in_processes(study.mark_baseline,
                                (study.as_trigger_key(unmarked), name, WatermarkKey(key_secret),
                                 manifest, test_splits), method=name,
                                callbacks=step_callbacks(f"{name}/"),
                                processes=train_processes())
    return out


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def attack_host(method: WatermarkMethod, manifest: str, test_splits: list[str], name: str,
                attack: str, strengths: list[float | None], key_secret: str,
                settings: dict[str, Any], new_manifest: str | None = None,
                code_digest: str = "") -> Annotated[list[dict[str, Any]], "attack_rows"]:
    """One model attack at every strength on one marked method, verified (cached)."""
    rows = study.attack_rows(name, study.as_host_mark(method), WatermarkKey(key_secret),
                             attack, strengths, manifest, test_splits,
                             ModelAttackSettings(**settings), new_manifest,
                             step_callbacks(f"attack/{name}/"))
    log_metadata({"attack": attack, "method": name, "rows": len(rows)})
    return rows


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def uniqueness(marked: WatermarkMethod, independent: WatermarkMethod, manifest: str,
               test_splits: list[str], key_secret: str, other_secrets: list[str],
               n_keys: int | None = None, marked_pool: torch.Tensor | None = None,
               code_digest: str = "") -> Annotated[list[dict[str, Any]], "uniqueness_rows"]:
    """d for every host × key (hosts marked with other keys, unmarked, independent); the
    other keys are calibrated with the owner's marked pool (``embed_owner_mark``'s)."""
    return study.uniqueness_study(study.as_trigger_key(marked), WatermarkKey(key_secret),
                                  independent.host, other_secrets, manifest, test_splits,
                                  n_keys, marked_pool)


@step(experiment_tracker=TRACKER_NAME, enable_cache=True)
def capacity(marked: WatermarkMethod, manifest: str, test_splits: list[str], key_secret: str,
             sizes: list[int], n_keys: int = 40, code_digest: str = ""
             ) -> Annotated[list[dict[str, Any]], "capacity_rows"]:
    """Fidelity cost and verification per trigger size (cached)."""
    return study.capacity_study(study.as_trigger_key(marked), WatermarkKey(key_secret), sizes,
                                manifest, test_splits, n_keys)


@step(experiment_tracker=TRACKER_NAME)
def evaluate_trigger_key(marked: WatermarkMethod, manifest: str, test_splits: list[str],
                         attack_rows: list[list[dict[str, Any]]],
                         uniqueness_rows: list[dict[str, Any]],
                         capacity_rows: list[dict[str, Any]], title: str
                         ) -> Annotated[Report, "report"]:
    """Fidelity, the attack tables with both baselines, uniqueness, capacity, FPR → report.

    Returns:
        ``Report(rows, summary)``: the summary has the gate's keys
        (``study.gate_summary``); Markdown, CSV and figures go under ``report/`` in MLflow
        and ``<project>/reports/<run>/``.
    """
    method = study.with_data(study.as_trigger_key(marked), manifest, test_splits)
    attacks = study.merge_attack_rows(attack_rows)
    fidelity = study.fidelity_rows(method)
    summary = study.gate_summary(attacks, fidelity, uniqueness_rows, method)
    markdown = study.report_markdown(title, summary, fidelity, attacks, uniqueness_rows,
                                     capacity_rows)
    report = Report(rows=attacks, summary=summary,
                    extra={"tables": markdown, "fidelity": study.jsonable_rows(fidelity),
                           "uniqueness": study.jsonable_rows(uniqueness_rows),
                           "capacity": study.jsonable_rows(capacity_rows)})
    out = run_reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "trigger_key_report.md", markdown)
    atomic_write_text(out / "trigger_key_attacks.csv", report.rows_to_csv())
    mlflow.log_text(markdown, "report/tables.md")
    figures = {"pruning_curve": tables.pruning_curve(attacks),
               "uniqueness_heatmap": tables.uniqueness_heatmap(uniqueness_rows)}
    if capacity_rows:
        figures["capacity_curve"] = tables.capacity_curve(capacity_rows)
    log_report(report, figures=figures)
    return report
