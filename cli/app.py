"""The ``neuralmark`` command line.

``neuralmark embed`` / ``verify`` mark and check image files with a method
bundle (the shipped one under ``components/pretrained/<method>/``, a folder
given with ``--bundle``, or a registered model given with ``--model-uri``).
``verify`` is three-way and scripts can rely on its exit code:

* ``0`` — watermark detected,
* ``1`` — not detected (the p-value says how unlikely the score is by chance),
* ``2`` — unreadable input or bad arguments.

``stamp`` / ``scan`` do the same for the anti-forwarding stamp
(``anti_forward``): the stamp is not keyed (``--key`` only protects the
optional payload), and ``scan`` scores files in batches, the service's hot path.

``train``, ``evaluate`` and ``data sample`` hand over to the pipelines and the
data builder, imported lazily so that ``embed`` / ``verify`` stay fast and work
without a ZenML stack.

Every domain error (bad image, bad key, bad config) is one red line that names
the problem, exit code 2, no traceback.
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from neuralmark.components.imageio import iter_images, load_image, output_format, save_image
from neuralmark.components.methods.base import (
    InputError,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
)

DEFAULT_METHOD = "pgd_signer"

EXIT_DETECTED = 0
EXIT_NOT_DETECTED = 1
EXIT_UNREADABLE = 2

app = typer.Typer(
    name="neuralmark",
    help="Deep image watermarking: embed, verify, train and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class Profile(enum.StrEnum):
    """Size profile of a training or evaluation run (``configs/profiles/``)."""

    tiny = "tiny"
    full = "full"


# -- output helpers ---------------------------------------------------------------------------


def _out() -> Console:
    """Console on the current stdout (resolved per call, so test runners can capture it)."""
    return Console(soft_wrap=True, highlight=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _fail(message: str, code: int = EXIT_UNREADABLE) -> typer.Exit:
    """Print one red line on stderr and return the ``typer.Exit`` to raise."""
    _err().print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _describe_validation(err: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
    )
    return f"invalid {err.title}: {problems}"


F = TypeVar("F", bound=Callable[..., Any])


def _domain_errors(fn: F) -> F:
    """Turn domain errors into one red line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            raise _fail(str(err)) from None
        except ValidationError as err:
            raise _fail(_describe_validation(err)) from None
        except OSError as err:  # the file system refused: permission, disk full, ...
            raise _fail(str(err)) from None

    return wrapper  # type: ignore[return-value]


def _progress() -> Progress:
    """A progress bar on stderr, so ``--json`` output on stdout stays clean."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err(),
        transient=True,
    )


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 1e-300" if p == 0 else f"{p:.3g}"  # 0.0 is an underflow, not certainty


def _json_default(value: Any) -> Any:
    """JSON for what methods may leave in ``Verdict.extra``: tensors, numpy scalars/arrays."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _flatten(mapping: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in mapping.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, f"{name}.")
        else:
            yield name, v


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print_result(result: Any, title: str) -> None:
    """Render what a pipeline returned: scalars as one table, lists of rows as more tables."""
    out = _out()
    if not isinstance(result, dict):
        out.print(f"{title}: {escape(str(result))}")
        return
    scalars = Table(title=title, show_header=True)
    scalars.add_column("name")
    scalars.add_column("value", justify="right")
    row_tables: list[Table] = []
    for name, v in _flatten(result):
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            columns = list(dict.fromkeys(c for r in v for c in r))
            t = Table(title=name)
            for c in columns:
                t.add_column(str(c))
            for r in v:
                t.add_row(*(escape(_fmt_value(r.get(c, ""))) for c in columns))
            row_tables.append(t)
        else:
            scalars.add_row(escape(name), escape(_fmt_value(v)))
    if scalars.row_count:
        out.print(scalars)
    for t in row_tables:
        out.print(t)
    if result.get("mlflow_ui"):
        # on its own line, unwrapped, so it can be copied
        out.print("\nOpen the MLflow UI (runs side by side, registry aliases):")
        out.print(escape(str(result["mlflow_ui"])), soft_wrap=True)


# -- method / key loading ---------------------------------------------------------------------


def _make_key(secret: str, message: int | None) -> WatermarkKey:
    if not secret.strip():
        raise InputError("--key is empty; give the secret the image was (or will be) marked with")
    try:
        return WatermarkKey(secret=secret, message=message)
    except ValueError as err:
        raise InputError(str(err)) from None


