"""Content commands: ``list``, ``embed`` / ``verify`` (any content method), ``stamp`` / ``scan``.

``embed`` / ``verify`` mark and check image files with a method bundle (the shipped
one under ``components/pretrained/<method>/``, a folder given with ``--bundle``, or a
registered model given with ``--model-uri``). ``verify`` is three-way and scripts can
rely on its exit code: 0 watermark detected, 1 not detected (the p-value says how
unlikely the score is by chance), 2 unreadable input or bad arguments.

``stamp`` / ``scan`` do the same for the anti-forwarding stamp (``anti_forward``):
the stamp is not keyed (``--key`` only protects the optional payload), and ``scan``
scores files in batches, the service's hot path.

These commands import ``neuralmark.components`` (and through it torch) inside the
command functions, and never an MLOps package unless ``--model-uri`` asks for the
registry, so they start fast and need no stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from neuralmark.cli.common import (
    BUNDLE_OPTION,
    DEVICE_OPTION,
    JSON_OPTION,
    KEY_OPTION,
    MESSAGE_OPTION,
    METHOD_OPTION,
    RECURSIVE_OPTION,
    URI_OPTION,
    domain_errors,
    emit_verdict,
    exit_code,
    fail,
    folder_code,
    load_method,
    make_key,
    out,
    progress,
)

if TYPE_CHECKING:
    from neuralmark.components.methods.base import Verdict, WatermarkKey, WatermarkMethod

#: the method ``stamp`` / ``scan`` use
STAMP_METHOD = "anti_forward"

_STAMP_KEY_OPTION = typer.Option(
    "neuralmark-stamp", "--key", "-k", envvar="NEURALMARK_KEY",
    help="Secret for the optional payload; the stamp itself is not keyed.",
)
_QUALITY_OPTION = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality.")


@domain_errors
def list_methods() -> None:
    """List registered methods, their kind, and whether shipped weights exist."""
    from rich.table import Table

    from neuralmark.components.methods.registry import available, method_class, shipped_bundle

    table = Table(title="neuralmark methods")
    table.add_column("method")
    table.add_column("kind")
    table.add_column("shipped weights")
    for name in available():
        shipped = shipped_bundle(name)
        table.add_row(
            escape(name),
            method_class(name).kind,
            f"yes ({escape(str(shipped.relative_to(shipped.parents[2])))})" if shipped else "none",
        )
    out().print(table)


# -- embed / stamp ------------------------------------------------------------------------------


def _embed_one(wm: WatermarkMethod, key: WatermarkKey, src: Path, dst: Path,
               quality: int) -> tuple[float, list[str]]:
    """Mark ``src`` into ``dst`` (atomic write); the PSNR of what was written, and notes."""
    from neuralmark.components.imageio import load_image, save_image
    from neuralmark.components.metrics import psnr

    loaded = load_image(src, min_size=wm.min_size)
    marked = wm.embed(loaded.tensor.to(wm.device), key).detach().cpu().clamp(0, 1)  # 1 3 h w
    notes = list(loaded.notes)
    notes += save_image(marked, dst, alpha=loaded.alpha, quality=quality, like=loaded)
    written = (marked * 255).round() / 255  # PSNR of what was actually written
    return float(psnr(written, loaded.tensor)[0]), notes


def _print_embedded(console: Console, src: Path, dst: Path, psnr: float, notes: list[str]) -> None:
    console.print(f"[green]marked[/] {escape(str(src))} → {escape(str(dst))}  PSNR {psnr:.2f} dB")
    for note in notes:
        console.print(f"  [dim]note: {escape(note)}[/]")


def _embed_file(wm: WatermarkMethod, key: WatermarkKey, src: Path, dst: Path,
                quality: int) -> None:
    """Mark one file into ``dst`` (checked by ``_target``) and print what was written."""
    measured, notes = _embed_one(wm, key, src, dst, quality)
    _print_embedded(out(), src, dst, measured, notes)


def _embed_folder(wm: WatermarkMethod, key: WatermarkKey, files: list[Path], src_dir: Path,
                  dst_dir: Path, quality: int) -> None:
    """Mark ``files`` (images of ``src_dir``) into ``dst_dir``, relative paths kept; exit 2
    on any unreadable file, after marking the others."""
    from neuralmark.components.errors import InputError
    from neuralmark.components.imageio import output_format

    failures = 0
    with progress() as bar:
        task = bar.add_task("embedding", total=len(files))
        for src in files:
            dst = dst_dir / src.relative_to(src_dir)
            try:
                output_format(dst)
            except InputError:  # readable but not writable (e.g. gif): write PNG
                dst = dst.with_suffix(".png")
            try:
                measured, notes = _embed_one(wm, key, src, dst, quality)
            except InputError as error:
                failures += 1
                bar.console.print(f"[red]unreadable[/] {escape(str(error))}")
            else:
                _print_embedded(bar.console, src, dst, measured, notes)
            bar.advance(task)
    if failures:
        raise fail(f"{failures} of {len(files)} files could not be marked")


def _target(input_path: Path, output_path: Path, what: str) -> Path | None:
    """Check IN and OUT before any weights load; the output file for a file IN, else ``None``.

    A file IN writes to OUT, or into OUT when it is a folder (same name), with a
    known image extension, never over IN. A folder IN needs a folder OUT that is
    not IN itself.

    Raises:
        InputError: the check that failed, naming the path (``what`` names the copies:
            ``marked``, ``stamped``).
    """
    from neuralmark.components.errors import InputError
    from neuralmark.components.imageio import output_format

    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or folder")
    if input_path.is_dir():
        if output_path.exists() and not output_path.is_dir():
            raise InputError(f"IN {input_path} is a folder, so OUT must be a folder; "
                             f"{output_path} is a file")
        if output_path.resolve() == input_path.resolve():
            raise InputError(f"OUT is IN ({input_path}); write the {what} copies to another "
                             "folder")
        return None
    dst = output_path / input_path.name if output_path.is_dir() else output_path
    output_format(dst)  # an unknown extension fails before any work
    if dst.resolve() == input_path.resolve():
        raise InputError(f"OUT is IN ({input_path}); write the {what} copy to another file")
    return dst


def _with_overrides(wm: WatermarkMethod, **changes: Any) -> WatermarkMethod:
    """``wm.with_config`` for the given non-``None`` changes; names a field the method lacks."""
    from neuralmark.components.errors import InputError

    changes = {k: v for k, v in changes.items() if v is not None}
    fields = type(wm.config).model_fields
    missing = [k for k in changes if k not in fields]
    if missing:
        raise InputError(f"{wm.key} has no setting {', '.join(missing)}")
    return wm.with_config(**changes) if changes else wm


@domain_errors
def embed(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file or folder."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Output file, or folder."),
    key: str = KEY_OPTION,
    message: int | None = MESSAGE_OPTION,
    method: str | None = METHOD_OPTION,
    bundle: Path | None = BUNDLE_OPTION,
    model_uri: str | None = URI_OPTION,
    quality: int = _QUALITY_OPTION,
    psnr: float | None = typer.Option(
        None, "--psnr", min=20.0, max=60.0,
        help="Signing budget in dB (pgd_signer): lower = more robust, more visible."),
    recursive: bool = RECURSIVE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Embed a watermark into IN and write the marked image to OUT.

    IN may be a folder: then OUT is a folder, and each image keeps its name and
    relative path. Files are written atomically (no partial file on failure).
    Exit code 2 if an input cannot be read.
    """
    from neuralmark.components.errors import InputError

    wm_key = make_key(key, message)
    dst = _target(input_path, output_path, "marked")
    files = collect_images([input_path], recursive) if dst is None else [input_path]
    wm = load_method(method, bundle, model_uri, device, kind="content")
    if psnr is not None:
        if "psnr_target" not in type(wm.config).model_fields:
            raise InputError(f"--psnr does not apply to {wm.key}: it has no signing budget")
        wm = wm.with_config(psnr_target=psnr)
    if dst is None:
        _embed_folder(wm, wm_key, files, input_path, output_path, quality)
    else:
        _embed_file(wm, wm_key, input_path, dst, quality)


