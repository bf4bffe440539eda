"""What every ``neuralmark`` command group shares: consoles, errors, progress, verdicts, loading.

Imports only typer, rich and the standard library at module level, so that the root
app and every ``--help`` start without torch, ``neuralmark.components`` or an MLOps
package; what a helper needs from the library it imports when called (by then the
command has loaded it anyway).

Exit codes of the verdict commands (``verify``, ``scan``, ``extract``, ``audit``):
``EXIT_DETECTED`` (0), ``EXIT_NOT_DETECTED`` (1), ``EXIT_UNREADABLE`` (2, also every
domain error: bad image, bad key, bad config — one red line on stderr, no traceback).
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.progress import Progress

    from neuralmark.components.methods.base import Verdict, WatermarkKey, WatermarkMethod

DEFAULT_METHOD = "pgd_signer"

EXIT_DETECTED = 0
EXIT_NOT_DETECTED = 1
EXIT_UNREADABLE = 2


class Profile(enum.StrEnum):
    """Size profile of a training or evaluation run (``configs/profiles/``)."""

    tiny = "tiny"
    full = "full"


# -- options shared by the content commands -----------------------------------------------------

KEY_OPTION = typer.Option(
    ..., "--key", "-k", envvar="NEURALMARK_KEY",
    help="Secret key (or set NEURALMARK_KEY, which keeps it out of shell history).",
)
MESSAGE_OPTION = typer.Option(
    None, "--message", "-m", min=0, help="Integer message ID (a claim, on verify).",
)
METHOD_OPTION = typer.Option(
    None, "--method", help=f"Registered method (default {DEFAULT_METHOD}, or the bundle's own).",
)
BUNDLE_OPTION = typer.Option(
    None, "--bundle", help="Bundle folder (default: components/pretrained/<method>/).",
)
URI_OPTION = typer.Option(
    None, "--model-uri", help="Registered model, e.g. models:/neuralmark-pgd_signer@champion.",
)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu or cuda.")
RECURSIVE_OPTION = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders.")
JSON_OPTION = typer.Option(False, "--json", help="One JSON object per image on stdout.")


# -- consoles and errors ------------------------------------------------------------------------


def out() -> Console:
    """Console on the current stdout (resolved per call, so test runners can capture it)."""
    return Console(soft_wrap=True, highlight=False)


def err() -> Console:
    """Console on the current stderr (progress, errors: stdout stays clean for ``--json``)."""
    return Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, code: int = EXIT_UNREADABLE) -> typer.Exit:
    """Print one red line on stderr and return the ``typer.Exit`` to raise."""
    err().print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def domain_error_message(error: BaseException) -> str | None:
    """The one line to print for a domain error, or ``None`` for a bug (a traceback is due).

    Domain errors: ``InputError`` (bad image, key, config, dataset), pydantic's
    ``ValidationError`` (a config field named with its problem) and ``OSError``
    (the file system refused: permission, disk full, …).
    """
    if isinstance(error, OSError):
        return str(error)
    from pydantic import ValidationError

    from neuralmark.components.errors import InputError, describe_validation_error

    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, ValidationError):
        return f"invalid {error.title}: {describe_validation_error(error)}"
    return None


F = TypeVar("F", bound=Callable[..., Any])


def domain_errors(fn: F) -> F:
    """Turn domain errors (``domain_error_message``) into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # re-raised below unless it is a domain error
            message = domain_error_message(error)
            if message is None:
                raise
            raise fail(message) from None

    return wrapper  # type: ignore[return-value]


def lazy(module: str, attr: str, what: str) -> Any:
    """Import ``module.attr``; if it cannot be imported, one red line and exit 2."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise fail(f"{what} is not available: cannot import {module}.{attr} ({error})") from None


#: library settings a pipeline command starts with unless the user set them: the command
#: draws its own progress bar and prints the run's headline, so ZenML's per-step INFO lines
#: and MLflow's artifact progress bars would only be noise around it
PIPELINE_ENV_DEFAULTS = {"ZENML_LOGGING_VERBOSITY": "WARN",
                         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def load_pipeline(module: str, attr: str, what: str) -> Any:
    """``lazy`` for a pipeline runner, after setting ``PIPELINE_ENV_DEFAULTS``.

    A value the user set wins (``ZENML_LOGGING_VERBOSITY=INFO`` shows ZenML's step
    lines again); ZenML reads its variable when first imported, MLflow its own per call.
    """
    for name, value in PIPELINE_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return lazy(module, attr, what)


# -- progress -------------------------------------------------------------------------------------


def progress() -> Progress:
    """A progress bar on stderr, so ``--json`` output on stdout stays clean."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err(), transient=True)


