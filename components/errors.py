"""Errors shared across ``components`` (torch-free, so data workers stay light)."""

from __future__ import annotations


class InputError(ValueError):
    """A bad input (image, key, config, dataset) with a message naming the problem."""
