"""``neuralmark protect`` / ``extract`` / ``audit``: the output_mark commands (issue #6).

* ``protect --task derain|debone`` runs ``neuralmark.pipelines.output_mark`` (train M, H, R
  end to end, the surrogate matrix, the gate, the registry) and prints its headline;
  ``--seeds 0,1,2`` adds the matrix over seeds (mean ± interval per cell).
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
shipped ``components/pretrained/output_mark/`` (a derain demo marked with the public key
``neuralmark-demo``; its MODEL_CARD.md says what it measures). The output_mark
library is imported inside each command, when it runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from neuralmark.cli.common import (
    DEVICE_OPTION,
    Profile,
    domain_errors,
    emit_verdict,
    exit_code,
    json_default,
    load_method,
    load_pipeline,
    make_key,
    out,
    progress,
    run_long,
)
from neuralmark.cli.headline import print_training

if TYPE_CHECKING:
    import torch

    from neuralmark.components.methods.base import WatermarkMethod

METHOD = "output_mark"

_KEY = typer.Option(..., "--key", "-k", envvar="NEURALMARK_KEY",
                    help="Secret key whose logo is looked for (or set NEURALMARK_KEY).")
_BUNDLE = typer.Option(None, "--bundle",
                       help="output_mark bundle folder (default: components/pretrained/"
                            "output_mark/).")
_URI = typer.Option(None, "--model-uri",
                    help="Registered model, e.g. models:/neuralmark-output_mark@champion.")


def load_output_mark(bundle: Path | None, model_uri: str | None,
                     device: str = "auto") -> WatermarkMethod:
    """The output_mark method from ``--model-uri``, ``--bundle`` or the shipped bundle.

    Raises:
        InputError: both sources given, no bundle there, or a bundle of another method.
    """
    return load_method(METHOD, bundle, model_uri, device)


def _save_logo(tensor: torch.Tensor, path: Path) -> list[str]:
    """Save a 1×3×s×s logo estimate as an image; the writer's notes."""
    from neuralmark.components.imageio import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(tensor, path)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``.

    Raises:
        InputError: a part that is not an integer, a repeated seed, or fewer than two.
    """
    from neuralmark.components.errors import InputError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") \
            from None
    if len(values) < 2 or len(set(values)) != len(values):
        raise InputError(f"--seeds {text!r}: a spread needs at least two distinct seeds "
                         "(three or more for a useful interval)")
    return values


@domain_errors
def protect(
    task: str = typer.Option(..., "--task", help="Host task: derain or debone."),
    profile: Profile = typer.Option(Profile.tiny, "--profile", help="Size profile."),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False,
        help="ZenML run config (default configs/output_mark_pipeline.yaml)."),
    logo: Path | None = typer.Option(
        None, "--logo", help="Image file to hide instead of the key-derived pattern."),
    task_specific: bool = typer.Option(
        False, "--task-specific",
        help="The seed's task-specific variant: H itself is the marked model (compared "
             "with a plain M on PSNR/SSIM)."),
    seeds: str | None = typer.Option(
        None, "--seeds",
        help="Comma-separated seeds, e.g. 0,1,2: also retrain everything once per seed and "
             "report the matrix as mean ± 95% interval per cell (logged to MLflow)."),
) -> None:
    """Protect a TASK model: train M, H, R end to end, run the surrogate matrix, gate, register."""
    from neuralmark.components.data.pairs import TASKS
    from neuralmark.components.errors import InputError

    if task not in TASKS:
        raise InputError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    overrides: dict[str, Any] = {}
    if logo is not None:
        from neuralmark.components.methods.output_mark.logo import load_logo

        load_logo(str(logo), 64)  # not an image → one red line, exit 2, before any training
        overrides["config"] = {"logo": str(logo.resolve())}
    if task_specific:
        overrides.setdefault("config", {})["task_specific"] = True
    if seeds is not None:
        overrides["matrix"] = {"seeds": parse_seeds(seeds)}
    run = load_pipeline("neuralmark.pipelines.output_mark", "run_output_mark",
                        "the output_mark pipeline")

    def go(callbacks: Any = None) -> Any:
        return run(task, profile.value, config, overrides, callbacks=callbacks)

    variant = ", task-specific" if task_specific else ""
    result = run_long(go, label=f"protecting a {task} model ({profile.value}{variant})")
    print_training(out(), result, f"output_mark {task} ({profile.value}{variant})")
    spread = _spread_line(result.get("summary") or {})
    if spread:
        out().print(spread)


def _spread_line(summary: dict[str, float]) -> str:
    """``matrix mean over seeds …`` from a run's summary, or "" without a seed spread."""
    parts = []
    for stage in ("stage1", "stage2"):
        k = f"spread/{stage}/matrix_mean/success_rate"
        if f"{k}/mean" in summary:
            parts.append(f"stage {stage[-1]} {100 * summary[f'{k}/mean']:.0f}% "
                         f"[{100 * summary[f'{k}/ci_low']:.0f}, "
                         f"{100 * summary[f'{k}/ci_high']:.0f}]")
    return f"matrix mean over seeds (95% interval): {', '.join(parts)}" if parts else ""