@domain_errors
def stamp(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file or folder."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Output file, or folder."),
    key: str = _STAMP_KEY_OPTION,
    message: int | None = MESSAGE_OPTION,
    bundle: Path | None = BUNDLE_OPTION,
    model_uri: str | None = URI_OPTION,
    strength: float | None = typer.Option(
        None, "--strength", min=0.0, max=1.0,
        help="Largest pixel change of the stamp (default: the bundle's)."),
    quality: int = _QUALITY_OPTION,
    recursive: bool = RECURSIVE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Add an invisible anti-forwarding stamp (anti_forward) to IN and write it to OUT.

    IN may be a folder (OUT is then a folder, relative paths kept). Writes are
    atomic; exit code 2 if an input cannot be read.
    """
    wm_key = make_key(key, message)
    dst = _target(input_path, output_path, "stamped")
    files = collect_images([input_path], recursive) if dst is None else [input_path]
    wm = _with_overrides(load_method(STAMP_METHOD, bundle, model_uri, device, kind="content"),
                         strength=strength)
    if dst is None:
        _embed_folder(wm, wm_key, files, input_path, output_path, quality)
    else:
        _embed_file(wm, wm_key, input_path, dst, quality)


# -- verify / scan ------------------------------------------------------------------------------


def collect_images(paths: list[Path], recursive: bool) -> list[Path]:
    """The image files of ``paths`` (folders expanded, files kept as given, even unreadable).

    Raises:
        InputError: nothing to look at.
    """
    from neuralmark.components.errors import InputError
    from neuralmark.components.imageio import iter_images

    files: list[Path] = []
    for path in paths:
        files += list(iter_images(path, recursive=recursive)) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{', '.join(map(str, paths))} holds no image files")
    return files


def _verify_one(wm: WatermarkMethod, key: WatermarkKey, path: Path) -> tuple[Verdict, list[str]]:
    """Three-way verdict for one file; a file that cannot be used is ``unreadable``."""
    from neuralmark.components.errors import InputError
    from neuralmark.components.imageio import load_image
    from neuralmark.components.methods.base import Verdict

    try:
        loaded = load_image(path, min_size=wm.min_size)
    except InputError as error:
        return Verdict.unreadable(str(error)), []
    try:
        verdicts = wm.verify(loaded.tensor.to(wm.device), key)
    except InputError as error:
        return Verdict.unreadable(f"{path}: {error}"), loaded.notes
    return verdicts[0], loaded.notes


@domain_errors
def verify(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file or folder."),
    key: str = KEY_OPTION,
    message: int | None = MESSAGE_OPTION,
    method: str | None = METHOD_OPTION,
    bundle: Path | None = BUNDLE_OPTION,
    model_uri: str | None = URI_OPTION,
    as_json: bool = JSON_OPTION,
    search: bool = typer.Option(
        False, "--search",
        help="Also try re-synchronised views (small rotations, re-padded crops); the "
             "p-value is multiplied by the number of views (pgd_signer)."),
    recursive: bool = RECURSIVE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Check IN for a watermark: detected / not detected / unreadable, with the p-value.

    Exit code for one file: 0 detected, 1 not detected, 2 unreadable input or bad
    arguments. For a folder: 0 if every image is detected, 2 if any is
    unreadable, else 1. The payload is shown only when the mark is detected.
    """
    from neuralmark.components.errors import InputError

    wm_key = make_key(key, message)
    files = collect_images([input_path], recursive)
    wm = load_method(method, bundle, model_uri, device, kind="content")
    if search:
        if "sync_search" not in type(wm.config).model_fields:
            raise InputError(f"--search does not apply to {wm.key}")
        wm = wm.with_config(sync_search=True)
    if len(files) == 1:
        verdict, notes = _verify_one(wm, wm_key, files[0])
        emit_verdict(files[0], verdict, notes, as_json, out())
        codes = [exit_code(verdict)]
    else:
        codes = verify_with_progress(wm, wm_key, files, as_json)
    raise typer.Exit(folder_code(codes))


