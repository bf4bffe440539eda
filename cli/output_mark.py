"""``neuralmark protect`` / ``extract`` / ``audit``: the output_mark commands (issue #6).

* ``protect --task derain|debone`` runs ``neuralmark.pipelines.output_mark`` (train M, H, R
  end to end, the surrogate matrix, the gate, the registry).
* ``extract IMAGE`` saves R's logo estimate (next to the image as
  ``<stem>.logo.png``, or ``--out``) and prints NC and the verdict; exit code
  0 detected, 1 not detected, 2 unreadable input or bad arguments (like
  ``verify``).
* ``audit --suspect-outputs DIR`` decides whether a suspect model was trained on
  our marked outputs from a folder of its outputs (any sizes: R reads them at
  the working size; unreadable files are listed, not fatal) and writes a report
  folder: ``logos.png`` (extracted logos), ``nc_histogram.png``,
  ``verdict.json``, ``verdict.md``. Exit code 0 detected, 1 not detected, 2 no
  readable output or bad arguments.

The method comes from ``--bundle DIR``, ``--model-uri`` (MLflow registry) or the
shipped ``components/pretrained/output_mark/`` (none ships yet). Helpers
(``_domain_errors``, ``_make_key``, ``_emit_verdict``, ``_exit_code``, …) are
``neuralmark.cli.app``'s, looked up when the commands are registered, so this module
can be imported before or after ``neuralmark.cli.app``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

METHOD = "output_mark"

_KEY = typer.Option(..., "--key", "-k", envvar="NEURALMARK_KEY",
                    help="Secret key whose logo is looked for (or set NEURALMARK_KEY).")
_BUNDLE = typer.Option(None, "--bundle",
                       help="output_mark bundle folder (default: components/pretrained/"
                            "output_mark/).")
_URI = typer.Option(None, "--model-uri",
                    help="Registered model, e.g. models:/neuralmark-output_mark@champion.")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")


def _cli() -> Any:
    import neuralmark.cli.app as cli

    return cli


def load_output_mark(bundle: Path | None, model_uri: str | None, device: str = "auto") -> Any:
    """The output_mark method from ``--model-uri``, ``--bundle`` or the shipped bundle.

    Raises:
        InputError: both sources given, no bundle there, or a bundle of another method.
    """
    from neuralmark.integrations.loading import load_method

    return load_method(_cli()._source(METHOD, bundle, model_uri), device, expect=METHOD)


def _save_logo(tensor: Any, path: Path) -> list[str]:
    from neuralmark.components.imageio import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(tensor, path)


def protect(
    task: str = typer.Option(..., "--task", help="Host task: derain or debone."),
    profile: str = typer.Option("tiny", "--profile", help="Size profile (tiny, full)."),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False,
        help="ZenML run config (default configs/output_mark_pipeline.yaml)."),
    logo: Path | None = typer.Option(
        None, "--logo", help="Image file to hide instead of the key-derived pattern."),
    task_specific: bool = typer.Option(
        False, "--task-specific",
        help="The seed's task-specific variant: H itself is the marked model (compared "
             "with a plain M on PSNR/SSIM)."),
) -> None:
    """Protect a TASK model: train M, H, R end to end, run the surrogate matrix, gate, register."""
    from neuralmark.components.data.pairs import TASKS
    from neuralmark.components.methods.base import InputError

    cli = _cli()
    if task not in TASKS:
        raise InputError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if profile not in ("tiny", "full"):
        raise InputError(f"--profile {profile!r} is not one of tiny, full")
    overrides: dict[str, Any] = {}
    if logo is not None:
        from neuralmark.components.methods.output_mark.logo import load_logo

        load_logo(str(logo), 64)  # not an image → one red line, exit 2, before any training
        overrides["config"] = {"logo": str(logo.resolve())}
    if task_specific:
        overrides.setdefault("config", {})["task_specific"] = True
    run = cli._lazy("neuralmark.pipelines.output_mark", "run_output_mark",
                    "the output_mark pipeline")

    def go(callbacks: Any = None) -> Any:
        return run(task, profile, config, overrides, callbacks=callbacks)

    variant = ", task-specific" if task_specific else ""
    result = cli._run_long(go, label=f"protecting a {task} model ({profile}{variant})")
    cli._print_result({k: v for k, v in result.items() if k not in ("tables", "metrics")},
                      f"output_mark {task} ({profile})")
    cli._out().print(result["tables"])


def extract(
    image: Path = typer.Argument(..., metavar="IMAGE", help="An output image to read."),
    key: str = _KEY,
    bundle: Path | None = _BUNDLE,
    model_uri: str | None = _URI,
    out: Path | None = typer.Option(
        None, "--out", help="Where to save R's logo estimate (default: IMAGE.logo.png)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    device: str = _DEVICE,
) -> None:
    """Save R's logo estimate from IMAGE and print its NC and the verdict.

    Exit code: 0 detected (NC > threshold), 1 not detected, 2 unreadable input
    or bad arguments.
    """
    from neuralmark.components.imageio import load_image
    from neuralmark.components.methods.base import InputError, Verdict

    cli = _cli()
    wm_key = cli._make_key(key, None)
    wm = load_output_mark(bundle, model_uri, device)
    notes: list[str] = []
    try:
        loaded = load_image(image, min_size=wm.min_size)
    except InputError as err:
        verdict = Verdict.unreadable(str(err))
    else:
        notes = list(loaded.notes)
        x = loaded.tensor.to(wm.device)
        verdict = wm.verify(x, wm_key)[0]
        target = out or image.with_name(f"{image.stem}.logo.png")
        notes += _save_logo(wm.extract(x)[:1].cpu(), target)
        verdict.extra["logo_estimate"] = str(target)
        if not as_json:
            notes.insert(0, f"logo estimate saved to {target}")
    cli._emit_verdict(image, verdict, notes, as_json, cli._out())
    raise typer.Exit(cli._exit_code(verdict))


def _read_outputs(files: list[Path], min_size: int) -> tuple[list[Any], list[str],
                                                              dict[str, str]]:
    """Load every file; unreadable ones are listed with the reason, not fatal."""
    from neuralmark.components.imageio import load_image
    from neuralmark.components.methods.base import InputError

    tensors, names, unreadable = [], [], {}
    for path in files:
        try:
            tensors.append(load_image(path, min_size=min_size).tensor)
            names.append(path.name)
        except InputError as err:
            unreadable[path.name] = str(err)
    return tensors, names, unreadable


def audit(
    suspect_outputs: Path = typer.Option(
        ..., "--suspect-outputs", help="Folder of outputs of the suspected model."),
    key: str = _KEY,
    bundle: Path | None = _BUNDLE,
    model_uri: str | None = _URI,
    report: Path | None = typer.Option(
        None, "--report", help="Report folder (default: reports/audit-<folder>-<time>/)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    as_json: bool = typer.Option(False, "--json", help="The verdict as JSON on stdout."),
    device: str = _DEVICE,
) -> None:
    """Was the suspected model trained on our marked outputs? Decide, and save the evidence.

    Exit code: 0 detected, 1 not detected, 2 no readable output or bad arguments.
    """
    import torch

    from neuralmark.components.imageio import iter_images
    from neuralmark.components.methods.base import InputError, Verdict, resize_square
    from neuralmark.components.methods.output_mark.audit import audit_markdown
    from neuralmark.components.plots import logo_grid, nc_histogram

    cli = _cli()
    if not suspect_outputs.is_dir():
        raise InputError(f"--suspect-outputs {suspect_outputs} is not a folder")
    wm_key = cli._make_key(key, None)
    files = list(iter_images(suspect_outputs, recursive=recursive))
    if not files:
        raise InputError(f"{suspect_outputs} holds no image files")
    wm = load_output_mark(bundle, model_uri, device)
    with cli._progress() as bar:
        bar.add_task(f"reading {len(files)} outputs", total=None)
        tensors, names, unreadable = _read_outputs(files, wm.min_size)
        if tensors:
            verdict = wm.verify_model(tensors, wm_key)           # mixed sizes → working size
            size = wm.config.working_size
            logos = wm.extract(torch.cat([resize_square(t.float(), size) for t in tensors]))
        else:
            verdict = Verdict.unreadable(f"none of the {len(files)} files could be read")
            logos = None
    folder = report or Path("reports") / f"audit-{suspect_outputs.name}-" \
                                         f"{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"suspect_outputs": str(suspect_outputs), "files": names,
              "unreadable": unreadable, **verdict.to_dict()}
    if logos is not None:
        ncs = verdict.extra["nc"]
        ref, _ = wm.reference_logo(wm_key)
        for name, fig in (("logos", logo_grid(logos, ref, names, ncs, wm.config.threshold)),
                          ("nc_histogram", nc_histogram(ncs, wm.config.threshold,
                                                        wm.null_scores))):
            fig.savefig(folder / f"{name}.png", dpi=110)
        record["figures"] = ["logos.png", "nc_histogram.png"]
    (folder / "verdict.json").write_text(json.dumps(record, indent=2,
                                                    default=cli._json_default))
    (folder / "verdict.md").write_text(audit_markdown(record, names, unreadable))
    record["report"] = str(folder)
    if as_json:
        typer.echo(json.dumps(record, default=cli._json_default))
    else:
        console = cli._out()
        cli._emit_verdict(suspect_outputs, verdict, [], False, console)
        for name, why in unreadable.items():
            console.print(f"  [yellow]unreadable[/] {name}: {why}")
        console.print(f"evidence: {folder}")
    raise typer.Exit(cli._exit_code(verdict))


def register(app: typer.Typer) -> None:
    """Add ``protect``, ``extract`` and ``audit`` to the ``neuralmark`` app."""
    cli = _cli()
    for name, fn in (("protect", protect), ("extract", extract), ("audit", audit)):
        app.command(name)(cli._domain_errors(fn))