def _source(method: str | None, bundle: Path | None, model_uri: str | None) -> str:
    """What ``--method`` / ``--bundle`` / ``--model-uri`` name, as one loader source."""
    if bundle is not None and model_uri is not None:
        raise InputError("give either --bundle or --model-uri, not both")
    if model_uri is not None:
        return model_uri
    if bundle is not None:
        if not bundle.is_dir():
            raise InputError(f"--bundle {bundle} is not a folder")
        return str(bundle)
    return method or DEFAULT_METHOD


def _load_method(
    method: str | None, bundle: Path | None, model_uri: str | None, device: str
) -> WatermarkMethod:
    """Load the content method to embed / verify with.

    Order: ``--model-uri`` (MLflow registry), ``--bundle DIR``, else the shipped
    bundle of ``--method`` (default ``pgd_signer``).
    """
    from neuralmark.integrations.loading import load_method

    return load_method(_source(method, bundle, model_uri), device, expect=method, kind="content")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two ``1×3×H×W`` tensors in [0, 1] (``inf`` when identical)."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


# -- commands ---------------------------------------------------------------------------------


@app.command("list")
@_domain_errors
def list_methods() -> None:
    """List registered methods, their kind, and whether shipped weights exist."""
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
    _out().print(table)


_KEY_OPTION = typer.Option(
    ..., "--key", "-k", envvar="NEURALMARK_KEY",
    help="Secret key (or set NEURALMARK_KEY, which keeps it out of shell history).",
)
_MESSAGE_OPTION = typer.Option(
    None, "--message", "-m", min=0, help="Integer message ID (a claim, on verify).",
)
_METHOD_OPTION = typer.Option(
    None, "--method", help=f"Registered method (default {DEFAULT_METHOD}, or the bundle's own).",
)
_BUNDLE_OPTION = typer.Option(
    None, "--bundle", help="Bundle folder (default: components/pretrained/<method>/).",
)
_URI_OPTION = typer.Option(
    None, "--model-uri", help="Registered model, e.g. models:/neuralmark-pgd_signer@champion.",
)
_DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu or cuda.")
_RECURSIVE_OPTION = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders.")


def _embed_one(
    wm: WatermarkMethod, key: WatermarkKey, src: Path, dst: Path, quality: int
) -> tuple[float, list[str]]:
    loaded = load_image(src, min_size=wm.min_size)
    marked = wm.embed(loaded.tensor.to(wm.device), key).detach().cpu().clamp(0, 1)
    notes = list(loaded.notes)
    notes += save_image(marked, dst, alpha=loaded.alpha, quality=quality, like=loaded)
    written = (marked * 255).round() / 255  # PSNR of what was actually written
    return _psnr(loaded.tensor, written), notes


def _print_embedded(console: Console, src: Path, dst: Path, psnr: float, notes: list[str]) -> None:
    console.print(f"[green]marked[/] {escape(str(src))} → {escape(str(dst))}  PSNR {psnr:.2f} dB")
    for note in notes:
        console.print(f"  [dim]note: {escape(note)}[/]")


@app.command()
@_domain_errors
def embed(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file or folder."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Output file, or folder."),
    key: str = _KEY_OPTION,
    message: int | None = _MESSAGE_OPTION,
    method: str | None = _METHOD_OPTION,
    bundle: Path | None = _BUNDLE_OPTION,
    model_uri: str | None = _URI_OPTION,
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    psnr: float | None = typer.Option(
        None, "--psnr", min=20.0, max=60.0,
        help="Signing budget in dB (pgd_signer): lower = more robust, more visible."),
    recursive: bool = _RECURSIVE_OPTION,
    device: str = _DEVICE_OPTION,
) -> None:
    """Embed a watermark into IN and write the marked image to OUT.

    IN may be a folder: then OUT is a folder, and each image keeps its name and
    relative path. Files are written atomically (no partial file on failure).
    Exit code 2 if an input cannot be read.
    """
    wm_key = _make_key(key, message)
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or folder")
    if input_path.is_dir():
        _embed_folder(input_path, output_path, wm_key, method, bundle, model_uri, quality,
                      recursive, device, psnr)
        return
    if output_path.is_dir():
        output_path = output_path / input_path.name
    output_format(output_path)  # unknown extension -> error before any work
    if output_path.resolve() == input_path.resolve():
        raise InputError(f"OUT is IN ({input_path}); write the marked copy to another file")
    wm = _with_budget(_load_method(method, bundle, model_uri, device), psnr)
    measured, notes = _embed_one(wm, wm_key, input_path, output_path, quality)
    _print_embedded(_out(), input_path, output_path, measured, notes)


