"""Visible marks (``visible_gan``, DeepStamp): ``brand`` a folder, ``brand-verify`` images.

``brand IN OUT --mark logo.png`` stamps every image of the folder IN into OUT with the
shipped DeepStamp W (or ``--bundle`` / ``--model-uri``), relative paths kept: a progress
bar, each output written atomically, a rerun skips what is done (the model and mark that
branded OUT are kept in ``OUT/.neuralmark-brand/``; another mark is refused). Unreadable
files are skipped and listed; the exit code is 2 when any was, else 0.

``brand-verify PATH...`` answers detected / not detected / unreadable for each image
(exit 0 / 1 / 2 as ``verify``); the mark is not keyed, so no ``--key``.

Named ``brand`` so it does not clash with ``stamp`` (the invisible anti-forwarding stamp).
Imports no MLOps package unless ``--model-uri`` asks for the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from neuralmark.cli.common import (
    BUNDLE_OPTION,
    DEVICE_OPTION,
    JSON_OPTION,
    RECURSIVE_OPTION,
    URI_OPTION,
    domain_errors,
    err,
    fail,
    folder_code,
    load_method,
    out,
    progress,
)

if TYPE_CHECKING:
    from neuralmark.components.methods.visible_gan import VisibleGan

METHOD = "visible_gan"

_MARK_OPTION = typer.Option(
    None, "--mark", help="The logo (PNG with transparency; an image without alpha is keyed "
                         "on its border colour). Default: the model's own mark.")


def _mark_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def _load(bundle: Path | None, model_uri: str | None, device: str, mark: Path | None,
          blend: float | None = None, scale: float | None = None) -> VisibleGan:
    """The DeepStamp model with ``--mark`` (recalibrated) and the overrides applied."""
    from neuralmark.components.methods.visible_gan.mark import load_mark

    wm = load_method(METHOD, bundle, model_uri, device, kind="content")
    changes = {k: v for k, v in (("blend", blend), ("mark_scale", scale)) if v is not None}
    if changes:
        wm = wm.with_config(**changes)
    if mark is not None:
        rgba, notes = load_mark(mark, wm.config.mark_resolution)
        for note in notes:
            err().print(f"[dim]note: {escape(note)}[/]")
        with err().status("calibrating the detector for this mark"):
            wm = wm.with_mark(rgba, notes=notes)
    elif changes:
        with err().status("recalibrating the detector for these settings"):
            wm = wm.with_mark(wm.rgba.detach().cpu(), notes=wm.mark_notes)
    return wm


@domain_errors
def brand(
    input_path: Path = typer.Argument(..., metavar="IN", help="Folder of images."),
    output_path: Path = typer.Argument(..., metavar="OUT",
                                       help="Output folder (not inside IN)."),
    mark: Path | None = _MARK_OPTION,
    bundle: Path | None = BUNDLE_OPTION,
    model_uri: str | None = URI_OPTION,
    blend: float | None = typer.Option(None, "--blend", min=0.05, max=1.0,
                                       help="Blend factor β (default: the model's)."),
    scale: float | None = typer.Option(None, "--scale", min=0.05, max=1.0,
                                       help="Mark side as a fraction of the short side."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    recursive: bool = RECURSIVE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Stamp a visible mark (DeepStamp) on every image of the folder IN, into OUT.

    Resumable: a rerun skips outputs that exist. Exit code 2 if any file could not be
    branded (listed at the end), else 0.
    """
    from neuralmark.components.methods.visible_gan.folder import brand_folder, check_folders

    check_folders(input_path, output_path)  # before any weights load
    if mark is not None and not mark.is_file():
        raise fail(f"mark {mark}: no such file")
    wm = _load(bundle, model_uri, device, mark, blend, scale)
    from neuralmark.components.imageio import iter_images

    total = len(list(iter_images(input_path, recursive=recursive)))
    with progress() as bar:
        task = bar.add_task("branding", total=total)

        def on_file(path: Path, status: str, message: str) -> None:
            if status == "unreadable":
                bar.console.print(f"[red]unreadable[/] {escape(message)}")
            bar.advance(task)

        report = brand_folder(wm, input_path, output_path, recursive=recursive,
                              quality=quality, mark_size=_mark_size(mark) if mark else None,
                              on_file=on_file)
    console = out()
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    console.print(f"[green]branded[/] {len(report.branded)}, skipped {len(report.skipped)} "
                  f"(already done), unreadable {len(report.unreadable)} → "
                  f"{escape(str(output_path))}")
    if not report.ok:
        for path, reason in report.unreadable:
            err().print(f"[red]not branded[/] {escape(str(path))}: {escape(reason)}")
        raise fail(f"{len(report.unreadable)} of {total} files could not be branded")


@domain_errors
def brand_verify(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Image files or folders."),
    mark: Path | None = _MARK_OPTION,
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Bundle folder (default: the OUT/.neuralmark-brand a `brand` "
                               "run left in the one folder given, else the shipped model)."),
    model_uri: str | None = URI_OPTION,
    as_json: bool = JSON_OPTION,
    recursive: bool = RECURSIVE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Check images for the visible mark: detected / not detected / unreadable, with p-value.

    Exit code: 0 if every image carries the mark, 2 if any is unreadable, else 1.
    """
    from neuralmark.cli.content import collect_images, verify_with_progress
    from neuralmark.components.methods.registry import is_bundle
    from neuralmark.components.methods.visible_gan.folder import STATE_DIR

    if bundle is None and model_uri is None and len(paths) == 1 and is_bundle(
            paths[0] / STATE_DIR):
        bundle = paths[0] / STATE_DIR
        err().print(f"[dim]note: using the model that branded this folder ({bundle})[/]")
    files = collect_images(paths, recursive)
    wm = _load(bundle, model_uri, device, mark)
    raise typer.Exit(folder_code(verify_with_progress(wm, None, files, as_json)))


def register(app: typer.Typer) -> None:
    """Add ``brand`` and ``brand-verify`` to ``app``."""
    app.command()(brand)
    app.command("brand-verify")(brand_verify)
