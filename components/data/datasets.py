"""Dataset recipes: how each seed dataset becomes ``data/<dataset>/<split>/…``.

A recipe = a reader (the publisher's format) + a ``transform`` that turns one
decoded source image into the output images of one row, keyed by *domain*:

* single-domain datasets (MIRFlickr, Metafaces, CIFAR-10, DIV2K): ``{"image": img}``;
* paired datasets (derain, debone): ``{"A": input, "B": target}`` — both files
  are written, and GX checks pair completeness.

``transform`` must be deterministic given ``(image, item, config)`` (seed any
randomness from ``item.item_id``), so the same input gives byte-identical
outputs. Register with ``@register_dataset("name")`` in the reader's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

from components.data.readers.base import DatasetReader, SourceItem
from components.errors import InputError
from components.plugins import import_submodules


class PrepareConfig(BaseModel):
    """Options common to every dataset (recipes may read extra keys from ``options``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = 400
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    limit: int | None = None
    seed: int = 0
    max_bad_fraction: float = 0.01
    workers: int | None = None
    options: dict[str, Any] = {}


Transform = Callable[[Image.Image, SourceItem, PrepareConfig], dict[str, Image.Image]]


@dataclass(frozen=True)
class DatasetRecipe:
    """How to prepare one dataset."""

    name: str
    reader: type[DatasetReader]
    transform: Transform
    domains: tuple[str, ...] = ("image",)
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


_RECIPES: dict[str, DatasetRecipe] = {}
_DISCOVERED = False


def register_dataset(name: str, *, reader: type[DatasetReader],
                     domains: tuple[str, ...] = ("image",), description: str = "",
                     defaults: dict[str, Any] | None = None):
    """Decorator on a transform function: registers ``DatasetRecipe(name, ...)``."""

    def deco(transform: Transform) -> Transform:
        if name in _RECIPES:
            raise ValueError(f"dataset {name!r} is registered twice")
        _RECIPES[name] = DatasetRecipe(name, reader, transform, domains, description,
                                       dict(defaults or {}))
        return transform

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import components.data.readers as pkg

    import_submodules(pkg, skip={"base"})
    _DISCOVERED = True


def available_datasets() -> list[str]:
    _discover()
    return sorted(_RECIPES)


def get_recipe(name: str) -> DatasetRecipe:
    _discover()
    try:
        return _RECIPES[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; available: "
                         f"{', '.join(sorted(_RECIPES))}") from None