def _with_budget(wm: WatermarkMethod, psnr: float | None) -> WatermarkMethod:
    """Apply ``--psnr`` (the signing budget) when the method has one."""
    if psnr is None:
        return wm
    if "psnr_target" not in type(wm.config).model_fields:
        raise InputError(f"--psnr does not apply to {wm.key}: it has no signing budget")
    return wm.with_config(psnr_target=psnr)


def _embed_folder(
    src_dir: Path, dst_dir: Path, key: WatermarkKey, method: str | None, bundle: Path | None,
    model_uri: str | None, quality: int, recursive: bool, device: str,
    psnr: float | None = None, loaded: WatermarkMethod | None = None,
) -> None:
    if dst_dir.exists() and not dst_dir.is_dir():
        raise InputError(f"IN {src_dir} is a folder, so OUT must be a folder; {dst_dir} is a file")
    if dst_dir.resolve() == src_dir.resolve():
        raise InputError(f"OUT is IN ({src_dir}); write the marked copies to another folder")
    files = list(iter_images(src_dir, recursive=recursive))
    if not files:
        raise InputError(f"{src_dir} holds no image files")
    wm = loaded or _with_budget(_load_method(method, bundle, model_uri, device), psnr)
    failures = 0
    with _progress() as bar:
        task = bar.add_task("embedding", total=len(files))
        for src in files:
            dst = dst_dir / src.relative_to(src_dir)
            try:
                output_format(dst)
            except InputError:  # readable but not writable (e.g. gif): write PNG
                dst = dst.with_suffix(".png")
            try:
                psnr, notes = _embed_one(wm, key, src, dst, quality)
            except InputError as err:
                failures += 1
                bar.console.print(f"[red]unreadable[/] {escape(str(err))}")
            else:
                _print_embedded(bar.console, src, dst, psnr, notes)
            bar.advance(task)
    if failures:
        raise _fail(f"{failures} of {len(files)} files could not be marked")


def _verify_one(wm: WatermarkMethod, key: WatermarkKey, path: Path) -> tuple[Verdict, list[str]]:
    """Three-way verdict for one file; a file that cannot be used is ``unreadable``."""
    try:
        loaded = load_image(path, min_size=wm.min_size)
    except InputError as err:
        return Verdict.unreadable(str(err)), []
    try:
        verdicts = wm.verify(loaded.tensor.to(wm.device), key)
    except InputError as err:
        return Verdict.unreadable(f"{path}: {err}"), loaded.notes
    return verdicts[0], loaded.notes


def _exit_code(verdict: Verdict) -> int:
    if verdict.status == Status.UNREADABLE:
        return EXIT_UNREADABLE
    return EXIT_DETECTED if verdict.detected else EXIT_NOT_DETECTED


def _verdict_line(path: Path, v: Verdict) -> str:
    where = escape(str(path))
    reason = f" — {escape(v.reason)}" if v.reason else ""
    if v.status == Status.UNREADABLE:
        return f"{where}: [bold red]unreadable[/]{reason}"
    parts = [f"p-value {_fmt_p(v.p_value)}"]
    if v.bit_accuracy is not None:
        parts.append(f"bit accuracy {v.bit_accuracy:.3f}")
    if v.certified_radius is not None:
        parts.append(f"certified radius {v.certified_radius:.3g}")
    if v.detected:
        if v.payload is not None:
            parts.insert(0, f"payload {v.payload}")
        return f"{where}: [bold green]detected[/]  {'  '.join(parts)}{reason}"
    return f"{where}: [yellow]not detected[/]  {'  '.join(parts)}{reason}"