@domain_errors
def extract(
    image: Path = typer.Argument(..., metavar="IMAGE", help="An output image to read."),
    key: str = _KEY,
    bundle: Path | None = _BUNDLE,
    model_uri: str | None = _URI,
    out_path: Path | None = typer.Option(
        None, "--out", help="Where to save R's logo estimate (default: IMAGE.logo.png)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    device: str = DEVICE_OPTION,
) -> None:
    """Save R's logo estimate from IMAGE and print its NC and the verdict.

    Exit code: 0 detected (NC > threshold), 1 not detected, 2 unreadable input
    or bad arguments.
    """
    from neuralmark.components.errors import InputError
    from neuralmark.components.imageio import load_image
    from neuralmark.components.methods.base import Verdict

    wm_key = make_key(key, None)
    wm = load_output_mark(bundle, model_uri, device)
    notes: list[str] = []
    try:
        loaded = load_image(image, min_size=wm.min_size)
    except InputError as error:
        verdict = Verdict.unreadable(str(error))
    else:
        notes = list(loaded.notes)
        x = loaded.tensor.to(wm.device)  # 1 3 h w
        verdict = wm.verify(x, wm_key)[0]
        target = out_path or image.with_name(f"{image.stem}.logo.png")
        notes += _save_logo(wm.extract(x)[:1].cpu(), target)
        verdict.extra["logo_estimate"] = str(target)
        if not as_json:
            notes.insert(0, f"logo estimate saved to {target}")
    emit_verdict(image, verdict, notes, as_json, out())
    raise typer.Exit(exit_code(verdict))


def _read_outputs(files: list[Path], min_size: int) -> tuple[list[torch.Tensor], list[str],
                                                              dict[str, str]]:
    """Load every file (1×3×h×w each); unreadable ones are listed with the reason, not fatal."""
    from neuralmark.components.errors import InputError
    from neuralmark.components.imageio import load_image

    tensors, names, unreadable = [], [], {}
    for path in files:
        try:
            tensors.append(load_image(path, min_size=min_size).tensor)
            names.append(path.name)
        except InputError as error:
            unreadable[path.name] = str(error)
    return tensors, names, unreadable


@domain_errors
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
    device: str = DEVICE_OPTION,
) -> None:
    """Was the suspected model trained on our marked outputs? Decide, and save the evidence.

    Exit code: 0 detected, 1 not detected, 2 no readable output or bad arguments.
    """
    import torch

    from neuralmark.components.errors import InputError
    from neuralmark.components.files import atomic_write_text
    from neuralmark.components.imageio import iter_images
    from neuralmark.components.methods.base import Verdict, resize_square

    if not suspect_outputs.is_dir():
        raise InputError(f"--suspect-outputs {suspect_outputs} is not a folder")
    wm_key = make_key(key, None)
    files = list(iter_images(suspect_outputs, recursive=recursive))
    if not files:
        raise InputError(f"{suspect_outputs} holds no image files")
    wm = load_output_mark(bundle, model_uri, device)
    from neuralmark.components.methods.output_mark.audit import audit_markdown
    from neuralmark.components.plots import logo_grid, nc_histogram
    with progress() as bar:
        bar.add_task(f"reading {len(files)} outputs", total=None)
        tensors, names, unreadable = _read_outputs(files, wm.min_size)
        if tensors:
            verdict = wm.verify_model(tensors, wm_key)           # mixed sizes → working size
            size = wm.config.working_size
            logos = wm.extract(torch.cat([resize_square(t.float(), size)
                                          for t in tensors]))     # n 3 s s
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
        threshold = wm.config.threshold
        for name, fig in (("logos", logo_grid(logos, ref, names, ncs, threshold)),
                          ("nc_histogram", nc_histogram(ncs, threshold,
                                                               wm.null_scores))):
            fig.savefig(folder / f"{name}.png", dpi=110)
        record["figures"] = ["logos.png", "nc_histogram.png"]
    atomic_write_text(folder / "verdict.json", json.dumps(record, indent=2, default=json_default))
    atomic_write_text(folder / "verdict.md", audit_markdown(record, names, unreadable))
    record["report"] = str(folder)
    if as_json:
        typer.echo(json.dumps(record, default=json_default))
    else:
        console = out()
        emit_verdict(suspect_outputs, verdict, [], False, console)
        for name, why in unreadable.items():
            console.print(f"  [yellow]unreadable[/] {escape(name)}: {escape(why)}")
        console.print(f"evidence: {escape(str(folder))}")
    raise typer.Exit(exit_code(verdict))


def register(app: typer.Typer) -> None:
    """Add ``protect``, ``extract`` and ``audit`` to ``app``."""
    for command in (protect, extract, audit):
        app.command()(command)
