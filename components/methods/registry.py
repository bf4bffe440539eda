"""timm-style method registry: ``register(key)``, ``build(key, config)``, ``available()``.

Adding a method = one module under ``components/methods/`` that decorates its
class with ``@register("key")`` + one ``configs/<key>.yaml``. Nothing else changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from neuralmark.components.errors import describe_validation_error
from neuralmark.components.methods.base import InputError, MethodConfig, WatermarkMethod
from neuralmark.components.plugins import import_submodules

#: where shipped bundles live: ``pretrained/<method>/`` inside the installed package
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"

_REGISTRY: dict[str, type[WatermarkMethod]] = {}
_DISCOVERED = False


def register(key: str):
    """Class decorator adding a ``WatermarkMethod`` subclass under ``key``."""

    def deco(cls: type[WatermarkMethod]) -> type[WatermarkMethod]:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"method {key!r} is registered twice")
        cls.key = key
        _REGISTRY[key] = cls
        return cls

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import neuralmark.components.methods as pkg

    import_submodules(pkg, skip={"base", "registry"})
    _DISCOVERED = True


def _import_own_module(key: str) -> None:
    """Import ``components/methods/<key>`` (module or package) alone, if there is one.

    Loading one method then costs one method's imports, not every method's (the
    CLI's ``verify`` of one photo would otherwise import every method's dependencies).
    """
    if not key.isidentifier() or key.startswith("_") or key in ("base", "registry"):
        return
    name = f"{__package__}.{key}"
    if importlib.util.find_spec(name) is not None:
        importlib.import_module(name)


def available() -> list[str]:
    """Sorted keys of every registered method."""
    _discover()
    return sorted(_REGISTRY)


def method_class(key: str) -> type[WatermarkMethod]:
    """The class registered under ``key``.

    Imports only the method's own module when it is named after its key; every
    method module only when that one does not register ``key``.

    Raises:
        InputError: no method is registered under ``key`` (the message lists them).
    """
    if key not in _REGISTRY:
        _import_own_module(key)
    if key not in _REGISTRY:
        _discover()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise InputError(
            f"unknown method {key!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def is_method(key: str) -> bool:
    """Whether ``key`` names a registered method (imports as little as ``method_class``)."""
    try:
        method_class(key)
    except InputError:
        return False
    return True


def make_config(key: str, values: dict[str, Any] | None = None) -> MethodConfig:
    """Validate ``values`` against the method's config; errors name the bad field."""
    cls = method_class(key)
    data = {"method": key, **(values or {})}
    try:
        return cls.Config.model_validate(data)
    except ValidationError as err:
        raise InputError(f"invalid {key} config: {describe_validation_error(err)}") from err


def build(key: str, config: MethodConfig | dict[str, Any] | None = None) -> WatermarkMethod:
    """Instantiate method ``key`` from a config object or a plain dict."""
    cls = method_class(key)
    if not isinstance(config, MethodConfig):
        config = make_config(key, config)
    elif not isinstance(config, cls.Config):
        raise InputError(f"{key} needs a {cls.Config.__name__}, got {type(config).__name__}")
    return cls(config)


def load_bundle(directory: str | os.PathLike, device: str = "cpu") -> WatermarkMethod:
    """Load any bundle: its ``config.json`` names the method."""
    directory = Path(directory)
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise InputError(f"{directory} is not a neuralmark bundle: missing config.json")
    try:
        key = json.loads(cfg.read_text())["method"]
    except (json.JSONDecodeError, KeyError) as err:
        raise InputError(f"{cfg} is not a valid bundle config: {err}") from err
    return method_class(key).from_bundle(directory, device=device)


def is_bundle(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a bundle (``config.json`` + ``weights.safetensors``)."""
    directory = Path(directory)
    return (directory / "config.json").is_file() and (directory / "weights.safetensors").is_file()


def shipped_bundle(key: str) -> Path | None:
    """The folder of method ``key``'s shipped bundle, or ``None`` when none ships.

    Raises:
        InputError: ``key`` is not a registered method (the message lists them).
    """
    method_class(key)
    directory = PRETRAINED_DIR / key
    return directory if is_bundle(directory) else None