def _emit_verdict(path: Path, v: Verdict, notes: list[str], as_json: bool,
                  console: Console) -> None:
    if as_json:
        record = {"path": str(path), **v.to_dict(), "notes": notes}
        if not v.detected:
            record["payload"] = None  # never a confident payload from an unmarked image
        typer.echo(json.dumps(record, default=_json_default))
        return
    console.print(_verdict_line(path, v))
    for note in notes:
        console.print(f"  [dim]note: {escape(note)}[/]")


@app.command()
@_domain_errors
def verify(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file or folder."),
    key: str = _KEY_OPTION,
    message: int | None = _MESSAGE_OPTION,
    method: str | None = _METHOD_OPTION,
    bundle: Path | None = _BUNDLE_OPTION,
    model_uri: str | None = _URI_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image on stdout."),
    search: bool = typer.Option(
        False, "--search",
        help="Also try re-synchronised views (small rotations, re-padded crops); the "
             "p-value is multiplied by the number of views (pgd_signer)."),
    recursive: bool = _RECURSIVE_OPTION,
    device: str = _DEVICE_OPTION,
) -> None:
    """Check IN for a watermark: detected / not detected / unreadable, with the p-value.

    Exit code for one file: 0 detected, 1 not detected, 2 unreadable input or bad
    arguments. For a folder: 0 if every image is detected, 2 if any is
    unreadable, else 1. The payload is shown only when the mark is detected.
    """
    wm_key = _make_key(key, message)
    files = list(iter_images(input_path, recursive=recursive)) if input_path.is_dir() else [
        input_path
    ]
    if not files:
        raise InputError(f"{input_path} holds no image files")
    wm = _load_method(method, bundle, model_uri, device)
    if search:
        if "sync_search" not in type(wm.config).model_fields:
            raise InputError(f"--search does not apply to {wm.key}")
        wm = wm.with_config(sync_search=True)
    codes: list[int] = []
    if len(files) == 1:
        v, notes = _verify_one(wm, wm_key, files[0])
        _emit_verdict(files[0], v, notes, as_json, _out())
        codes.append(_exit_code(v))
    else:
        with _progress() as bar:
            task = bar.add_task("verifying", total=len(files))
            for path in files:
                v, notes = _verify_one(wm, wm_key, path)
                _emit_verdict(path, v, notes, as_json, bar.console if not as_json else _out())
                codes.append(_exit_code(v))
                bar.advance(task)
    raise typer.Exit(_folder_code(codes))


# -- anti-forwarding stamps: stamp / scan -----------------------------------------------------

STAMP_METHOD = "anti_forward"
_STAMP_KEY_OPTION = typer.Option(
    "neuralmark-stamp", "--key", "-k", envvar="NEURALMARK_KEY",
    help="Secret for the optional payload; the stamp itself is not keyed.",
)


def _with_overrides(wm: WatermarkMethod, **changes: Any) -> WatermarkMethod:
    """``wm.with_config`` for the given non-``None`` changes; names a field the method lacks."""
    changes = {k: v for k, v in changes.items() if v is not None}
    fields = type(wm.config).model_fields
    missing = [k for k in changes if k not in fields]
    if missing:
        raise InputError(f"{wm.key} has no setting {', '.join(missing)}")
    return wm.with_config(**changes) if changes else wm


@app.command()
@_domain_errors
def stamp(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file or folder."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Output file, or folder."),
    key: str = _STAMP_KEY_OPTION,
    message: int | None = _MESSAGE_OPTION,
    bundle: Path | None = _BUNDLE_OPTION,
    model_uri: str | None = _URI_OPTION,
    strength: float | None = typer.Option(
        None, "--strength", min=0.0, max=1.0,
        help="Largest pixel change of the stamp (default: the bundle's)."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    recursive: bool = _RECURSIVE_OPTION,
    device: str = _DEVICE_OPTION,
) -> None:
    """Add an invisible anti-forwarding stamp (anti_forward) to IN and write it to OUT.

    IN may be a folder (OUT is then a folder, relative paths kept). Writes are
    atomic; exit code 2 if an input cannot be read.
    """
    wm_key = _make_key(key, message)
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or folder")
    wm = _with_overrides(_load_method(STAMP_METHOD, bundle, model_uri, device), strength=strength)
    if input_path.is_dir():
        _embed_folder(input_path, output_path, wm_key, STAMP_METHOD, None, None, quality,
                      recursive, device, loaded=wm)
        return
    if output_path.is_dir():
        output_path = output_path / input_path.name
    output_format(output_path)
    if output_path.resolve() == input_path.resolve():
        raise InputError(f"OUT is IN ({input_path}); write the stamped copy to another file")
    measured, notes = _embed_one(wm, wm_key, input_path, output_path, quality)
    _print_embedded(_out(), input_path, output_path, measured, notes)