def verify_with_progress(wm: WatermarkMethod, key: WatermarkKey | None, files: list[Path],
                         as_json: bool) -> list[int]:
    """Verify each of ``files`` under a progress bar, print each verdict; their exit codes."""
    codes: list[int] = []
    with progress() as bar:
        task = bar.add_task("verifying", total=len(files))
        for path in files:
            verdict, notes = _verify_one(wm, key, path)
            emit_verdict(path, verdict, notes, as_json, out() if as_json else bar.console)
            codes.append(exit_code(verdict))
            bar.advance(task)
    return codes


@domain_errors
def scan(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Image files or folders."),
    key: str = _STAMP_KEY_OPTION,
    message: int | None = MESSAGE_OPTION,
    bundle: Path | None = BUNDLE_OPTION,
    model_uri: str | None = URI_OPTION,
    smoothing: bool | None = typer.Option(
        None, "--smoothing/--no-smoothing",
        help="Certify with randomized smoothing (slower; gives a certified L2 radius). "
             "Default: the bundle's setting."),
    samples: int | None = typer.Option(
        None, "--samples", min=1, help="Noise samples for certification (default: bundle's)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per network call."),
    as_json: bool = JSON_OPTION,
    recursive: bool = RECURSIVE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Scan images for the anti-forwarding stamp, in batches (the service hot path).

    Exit code: 0 if every image is stamped, 2 if any is unreadable, else 1.
    Too few noise samples to certify anything answers "not stamped" (abstain),
    never a confident verdict.
    """
    from neuralmark.components.serving import BatchVerifier

    wm_key = make_key(key, message)
    files = collect_images(paths, recursive)
    wm = _with_overrides(load_method(STAMP_METHOD, bundle, model_uri, device, kind="content"),
                         smoothing=smoothing, n=samples)
    scanner = BatchVerifier(wm, wm_key, batch_size=batch_size)
    codes: list[int] = []
    with progress() as bar:
        task = bar.add_task("scanning", total=len(files))
        for path, verdict in scanner.verify_files(files):
            emit_verdict(path, verdict, [], as_json, out() if as_json else bar.console)
            codes.append(exit_code(verdict))
            bar.advance(task)
    raise typer.Exit(folder_code(codes))


def register(app: typer.Typer) -> None:
    """Add ``list``, ``embed``, ``verify``, ``stamp`` and ``scan`` to ``app``."""
    app.command("list")(list_methods)
    for command in (embed, verify, stamp, scan):
        app.command()(command)

