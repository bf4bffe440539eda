"""Pipeline commands: ``train`` (one method, or several of its variants) and ``evaluate``.

They hand over to ``neuralmark.pipelines``, imported inside the command (ZenML and
MLflow are loaded only when a pipeline runs), and print a headline of the result
(``neuralmark.cli.headline``): the full report stays on disk and in MLflow.
"""

from __future__ import annotations

from pathlib import Path

import typer

from neuralmark.cli.common import (
    DEFAULT_METHOD,
    Profile,
    domain_errors,
    load_pipeline,
    out,
    run_long,
)
from neuralmark.cli.headline import print_evaluation, print_training, print_variants


def _check_method(method: str) -> None:
    """A registered method, or an ``InputError`` listing them (before any pipeline loads)."""
    from neuralmark.components.methods.registry import method_class

    method_class(method)


@domain_errors
def train(
    method: str = typer.Argument(..., help="Registered method to train."),
    profile: Profile = typer.Option(Profile.tiny, "--profile", help="Size profile."),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False,
        help=("ZenML run config (like configs/<method>.yaml); method overrides go "
              "under parameters: {config: ...}.")
    ),
    variant: list[str] = typer.Option(
        [], "--variant", metavar="NAME",
        help="Train these variants (repeatable; 'all' = every configs/<method>_*.yaml), "
             "each registered as neuralmark-<method>-<variant>, then compare them."),
    schedule: str | None = typer.Option(
        None, "--schedule", metavar="CRON",
        help=("Schedule the training pipeline on the active remote stack with this cron "
              "expression (e.g. '0 3 * * 1') instead of running it here; each scheduled run "
              "goes through the gate.")),
) -> None:
    """Train METHOD through the training pipeline (needs the ZenML stack)."""
    from neuralmark.components.errors import InputError

    _check_method(method)
    if schedule is not None:
        if variant:
            raise InputError("give --schedule or --variant, not both (schedule each variant "
                             "with its --config)")
        from neuralmark.runtime.k8s_runs import check_cron

        check_cron(schedule)  # before any pipeline module loads
        schedule_training = load_pipeline("neuralmark.pipelines.training", "schedule_training",
                                          "training")
        done = schedule_training(method, profile.value, schedule, config)
        out().print(f"scheduled training of {method} ({profile.value}) on stack "
                    f"{done['stack']} ({done['orchestrator']} orchestrator): "
                    f"cron {done['cron']!r}, registered model {done['model_name']}")
        return
    if variant:
        if config is not None:
            raise InputError("give --variant or --config, not both (each variant has its "
                             "own configs/<method>_<variant>.yaml)")
        run_variants = load_pipeline("neuralmark.pipelines.training", "run_variants", "training")
        chosen = None if "all" in variant else variant
        result = run_long(run_variants, method, profile.value, chosen,
                          label=f"training {method} variants ({profile.value})")
        print_variants(out(), result, f"{method} variants ({profile.value})")
        return
    run_training = load_pipeline("neuralmark.pipelines.training", "run_training", "training")
    result = run_long(run_training, method, profile.value, config,
                      label=f"training {method} ({profile.value})")
    print_training(out(), result, f"training {method} ({profile.value})")


@domain_errors
def evaluate(
    method: str = typer.Option(DEFAULT_METHOD, "--method", help="Registered method."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Bundle folder to evaluate."),
    profile: Profile = typer.Option(Profile.tiny, "--profile", help="Size profile."),
) -> None:
    """Run the robustness suite on a method bundle and print its headline numbers."""
    from neuralmark.components.errors import InputError

    _check_method(method)
    if bundle is not None and not bundle.is_dir():
        raise InputError(f"--bundle {bundle} is not a folder")
    run_evaluation = load_pipeline("neuralmark.pipelines.evaluation", "run_evaluation",
                                   "evaluation")
    result = run_long(run_evaluation, method, bundle, profile.value,
                      label=f"evaluating {method} ({profile.value})")
    print_evaluation(out(), result, f"evaluation of {method} ({profile.value})")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to ``app``."""
    app.command()(train)
    app.command()(evaluate)
