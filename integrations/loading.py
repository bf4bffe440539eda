"""One loader for a method from any source: a shipped name, a bundle folder or a registry URI.

``load_method("pgd_signer")`` reads the shipped bundle (``components/pretrained/<name>/``),
``load_method("runs/bundle")`` a bundle folder, and
``load_method("models:/neuralmark-pgd_signer@champion")`` a registered model version
(MLflow; ``models:/<name>/<version>``, ``models:/<logged model id>`` and ``runs:/`` URIs too).
MLflow is imported only for a registry URI, so loading a shipped or local bundle needs no
MLOps package (the content commands of the CLI start without one).

A registry URI is read from the MLflow store MLflow is pointed at: ``MLFLOW_TRACKING_URI``
(and ``MLFLOW_REGISTRY_URI`` when set), else ``./mlflow.db`` of the working directory, which
is the project's store when run from the project root. The loader only reads that setting.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

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
#: the artifact name under which a logged neuralmark model keeps its bundle
BUNDLE_ARTIFACT = "bundle"
_SQLITE = "sqlite:///"


def is_registry_uri(source: str | os.PathLike) -> bool:
    """Whether ``source`` is an MLflow URI (``models:/…``, ``runs:/…``)."""
    return str(source).startswith(REGISTRY_SCHEMES)


@contextlib.contextmanager
def quiet_artifact_transfers() -> Iterator[None]:
    """No MLflow artifact progress bar inside the block (one bar line per file otherwise).

    Sets MLflow's ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` to false for the block and
    removes it afterwards; a value the user set is left as it is and obeyed.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR

    if BAR.defined:
        yield
        return
    BAR.set(False)
    try:
        yield
    finally:
        BAR.unset()


def _store_of(uri: str) -> str:
    """The MLflow store ``uri`` is looked up in: the registry for ``models:/<name>…``."""
    import mlflow

    return mlflow.get_registry_uri() if uri.startswith("models:/") else mlflow.get_tracking_uri()


def _require_store(uri: str, store: str) -> None:
    """Refuse a SQLite store that does not exist (MLflow would create an empty one)."""
    if store.startswith(_SQLITE) and not Path(unquote(store[len(_SQLITE):])).is_file():
        raise InputError(f"cannot fetch {uri}: no MLflow store at {store}; run from the project "
                         "root (where `make demo` made mlflow.db) or set MLFLOW_TRACKING_URI, "
                         "e.g. sqlite:////abs/path/mlflow.db")


def _logged_bundle(model_dir: Path) -> Path | None:
    """Where a logged model (its ``MLmodel``) keeps artifact ``bundle``; ``None`` if nowhere.

    MLflow copies an artifact folder under its own name (``artifacts/<folder name>``), so
    the path is read from the ``MLmodel`` file, not assumed.
    """
    from mlflow.models import Model

    pyfunc = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    entry = (pyfunc.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}
    return model_dir / entry["path"] if entry.get("path") else None


def _from_registry(uri: str, device: str) -> WatermarkMethod:
    """Download a logged or registered model (or a run's bundle folder) and load its bundle."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as err:  # pragma: no cover - mlflow is a core dependency
        raise InputError(f"{uri} needs mlflow, which cannot be imported: {err}") from None

    store = _store_of(uri)
    _require_store(uri, store)
    with quiet_artifact_transfers(), tempfile.TemporaryDirectory(prefix="neuralmark-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError) as err:
            why = err.message if isinstance(err, MlflowException) else str(err)
            raise InputError(f"cannot fetch {uri} from {store}: {why}") from None
        if (local / "MLmodel").is_file():
            bundle = _logged_bundle(local)
            if bundle is None or not is_bundle(bundle):
                raise InputError(f"{uri} is an MLflow model without a neuralmark bundle (its "
                                 f"MLmodel names no {BUNDLE_ARTIFACT!r} artifact holding "
                                 "config.json + weights.safetensors)")
        else:
            bundle = next((d for d in (local / BUNDLE_ARTIFACT, local) if is_bundle(d)), None)
            if bundle is None:
                raise InputError(f"{uri} holds no neuralmark bundle (looked for config.json + "
                                 f"weights.safetensors in {BUNDLE_ARTIFACT}/ and the top folder)")
        return load_bundle(bundle, device=device)


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
