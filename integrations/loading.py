"""One loader for a method from any source: a shipped name, a bundle folder or a registry URI.

``load_method("pgd_signer")`` reads the shipped bundle (``components/pretrained/<name>/``),
``load_method("runs/bundle")`` a bundle folder, and
``load_method("models:/neuralmark-pgd_signer@champion")`` a registered model version
(MLflow; ``models:/<name>/<version>`` and ``runs:/`` URIs too). MLflow is imported only for
a registry URI, so loading a shipped or local bundle needs no MLOps package (the content
commands of the CLI start without one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import WatermarkMethod, pick_device
from neuralmark.components.methods.registry import (
    available,
    is_bundle,
    is_method,
    load_bundle,
    shipped_bundle,
)

#: URI schemes that name an MLflow artifact rather than a folder
REGISTRY_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
#: where ``log_model`` keeps the bundle inside a logged model (``artifacts={"bundle": dir}``)
LOGGED_BUNDLE = Path("artifacts") / "bundle"


def is_registry_uri(source: str | os.PathLike) -> bool:
    """Whether ``source`` is an MLflow URI (``models:/…``, ``runs:/…``)."""
    return str(source).startswith(REGISTRY_SCHEMES)


def _from_registry(uri: str, device: str) -> WatermarkMethod:
    """Download a logged or registered model and load the bundle it carries."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as err:  # pragma: no cover - mlflow is a core dependency
        raise InputError(f"{uri} needs mlflow, which cannot be imported: {err}") from None

    with tempfile.TemporaryDirectory(prefix="neuralmark-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as err:
            raise InputError(f"cannot fetch {uri}: {err.message}") from None
        for candidate in (local / LOGGED_BUNDLE, local / "bundle", local):
            if is_bundle(candidate):
                return load_bundle(candidate, device=device)
        raise InputError(f"{uri} holds no neuralmark bundle (looked in {LOGGED_BUNDLE}/, "
                         "bundle/ and the top folder for config.json + weights.safetensors)")


def load_method(source: str | os.PathLike, device: str = "auto", *,
                expect: str | None = None, kind: str | None = None) -> WatermarkMethod:
    """Load a method from a shipped name, a bundle folder or a registry URI.

    Args:
        source: a registered method's name (its shipped bundle), a bundle folder, or an
            MLflow URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/…``).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        expect: the method the caller needs (e.g. ``output_mark``); another one is an error.
        kind: ``content`` or ``model``; a method of the other kind is an error.

    Returns:
        The method, on ``device``, ready to ``embed`` / ``verify``.

    Raises:
        InputError: the source names nothing loadable, holds no bundle, or holds a bundle
            of another method or kind than asked for. The message names the source.
    """
    dev = str(pick_device(device))
    text = str(source)
    if is_registry_uri(text):
        method = _from_registry(text, dev)
    elif Path(text).is_dir():
        method = load_bundle(text, device=dev)
    elif is_method(text):
        directory = shipped_bundle(text)
        if directory is None:
            raise InputError(f"no shipped weights for {text}; train them with "
                             f"`neuralmark train {text}` or give a bundle folder or a "
                             "models:/ URI")
        method = load_bundle(directory, device=dev)
    elif Path(text).exists():
        raise InputError(f"{text} is a file, not a bundle folder")
    else:
        raise InputError(f"{text!r} is neither a bundle folder, a models:/ URI nor a method "
                         f"with shipped weights ({', '.join(available())})")
    if expect is not None and method.key != expect:
        raise InputError(f"{text} holds a {method.key} bundle, not {expect}")
    if kind is not None and method.kind != kind:
        raise InputError(f"{method.key} is a {method.kind} method; this needs a {kind} method")
    return method
