"""Strength sweeps per attack, as data: the robustness curves of the benchmark.

Every attack is built by the evaluation registry (``attacks.registry.build_attack``), so a
sweep is only a list of strengths; ``suite`` turns a choice of attacks into the ``Suite``
``run_suite`` takes (``none`` first: the unattacked reference). Each sweep contains the
attack's "no change" point (JPEG 95 is the mildest codec), so every curve starts where the
clean row is.

Example:
    >>> [name for name, _ in suite(["jpeg", "crop"], quick=True)]
    ['none', 'jpeg', 'crop']
"""

from __future__ import annotations

from collections.abc import Sequence

from neuralmark.components.attacks.registry import Suite, build_attack, canonical_name
from neuralmark.components.errors import InputError

#: the full sweeps (issue #16): strengths in the attack's own unit
SWEEPS: dict[str, list[float]] = {
    "jpeg": [30, 40, 50, 60, 70, 80, 90, 95],          # quality
    "crop": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],            # kept fraction of each side
    "rotate": [-15, -10, -5, -2, 0, 2, 5, 10, 15],     # degrees, counter-clockwise
    "resize": [0.25, 0.4, 0.5, 0.75, 1.0],             # scale of each side
    "blur": [0, 0.5, 1.0, 1.5, 2.0, 3.0],              # Gaussian sigma, px
    "noise": [0, 0.01, 0.02, 0.04, 0.08],              # std of additive noise on [0, 1]
    "brightness": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0],    # factor
    "contrast": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0],      # factor
}

#: ``--quick``: three points per attack, the mild end, the middle and the hard end
QUICK_SWEEPS: dict[str, list[float]] = {
    "jpeg": [30, 60, 95],
    "crop": [0.5, 0.75, 1.0],
    "rotate": [-15, 0, 15],
    "resize": [0.25, 0.5, 1.0],
    "blur": [0, 1.5, 3.0],
    "noise": [0, 0.04, 0.08],
    "brightness": [0.5, 1.0, 2.0],
    "contrast": [0.5, 1.0, 2.0],
}

#: attacks that keep the image size (the removal attack's candidates: its PSNR is defined)
SIZE_PRESERVING = ("jpeg", "rotate", "blur", "noise", "brightness", "contrast")


def sweep_attacks() -> list[str]:
    """Names of the swept attacks, in report order."""
    return list(SWEEPS)


def sweeps(quick: bool = False) -> dict[str, list[float]]:
    """The sweep table (a copy): ``QUICK_SWEEPS`` if ``quick`` else ``SWEEPS``."""
    table = QUICK_SWEEPS if quick else SWEEPS
    return {name: list(strengths) for name, strengths in table.items()}


def suite(attacks: Sequence[str] | None = None, quick: bool = False) -> Suite:
    """The ``Suite`` of the chosen attacks: ``none`` then each attack's sweep.

    Args:
        attacks: names or registry aliases (``rotation``, ``gaussian_blur``); ``None``: all.
        quick: the three-point sweeps.

    Raises:
        InputError: an attack that is unknown or has no sweep (the message lists them).
    """
    table = sweeps(quick)
    chosen = list(table) if attacks is None else []
    for name in attacks or ():
        try:
            key = canonical_name(name)
        except ValueError as err:
            raise InputError(str(err)) from None
        if key not in table:
            raise InputError(f"attack {name!r} has no strength sweep; swept attacks: "
                             f"{', '.join(table)}")
        if key not in chosen:
            chosen.append(key)
    if not chosen:
        raise InputError(f"name at least one attack to sweep: {', '.join(table)}")
    for key in chosen:  # a strength the registry refuses is a bug here, found at once
        for strength in table[key]:
            build_attack(key, strength)
    return [("none", [None])] + [(key, table[key]) for key in chosen]