@app.command()
@_domain_errors
def scan(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Image files or folders."),
    key: str = _STAMP_KEY_OPTION,
    message: int | None = _MESSAGE_OPTION,
    bundle: Path | None = _BUNDLE_OPTION,
    model_uri: str | None = _URI_OPTION,
    smoothing: bool | None = typer.Option(
        None, "--smoothing/--no-smoothing",
        help="Certify with randomized smoothing (slower; gives a certified L2 radius). "
             "Default: the bundle's setting."),
    samples: int | None = typer.Option(
        None, "--samples", min=1, help="Noise samples for certification (default: bundle's)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per network call."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image on stdout."),
    recursive: bool = _RECURSIVE_OPTION,
    device: str = _DEVICE_OPTION,
) -> None:
    """Scan images for the anti-forwarding stamp, in batches (the service hot path).

    Exit code: 0 if every image is stamped, 2 if any is unreadable, else 1.
    Too few noise samples to certify anything answers "not stamped" (abstain),
    never a confident verdict.
    """
    wm_key = _make_key(key, message)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += list(iter_images(path, recursive=recursive))
        else:
            files.append(path)
    if not files:
        raise InputError(f"{', '.join(map(str, paths))} holds no image files")
    wm = _with_overrides(_load_method(STAMP_METHOD, bundle, model_uri, device),
                         smoothing=smoothing, n=samples)
    from neuralmark.components.serving import BatchVerifier

    scanner = BatchVerifier(wm, wm_key, batch_size=batch_size)
    codes: list[int] = []
    with _progress() as bar:
        task = bar.add_task("scanning", total=len(files))
        for path, v in scanner.verify_files(files):
            _emit_verdict(path, v, [], as_json, bar.console if not as_json else _out())
            codes.append(_exit_code(v))
            bar.advance(task)
    raise typer.Exit(_folder_code(codes))


def _folder_code(codes: list[int]) -> int:
    """0 if every verdict is detected, 2 if any input is unreadable, else 1."""
    if all(c == EXIT_DETECTED for c in codes):
        return EXIT_DETECTED
    return EXIT_UNREADABLE if EXIT_UNREADABLE in codes else EXIT_NOT_DETECTED


# -- pipelines, imported lazily ---------------------------------------------------------------


def _lazy(module: str, attr: str, what: str) -> Any:
    """Import ``module.attr``; if it cannot be imported, one red line and exit 2."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise _fail(f"{what} is not available: cannot import {module}.{attr} ({err})") from None


class _ProgressCallback:
    """Training/evaluation callback drawing ``on_progress`` on a rich bar."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task = bar.add_task("working", total=None)

    def on_progress(self, done: int, total: int, desc: str = "") -> None:
        self.bar.update(self.task, completed=done, total=total, description=desc or "working")


def _run_long(fn: Callable[..., Any], *args: Any, label: str) -> Any:
    """Call ``fn``: with a progress bar if it takes ``callbacks``, else under a spinner."""
    try:
        takes_callbacks = "callbacks" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_callbacks = False
    if takes_callbacks:
        with _progress() as bar:
            return fn(*args, callbacks=[_ProgressCallback(bar)])
    with _err().status(label):
        return fn(*args)


@app.command()
@_domain_errors
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
) -> None:
    """Train METHOD through the training pipeline (needs the ZenML stack)."""
    from neuralmark.components.methods.registry import method_class

    method_class(method)
    if variant:
        if config is not None:
            raise InputError("give --variant or --config, not both (each variant has its "
                             "own configs/<method>_<variant>.yaml)")
        run_variants = _lazy("neuralmark.pipelines.training", "run_variants", "training")
        chosen = None if "all" in variant else variant
        result = _run_long(run_variants, method, profile.value, chosen,
                           label=f"training {method} variants ({profile.value})")
        _print_result({k: v for k, v in result.items() if k != "tables"},
                      f"{method} variants ({profile.value})")
        _out().print(result["tables"])
        return
    run_training = _lazy("neuralmark.pipelines.training", "run_training", "training")
    result = _run_long(run_training, method, profile.value, config,
                       label=f"training {method} ({profile.value})")
    _print_result(result, f"training {method} ({profile.value})")


