"""The training pipeline: data → validation → training → evaluation → gate → registry.

Run it with the CLI (``neuralmark train pgd_signer --profile tiny``), from Python
(``run_training``), or with ZenML directly once the stack exists
(``python -m neuralmark.runtime.stack``)::

    zenml pipeline run neuralmark.pipelines.training.training_pipeline -c configs/pgd_signer.yaml

Parameters (all JSON, so they can come from the YAML's ``parameters:``):
``method``, ``profile`` and the overrides ``config`` (method config), ``data``,
``evaluation``, ``policy``; ``neuralmark.runtime.settings.resolve`` merges them over the
profile when the pipeline is compiled, so a typo fails before any step runs.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from zenml import pipeline
from zenml.enums import ExecutionMode

from neuralmark.components.files import atomic_write_text
from neuralmark.components.methods.base import InputError
from neuralmark.components.methods.registry import method_class
from neuralmark.integrations.tracking import record_environment
from neuralmark.pipelines.evaluation import headline
from neuralmark.pipelines.harness import (
    build_run_config,
    executed,
    name_model,
    registration_outcome,
)
from neuralmark.runtime.settings import CODE_ROOT, CONFIGS_DIR, resolve
from neuralmark.steps.data import build_dataset, validate_dataset
from neuralmark.steps.evaluation import evaluate_robustness, sign_heldout
from neuralmark.steps.promotion import gate, register_and_promote
from neuralmark.steps.training import train_model

PIPELINE_NAME = "training_pipeline"


def _check_trainable(method: str) -> None:
    """A method with its own pipeline (``own_pipeline``) is refused here, naming that pipeline."""
    own = method_class(method).own_pipeline
    if own:
        raise InputError(f"{method} is not trained by the image training pipeline (it needs "
                         f"its own data and stages); use {own}")


@pipeline(name=PIPELINE_NAME, enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST,
          on_start=record_environment)
def training_pipeline(method: str = "pgd_signer", profile: str = "tiny",
                      config: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                      evaluation: dict[str, Any] | None = None,
                      policy: dict[str, Any] | None = None) -> None:
    """Train, evaluate, gate and register one candidate of ``method``.

    Args:
        method: registry key of the method.
        profile: ``configs/profiles/<profile>.yaml`` section to start from.
        config: overrides of the method config.
        data: overrides of the data settings (``root``, ``size``, ``version_with_dvc``, …).
        evaluation: overrides of the evaluation settings (``limit``, ``fpr_keys``, …).
        policy: overrides of the gate policy (``min_psnr``, ``min_bit_accuracy``, …).
    """
    _check_trainable(method)
    settings = resolve(method, profile, config=config, data=data, evaluation=evaluation,
                       policy=policy)
    params = settings.step_parameters()
    manifest = build_dataset(params["data"])
    manifest = validate_dataset(manifest, min_size=method_class(method).min_size)
    trained = train_model(manifest, method=method, config=params["config"])
    clean, marked = sign_heldout(trained, manifest, evaluation=params["evaluation"])
    report = evaluate_robustness(trained, clean, marked, evaluation=params["evaluation"])
    decision = gate(report, model_name=settings.model_name, policy=params["policy"])
    register_and_promote(trained, report, decision, model_name=settings.model_name)


# -- running it ---------------------------------------------------------------------------------


def _run_config(method: str, profile: str, config_path: str | os.PathLike | None,
                overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training pipeline's run config: the YAML (default ``configs/<method>.yaml``)
    + overrides, with ``method`` and ``profile`` from the arguments."""
    path = Path(config_path) if config_path else CONFIGS_DIR / f"{method}.yaml"
    return build_run_config(path, config_path is not None,
                            {"method": method, "profile": profile},
                            ("config", "data", "evaluation", "policy"), overrides)


