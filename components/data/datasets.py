"""Dataset recipes: how each seed dataset becomes ``data/<dataset>/<split>/…``.

A recipe = a reader (the publisher's format) + a ``transform`` that turns one
decoded source image into the output images of one row, keyed by *domain*:

* single-domain datasets (MIRFlickr, Metafaces, CIFAR-10, DIV2K): ``{"image": img}``;
* paired datasets (derain, debone): ``{"A": input, "B": target}`` — both files
  are written, and GX checks pair completeness.

``transform`` must be deterministic given ``(image, item, config)`` (seed any
randomness from ``item.item_id``), so the same input gives byte-identical
outputs. Register with ``@register_dataset("name")`` in the reader's module.

A recipe also *declares* what its output must look like — the facts the
validation suite checks, so no validator keeps a per-dataset table:
``domains`` (more than one = paired, and every pair must be complete),
``fixed_size`` (the output side whatever ``config.size`` says, e.g. CIFAR-10's
32; otherwise every image is ``config.size``²), ``modes``, ``label_range`` and
``extra_values`` (allowed values of an ``extra`` field, e.g. ChestX-ray8's
``target_kind``). ``recipe.expectations(config)`` resolves them for one
prepare. ``options`` names the recipe's own option keys, so a typo in
``config.options`` is an error that names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

from neuralmark.components.data.readers.base import DatasetReader, SourceItem
from neuralmark.components.errors import InputError
from neuralmark.components.plugins import import_submodules


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
class RecipeExpectations:
    """What every row of one prepared dataset must satisfy (checked by the GX suite).

    Attributes:
        dataset: recipe name.
        domains: the recipe's domains; more than one means every pair must have
            one row per domain.
        size: side of every output image (``size×size``).
        modes: accepted PIL modes of the output files.
        label_range: inclusive ``(low, high)`` of the labels, or ``None`` when
            the dataset has no labels.
        extra_values: ``{extra field: allowed values}``; every row must carry
            the field with one of them.
    """

    dataset: str
    domains: tuple[str, ...]
    size: int
    modes: tuple[str, ...] = ("RGB",)
    label_range: tuple[int, int] | None = None
    extra_values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        """More than one domain: rows come in complete pairs."""
        return len(self.domains) > 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a step input/output)."""
        return {"dataset": self.dataset, "domains": list(self.domains), "size": self.size,
                "modes": list(self.modes),
                "label_range": list(self.label_range) if self.label_range else None,
                "extra_values": {k: list(v) for k, v in self.extra_values.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeExpectations:
        """Inverse of ``to_dict``."""
        label_range = data.get("label_range")
        return cls(dataset=data["dataset"], domains=tuple(data["domains"]),
                   size=int(data["size"]), modes=tuple(data.get("modes", ("RGB",))),
                   label_range=(int(label_range[0]), int(label_range[1]))
                   if label_range else None,
                   extra_values={k: tuple(v) for k, v in
                                 (data.get("extra_values") or {}).items()})


@dataclass(frozen=True)
class DatasetRecipe:
    """How to prepare one dataset, and what its output must look like.

    Attributes:
        name: recipe name (``neuralmark data prepare NAME``).
        reader: the publisher-format reader.
        transform: one decoded image → ``{domain: image}``.
        domains: output domains (``("image",)`` or ``("A", "B")``).
        description: one line for ``--help`` and reports.
        defaults: recipe defaults for ``PrepareConfig`` fields and options.
        options: option keys the recipe reads from ``config.options``.
        fixed_size: output side regardless of ``config.size`` (``None``: ``config.size``).
        modes: PIL modes of the output files.
        label_range: inclusive label range, for datasets with labels.
        extra_values: allowed values of ``extra`` fields every row carries.
    """

    name: str
    reader: type[DatasetReader]
    transform: Transform
    domains: tuple[str, ...] = ("image",)
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    fixed_size: int | None = None
    modes: tuple[str, ...] = ("RGB",)
    label_range: tuple[int, int] | None = None
    extra_values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def expectations(self, config: PrepareConfig) -> RecipeExpectations:
        """The facts the prepared output must satisfy under ``config`` (effective config).

        Args:
            config: the effective ``PrepareConfig`` of the prepare (recipe defaults applied).

        Returns:
            The recipe's ``RecipeExpectations``; ``size`` is ``fixed_size`` or ``config.size``.
        """
        return RecipeExpectations(
            dataset=self.name, domains=self.domains,
            size=self.fixed_size if self.fixed_size is not None else config.size,
            modes=self.modes, label_range=self.label_range,
            extra_values=dict(self.extra_values))


_RECIPES: dict[str, DatasetRecipe] = {}
_DISCOVERED = False


def register_dataset(name: str, *, reader: type[DatasetReader],
                     domains: tuple[str, ...] = ("image",), description: str = "",
                     defaults: dict[str, Any] | None = None, options: tuple[str, ...] = (),
                     fixed_size: int | None = None, modes: tuple[str, ...] = ("RGB",),
                     label_range: tuple[int, int] | None = None,
                     extra_values: dict[str, tuple[str, ...]] | None = None):
    """Decorator on a transform function: registers ``DatasetRecipe(name, ...)``.

    Keyword arguments are the ``DatasetRecipe`` fields of the same names.
    """

    def deco(transform: Transform) -> Transform:
        if name in _RECIPES:
            raise ValueError(f"dataset {name!r} is registered twice")
        unknown = sorted(k for k in (defaults or {})
                         if k not in PrepareConfig.model_fields and k not in options)
        if unknown:
            raise ValueError(f"dataset {name!r}: defaults {unknown} are neither PrepareConfig "
                             f"fields nor declared options {list(options)}")
        _RECIPES[name] = DatasetRecipe(name, reader, transform, domains, description,
                                       dict(defaults or {}), tuple(options), fixed_size,
                                       tuple(modes), label_range, dict(extra_values or {}))
        return transform

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import neuralmark.components.data.readers as pkg

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
