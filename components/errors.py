"""Errors shared across ``components`` (torch-free, so data workers stay light)."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """A bad input (image, key, config, dataset) with a message naming the problem."""


def describe_validation_error(err: Any, prefix: str = "") -> str:
    """One line naming every problem of a pydantic ``ValidationError``.

    ``"size: Input should be greater than 0; evaluation.limit: Extra inputs are not
    permitted"`` — each field path (after ``prefix``) with its message, so a typo in a
    YAML file is an error that names the field.

    Args:
        err: a ``pydantic.ValidationError`` (anything with ``errors()``).
        prefix: put before every field path (e.g. ``"policy."``).
    """
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                     for e in err.errors())
