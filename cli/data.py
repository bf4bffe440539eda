"""``neuralmark data``: ``sample`` (the small photo set) and ``prepare`` (a downloaded dataset).

The builders (``neuralmark.components.data``) and the data-preparation pipeline
(``neuralmark.pipelines.data_preparation``: validation + DVC) are imported inside the
commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from neuralmark.cli.common import (
    domain_errors,
    lazy,
    load_pipeline,
    out,
    progress,
    run_long,
)

data_app = typer.Typer(help="Datasets.", no_args_is_help=True)

#: quarantined items listed after ``prepare`` (the rest are in the report)
MAX_QUARANTINED_SHOWN = 20


@data_app.command("sample")
@domain_errors
def data_sample(
    root: Path = typer.Option(Path("data/sample"), "--root", help="Where to build the set."),
) -> None:
    """Build the small sample dataset from photos shipped with scikit-image/scikit-learn."""
    what = "the sample-data builder"
    build = lazy("neuralmark.components.data.sample", "build_sample_dataset", what)
    config_cls = lazy("neuralmark.components.data.sample", "SampleDataConfig", what)
    with progress() as bar:
        task = bar.add_task("building sample data", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = build(root, config_cls(), progress=report)
    out().print(f"[green]sample dataset ready[/] at {escape(str(result))}")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["targets=/x", "rain_haze=true"]`` → ``{"targets": "/x", "rain_haze": True}``.

    Raises:
        InputError: a pair is not ``KEY=VALUE``.
    """
    from neuralmark.components.errors import InputError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option {pair!r} is not KEY=VALUE")
        low = value.strip().lower()
        options[key.strip()] = True if low == "true" else False if low == "false" else value
    return options


@data_app.command("prepare")
@domain_errors
def data_prepare(
    dataset: str = typer.Argument(..., help="Dataset recipe (cifar10, image_folder, ...)."),
    source: Path = typer.Option(..., "--source", help="The archive or folder as published."),
    out_root: Path = typer.Option(Path("data"), "--out", help="Output root (data/<dataset>/...)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Prepare the first N items."),
    size: int | None = typer.Option(None, "--size", min=8, help="Output side (resizing recipes)."),
    option: list[str] = typer.Option(
        [], "--option", metavar="KEY=VALUE",
        help="Recipe option, repeatable (e.g. targets=DIR for chestxray8_debone, "
             "rain_haze=true for voc_derain)."),
    pipeline: bool = typer.Option(
        True, "--pipeline/--no-pipeline",
        help="Run through ZenML (validate + DVC) or only the in-process prepare engine."),
) -> None:
    """Turn a downloaded dataset into data/<dataset>/<split>/ + manifest, validated, versioned."""
    from neuralmark.components.data.datasets import get_recipe
    from neuralmark.components.errors import InputError

    get_recipe(dataset)
    if not source.exists():
        raise InputError(f"--source {source} does not exist")
    config: dict[str, Any] = {}
    if limit is not None:
        config["limit"] = limit
    if size is not None:
        config["size"] = size
    if option:
        config["options"] = parse_options(option)
    console = out()
    if pipeline:
        run = load_pipeline("neuralmark.pipelines.data_preparation", "run_data_preparation",
                   "data preparation")
        result = run_long(run, dataset, source, str(out_root), config,
                          label=f"preparing {dataset}")
        report = result["report"]
        cached = " (cached: unchanged input)" if result["cached"] else ""
        console.print(f"[green]run {escape(result['run'])} {escape(result['status'])}[/]{cached}"
                      f"; validation report in {escape(result['reports_dir'])}")
    else:
        from neuralmark.components.data.datasets import PrepareConfig
        from neuralmark.components.data.prepare import prepare_dataset

        with progress() as bar:
            task = bar.add_task(f"preparing {dataset}", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total or None)

            report = prepare_dataset(dataset, source, out_root, PrepareConfig(**config),
                                     progress=advance).to_dict()
    console.print(f"[green]{escape(dataset)} ready[/] at {escape(report['manifest'])}: "
                  f"{escape(json.dumps(report['counts'], sort_keys=True))}, "
                  f"{report['items']} items, {len(report['quarantined'])} quarantined"
                  + (" (already prepared)" if report["skipped"] else
                     f", {report['images_per_second']:.1f} images/s"))
    for q in report["quarantined"][:MAX_QUARANTINED_SHOWN]:
        console.print(f"  [yellow]quarantined[/] {escape(q['item_id'])}: {escape(q['error'])}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` group (``sample``, ``prepare``) to ``app``."""
    app.add_typer(data_app, name="data")
