"""Import every module of a package once (how registries find their entries)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_submodules(package: ModuleType, skip: set[str] = frozenset()) -> None:
    """Import ``package``'s direct submodules and subpackages, except ``skip`` and ``_private``
    ones (a method may be one module or a package whose ``__init__`` registers it)."""
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