class ProgressCallback:
    """Training/evaluation callback drawing ``on_progress`` on a rich bar."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task = bar.add_task("working", total=None)

    def on_progress(self, done: int, total: int, desc: str = "") -> None:
        """Move the bar to ``done`` of ``total`` with ``desc`` as its label."""
        self.bar.update(self.task, completed=done, total=total, description=desc or "working")


def run_long(fn: Callable[..., Any], *args: Any, label: str) -> Any:
    """Call ``fn``: with a progress bar if it takes ``callbacks``, else under a spinner."""
    try:
        takes_callbacks = "callbacks" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_callbacks = False
    if takes_callbacks:
        with progress() as bar:
            return fn(*args, callbacks=[ProgressCallback(bar)])
    with err().status(label):
        return fn(*args)


# -- keys and methods -----------------------------------------------------------------------------


def make_key(secret: str, message: int | None) -> WatermarkKey:
    """The ``WatermarkKey`` of ``--key`` / ``--message``.

    Raises:
        InputError: the secret is empty or the message does not fit.
    """
    from neuralmark.components.methods.base import InputError, WatermarkKey

    if not secret.strip():
        raise InputError("--key is empty; give the secret the image was (or will be) marked with")
    try:
        return WatermarkKey(secret=secret, message=message)
    except ValueError as error:
        raise InputError(str(error)) from None


def source(method: str | None, bundle: Path | None, model_uri: str | None) -> str:
    """What ``--method`` / ``--bundle`` / ``--model-uri`` name, as one loader source.

    Raises:
        InputError: both ``--bundle`` and ``--model-uri``, or a bundle that is no folder.
    """
    from neuralmark.components.errors import InputError

    if bundle is not None and model_uri is not None:
        raise InputError("give either --bundle or --model-uri, not both")
    if model_uri is not None:
        return model_uri
    if bundle is not None:
        if not bundle.is_dir():
            raise InputError(f"--bundle {bundle} is not a folder")
        return str(bundle)
    return method or DEFAULT_METHOD


def load_method(method: str | None, bundle: Path | None, model_uri: str | None, device: str,
                kind: str | None = None) -> WatermarkMethod:
    """Load the method to embed / verify with (``integrations.loading.load_method``).

    Order: ``--model-uri`` (MLflow registry), ``--bundle DIR``, else the shipped
    bundle of ``--method`` (default ``pgd_signer``). MLflow is imported only for a
    registry URI.

    Args:
        method: the method asked for (the loaded bundle must hold it), or ``None``.
        bundle: ``--bundle``.
        model_uri: ``--model-uri``.
        device: ``auto``, ``cpu`` or ``cuda``.
        kind: ``content`` or ``model`` when the command needs one kind.

    Raises:
        InputError: the sources conflict or name nothing loadable of that method/kind.
    """
    from neuralmark.integrations.loading import load_method as load

    return load(source(method, bundle, model_uri), device, expect=method, kind=kind)


# -- verdicts -------------------------------------------------------------------------------------


def fmt_p(p: float | None) -> str:
    """A p-value for people: ``n/a``, ``< 1e-300`` for an underflowed 0, else 3 digits."""
    if p is None:
        return "n/a"
    return "< 1e-300" if p == 0 else f"{p:.3g}"  # 0.0 is an underflow, not certainty


def json_default(value: Any) -> Any:
    """JSON for what methods may leave in ``Verdict.extra``: tensors, numpy values, paths."""
    if hasattr(value, "tolist"):  # torch tensors (any device) and numpy scalars/arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def exit_code(verdict: Verdict) -> int:
    """``EXIT_UNREADABLE``, ``EXIT_DETECTED`` or ``EXIT_NOT_DETECTED`` for one verdict."""
    from neuralmark.components.methods.base import Status

    if verdict.status == Status.UNREADABLE:
        return EXIT_UNREADABLE
    return EXIT_DETECTED if verdict.detected else EXIT_NOT_DETECTED


def folder_code(codes: list[int]) -> int:
    """0 if every verdict is detected, 2 if any input is unreadable, else 1."""
    if all(c == EXIT_DETECTED for c in codes):
        return EXIT_DETECTED
    return EXIT_UNREADABLE if EXIT_UNREADABLE in codes else EXIT_NOT_DETECTED


def verdict_line(path: Path, verdict: Verdict) -> str:
    """One rich-markup line: the path, detected / not detected / unreadable, the evidence."""
    from neuralmark.components.methods.base import Status

    where = escape(str(path))
    reason = f" — {escape(verdict.reason)}" if verdict.reason else ""
    if verdict.status == Status.UNREADABLE:
        return f"{where}: [bold red]unreadable[/]{reason}"
    parts = [f"p-value {fmt_p(verdict.p_value)}"]
    if verdict.bit_accuracy is not None:
        parts.append(f"bit accuracy {verdict.bit_accuracy:.3f}")
    if verdict.certified_radius is not None:
        parts.append(f"certified radius {verdict.certified_radius:.3g}")
    if verdict.detected:
        if verdict.payload is not None:
            parts.insert(0, f"payload {verdict.payload}")
        return f"{where}: [bold green]detected[/]  {'  '.join(parts)}{reason}"
    return f"{where}: [yellow]not detected[/]  {'  '.join(parts)}{reason}"


def emit_verdict(path: Path, verdict: Verdict, notes: list[str], as_json: bool,
                 console: Console) -> None:
    """Print a verdict: one JSON object on stdout (``--json``) or a line + notes on ``console``.

    The JSON never carries a payload for an image where the mark was not detected.
    """
    if as_json:
        record = {"path": str(path), **verdict.to_dict(), "notes": notes}
        if not verdict.detected:
            record["payload"] = None  # never a confident payload from an unmarked image
        typer.echo(json.dumps(record, default=json_default))
        return
    console.print(verdict_line(path, verdict))
    for note in notes:
        console.print(f"  [dim]note: {escape(note)}[/]")