def run_training(method: str, profile: str = "tiny", config_path: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 callbacks: Sequence[Any] | None = None, *,
                 project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``training_pipeline`` for ``method`` on the project's local stack.

    Bootstraps the stack (``ensure_stack``) and the MLflow experiment (so run
    artifacts land in ``<project>/mlruns``), runs the pipeline with the run
    config ``config_path`` (default ``configs/<method>.yaml``) plus
    ``overrides``, and collects what the steps produced.

    Args:
        method: registry key.
        profile: profile name.
        config_path: a ZenML run config YAML (``parameters:``, ``model:``, …).
        overrides: ``{"config"|"data"|"evaluation"|"policy": {...}}`` merged over
            the YAML's parameters.
        callbacks: extra training callbacks (e.g. the CLI's progress bar); only
            seen when steps run in this process (local orchestrator).
        project_root: where ``.zen/``, ``mlflow.db``, ``data/`` and ``reports/``
            live (default: this checkout).

    Returns:
        ``run`` (name), ``status``, ``model_name``, ``summary`` (headline
        metrics), ``metrics`` (every summary metric), ``decision``,
        ``registered_version``, ``champion_version``, ``promoted``,
        ``mlflow_run_id``, ``reports_dir`` and ``mlflow_ui`` (command).

    Raises:
        InputError: a bad config (before anything runs) or data that failed
            validation (the message says where the report is).
        RuntimeError: any other failed run.
    """
    root = Path(project_root or CODE_ROOT).resolve()
    _check_trainable(method)
    run_config = _run_config(method, profile, config_path, overrides)
    params = run_config["parameters"]
    settings = resolve(method, profile, **{k: params.get(k) for k in ("config", "data",
                                                                      "evaluation", "policy")})
    name_model(run_config, settings.model_name,
                str(config_path or CONFIGS_DIR / f"{method}.yaml"))
    with executed(training_pipeline, PIPELINE_NAME, run_config, root, callbacks) as run:
        outcome = registration_outcome(run, "evaluate_robustness", "train_model", root)
    report = outcome.pop("report")
    return {"model_name": settings.model_name, "summary": headline(report.summary), **outcome}


def schedule_training(method: str, profile: str, cron: str,
                      config_path: str | os.PathLike | None = None, *,
                      project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Schedule ``training_pipeline`` for ``method`` on the project's *active* remote stack.

    ``Schedule(cron_expression=cron)`` goes with the run config (default
    ``configs/<method>.yaml``; on a cluster, ``configs/k8s/<method>.yaml``) to the active
    stack's orchestrator, which keeps the schedule (the Kubernetes orchestrator as a CronJob,
    Kubeflow as a recurring run); every scheduled run goes through the gate as any run does.
    Nothing runs here and nothing waits.

    Returns:
        ``stack``, ``orchestrator`` (flavor), ``cron``, ``model_name`` and ``config``.

    Raises:
        InputError: a cron expression Kubernetes would not accept (checked first, with
            ``neuralmark.runtime.k8s_runs.check_cron``), a run config that also has a
            ``schedule``, or an active stack whose orchestrator cannot schedule (the local
            one: register and activate a remote stack first).
    """
    from zenml.client import Client
    from zenml.config.schedule import Schedule

    from neuralmark.pipelines.harness import project_client
    from neuralmark.runtime.k8s_runs import check_cron

    cron = check_cron(cron)
    root = Path(project_root or CODE_ROOT).resolve()
    _check_trainable(method)
    path = str(config_path or CONFIGS_DIR / f"{method}.yaml")
    run_config = _run_config(method, profile, config_path, None)
    if run_config.get("schedule"):
        raise InputError(f"{path} has its own schedule; give the schedule once (drop "
                         "--schedule, or the file's schedule:)")
    params = run_config["parameters"]
    settings = resolve(method, profile, **{k: params.get(k) for k in ("config", "data",
                                                                      "evaluation", "policy")})
    name_model(run_config, settings.model_name, path)
    with tempfile.TemporaryDirectory(prefix="nm-schedule-") as tmp, project_client(root):
        stack = Client().active_stack
        orchestrator = stack.orchestrator
        if orchestrator.config.is_local or not orchestrator.config.is_schedulable:
            raise InputError(
                f"--schedule needs a remote stack whose orchestrator schedules runs; the active "
                f"stack {stack.name!r} has the {orchestrator.flavor!r} orchestrator. Register "
                "and activate one first: python -m neuralmark.runtime.stack --stack "
                "configs/stacks/k8s.yaml --activate (README \"Scale out\")")
        resolved = Path(tmp) / "run.yaml"
        resolved.write_text(yaml.safe_dump(run_config, sort_keys=False))
        training_pipeline.with_options(config_path=str(resolved),
                                       schedule=Schedule(cron_expression=cron))()
        return {"stack": stack.name, "orchestrator": orchestrator.flavor, "cron": cron,
                "model_name": settings.model_name, "config": path}


# -- variants of one method, side by side -------------------------------------------------------


def variant_configs(method: str, configs_dir: Path | None = None) -> dict[str, Path]:
    """``variant -> run config`` from ``configs/<method>.yaml`` and ``configs/<method>_*.yaml``.

    The variant of a file is its ``parameters.config.variant``, else the method
    config's default. Methods without a ``variant`` field have none (``{}``).
    Ordered as the field's ``Literal`` declares them (e.g. baseline, rs, rs_aug).
    """
    cls = method_class(method)
    field = cls.Config.model_fields.get("variant")
    if field is None:
        return {}
    out: dict[str, Path] = {}
    for path in sorted((configs_dir or CONFIGS_DIR).glob(f"{method}*.yaml")):
        if path.stem != method and not path.stem.startswith(f"{method}_"):
            continue
        params = (yaml.safe_load(path.read_text()) or {}).get("parameters") or {}
        variant = (params.get("config") or {}).get("variant", field.default)
        if variant in out:
            raise InputError(f"{path} and {out[variant]} both configure variant {variant!r}")
        out[str(variant)] = path
    declared = [str(v) for v in typing.get_args(field.annotation)]  # Literal order
    return dict(sorted(out.items(), key=lambda kv: (declared.index(kv[0])
                                                    if kv[0] in declared else len(declared),
                                                    kv[0])))


def run_variants(method: str, profile: str = "tiny", variants: Sequence[str] | None = None,
                 callbacks: Sequence[Any] | None = None, *,
                 overrides: Mapping[str, Any] | None = None,
                 project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train, evaluate, gate and register every variant of ``method``, then compare them.

    Each variant is its own ``training_pipeline`` run with its own run config
    (``variant_configs``) and its own registered model
    (``neuralmark-<method>-<variant>``), so one failing gate never blocks or
    promotes another. The comparison tables (``neuralmark.components.comparison``) are
    written to ``<project>/reports/variants-<method>-<time>/tables.md`` and
    logged to MLflow as a run of the training experiment with the tables and
    every variant's metrics (``<variant>/<metric>``).

    ``overrides`` (``{"config"|"data"|"evaluation"|"policy": {...}}``) apply to
    every variant, over its own run config.

    Returns:
        ``variants`` (variant -> ``run_training`` result), ``tables`` (Markdown),
        ``reports_dir``, ``mlflow_run_id`` and ``mlflow_ui``.
    """
    import mlflow

    from neuralmark.components.comparison import tables_markdown, variant_tables
    from neuralmark.runtime.stack import ensure_experiment, mlflow_ui_command, tracking_uri

    configs = variant_configs(method)
    if not configs:
        raise InputError(f"{method} has no variants (its config has no `variant` field)")
    chosen = list(variants or configs)
    unknown = sorted(set(chosen) - set(configs))
    if unknown:
        raise InputError(f"unknown variant(s) {unknown} of {method}; configured: "
                         f"{', '.join(configs)}")
    root = Path(project_root or CODE_ROOT).resolve()
    results = {v: run_training(method, profile, configs[v], overrides, callbacks,
                               project_root=root) for v in chosen}
    markdown = tables_markdown(variant_tables({v: r["metrics"] for v, r in results.items()}))
    reports = root / "reports" / f"variants-{method}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    atomic_write_text(reports / "tables.md", markdown)
    experiment = ensure_experiment(PIPELINE_NAME, root)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(root))
    run = client.create_run(experiment, run_name=f"{method} variants ({profile})",
                            tags={"neuralmark.kind": "variant-comparison",
                                  "neuralmark.method": method,
                                  "mlflow.note.content": markdown})
    for variant, result in results.items():
        client.set_tag(run.info.run_id, f"run.{variant}", result["mlflow_run_id"] or "")
        for key, value in result["metrics"].items():
            if math.isfinite(value):
                client.log_metric(run.info.run_id, f"{variant}/{key}", value)
    client.log_text(run.info.run_id, markdown, "comparison/tables.md")
    client.set_terminated(run.info.run_id)
    return {"variants": results, "tables": markdown, "reports_dir": str(reports),
            "mlflow_run_id": run.info.run_id, "mlflow_ui": mlflow_ui_command(root)}
