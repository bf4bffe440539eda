"""Evaluation attacks by name, MLflow-safe labels, and the standard suites.

A *suite* is a list of ``(attack name, strengths)``; ``None`` as a strength
means the attack's default (or "no knob" for ``none`` and ``combo``).

Example:
    >>> attack = build_attack("jpeg", 50)
    >>> label("jpeg", 50), label("resize", 0.5), label("combo", None)
    ('jpeg_50', 'resize_0.5', 'combo')
"""

from __future__ import annotations

import re
import zlib

from neuralmark.components.attacks.base import ImageAttack
from neuralmark.components.attacks.image import (
    JPEG,
    Brightness,
    Combo,
    Contrast,
    Crop,
    GaussianBlur,
    GaussianNoise,
    Identity,
    Resize,
    Rotate,
    WebP,
)

Suite = list[tuple[str, list[float | None]]]

_ATTACKS: dict[str, type[ImageAttack]] = {
    cls.name: cls
    for cls in (Identity, JPEG, WebP, Resize, Crop, Rotate, GaussianBlur, GaussianNoise,
                Brightness, Contrast, Combo)
}
_ALIASES = {
    "identity": "none",
    "gaussian_blur": "blur",
    "gaussian_noise": "noise",
    "scale": "resize",
    "rotation": "rotate",
}
#: attacks without a strength knob
_NO_STRENGTH = {"none", "combo"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

BENCHMARK_SUITE: Suite = [
    ("none", [None]),
    ("jpeg", [90, 75, 50]),
    ("resize", [0.5]),
    ("crop", [0.9]),
    ("rotate", [5]),
    ("blur", [1.0]),
    ("noise", [0.02]),
    ("brightness", [1.3]),
    ("contrast", [1.3]),
    ("combo", [None]),
]


def available_attacks() -> list[str]:
    """Sorted registry names of all evaluation attacks."""
    return sorted(_ATTACKS)


def canonical_name(name: str) -> str:
    """Resolve aliases (``identity`` → ``none``); raise ``ValueError`` listing valid names."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in _ATTACKS:
        raise ValueError(
            f"unknown attack {name!r}; valid names: {', '.join(available_attacks())}"
            f" (aliases: {', '.join(sorted(_ALIASES))})"
        )
    return key


def build_attack(name: str, strength: float | None = None) -> ImageAttack:
    """Instantiate an evaluation attack.

    Args:
        name: registry name or alias (see ``available_attacks()``).
        strength: the attack's knob (JPEG/WebP quality, resize scale, crop
            fraction, rotation degrees, blur sigma, noise std, brightness or
            contrast factor); ``None`` = the attack's default. ``none`` and
            ``combo`` take no strength.

    Raises:
        ValueError: unknown name, or a strength out of the attack's range.
    """
    key = canonical_name(name)
    cls = _ATTACKS[key]
    if key in _NO_STRENGTH:
        if strength is not None:
            raise ValueError(f"attack {key!r} takes no strength, got {strength!r}")
        return cls()
    return cls() if strength is None else cls(float(strength))


def _format_strength(strength: float) -> str:
    value = float(strength)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def label(name: str, strength: float | None) -> str:
    """MLflow-safe label of one (attack, strength): only ``[A-Za-z0-9_.-]``.

    ``jpeg_75``, ``resize_0.5``, ``rotate_5``, ``noise_0.02``, ``none``, ``combo``.
    A ``None`` strength is the attack's default, so ``label("jpeg", None)`` is ``jpeg_75``.
    """
    attack = build_attack(name, strength)
    key = canonical_name(name)
    text = key if attack.strength is None else f"{key}_{_format_strength(attack.strength)}"
    return _UNSAFE.sub("_", text)


def attack_seed(seed: int, attack_label: str) -> int:
    """Seed of an attack's random draw per (run seed, attack label), so a label replays the
    same draw in any suite order (image attacks in ``components/evaluation.py``, model
    attacks in ``model_registry``, and scripts that must reproduce their draws)."""
    return (seed * 1_000_003 + zlib.crc32(attack_label.encode())) % (2**63)


def curve_suite() -> Suite:
    """Wide strength grids for robustness curves (metric vs strength, one panel per attack)."""
    return [
        ("none", [None]),
        ("jpeg", [30, 40, 50, 60, 70, 80, 90, 100]),
        ("webp", [30, 50, 70, 90]),
        ("resize", [0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5]),
        ("crop", [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        ("rotate", [0, 2, 5, 10, 15, 20, 25, 30]),
        ("blur", [0.5, 1.0, 1.5, 2.0, 3.0]),
        ("noise", [0.0, 0.01, 0.02, 0.04, 0.08]),
        ("brightness", [0.5, 0.75, 1.25, 1.5, 2.0]),
        ("contrast", [0.5, 0.75, 1.25, 1.5, 2.0]),
    ]