@app.command()
@_domain_errors
def evaluate(
    method: str = typer.Option(DEFAULT_METHOD, "--method", help="Registered method."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Bundle folder to evaluate."),
    profile: Profile = typer.Option(Profile.tiny, "--profile", help="Size profile."),
) -> None:
    """Run the robustness suite on a method bundle and print the metric table."""
    from neuralmark.components.methods.registry import method_class

    method_class(method)
    if bundle is not None and not bundle.is_dir():
        raise InputError(f"--bundle {bundle} is not a folder")
    run_evaluation = _lazy("neuralmark.pipelines.evaluation", "run_evaluation", "evaluation")
    result = _run_long(run_evaluation, method, bundle, profile.value,
                       label=f"evaluating {method} ({profile.value})")
    _print_result(result, f"evaluation of {method} ({profile.value})")


@data_app.command("sample")
@_domain_errors
def data_sample(
    root: Path = typer.Option(Path("data/sample"), "--root", help="Where to build the set."),
) -> None:
    """Build the small sample dataset from photos shipped with scikit-image/scikit-learn."""
    what = "the sample-data builder"
    build = _lazy("neuralmark.components.data.sample", "build_sample_dataset", what)
    config_cls = _lazy("neuralmark.components.data.sample", "SampleDataConfig", what)
    with _progress() as bar:
        task = bar.add_task("building sample data", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = build(root, config_cls(), progress=progress)
    _out().print(f"[green]sample dataset ready[/] at {escape(str(result))}")


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["targets=/x", "rain_haze=true"]`` → ``{"targets": "/x", "rain_haze": True}``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option {pair!r} is not KEY=VALUE")
        low = value.strip().lower()
        options[key.strip()] = True if low == "true" else False if low == "false" else value
    return options


@data_app.command("prepare")
@_domain_errors
def data_prepare(
    dataset: str = typer.Argument(..., help="Dataset recipe (cifar10, image_folder, ...)."),
    source: Path = typer.Option(..., "--source", help="The archive or folder as published."),
    out: Path = typer.Option(Path("data"), "--out", help="Output root (data/<dataset>/...)."),
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

    get_recipe(dataset)
    if not source.exists():
        raise InputError(f"--source {source} does not exist")
    config: dict[str, Any] = {}
    if limit is not None:
        config["limit"] = limit
    if size is not None:
        config["size"] = size
    if option:
        config["options"] = _parse_options(option)
    if pipeline:
        run = _lazy("neuralmark.pipelines.data_preparation", "run_data_preparation",
                    "data preparation")
        result = _run_long(run, dataset, source, str(out), config, label=f"preparing {dataset}")
        report = result["report"]
        cached = " (cached: unchanged input)" if result["cached"] else ""
        _out().print(f"[green]run {escape(result['run'])} {escape(result['status'])}[/]{cached}"
                     f"; validation report in {escape(result['reports_dir'])}")
    else:
        from neuralmark.components.data.datasets import PrepareConfig
        from neuralmark.components.data.prepare import prepare_dataset

        with _progress() as bar:
            task = bar.add_task(f"preparing {dataset}", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total or None)

            report = prepare_dataset(dataset, source, out, PrepareConfig(**config),
                                     progress=progress).to_dict()
    _out().print(f"[green]{escape(dataset)} ready[/] at {escape(report['manifest'])}: "
                 f"{escape(json.dumps(report['counts'], sort_keys=True))}, "
                 f"{report['items']} items, {len(report['quarantined'])} quarantined"
                 + (" (already prepared)" if report["skipped"] else
                    f", {report['images_per_second']:.1f} images/s"))
    for q in report["quarantined"][:20]:
        _out().print(f"  [yellow]quarantined[/] {escape(q['item_id'])}: {escape(q['error'])}")


# -- model watermark through outputs: protect / extract / audit (pipelines/cli_output_mark.py) --
from neuralmark.cli.output_mark import register as _register_output_mark  # noqa: E402

_register_output_mark(app)


def main() -> None:
    """Entry point for ``python -m neuralmark.cli.app``."""
    app()


if __name__ == "__main__":
    main()
