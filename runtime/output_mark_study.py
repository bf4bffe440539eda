"""The set-up the output_mark study scripts share (issue #19): a profile's derain pairs,
a bundle and its key.

``scripts/output_mark_seed_matrix.py``, ``output_mark_surrogate_diagnosis.py`` and
``output_mark_bundle_report.py`` start from the same place: the profile's output_mark
settings (a name or a profile YAML, :func:`.settings.resolve_profile`), its sample dataset
built as the pipeline's ``make_pairs`` step builds it, the derain pairs synthesised on it
(split by photo), and, for the two that study a trained model, a bundle and the key whose
logo it hides (default: the bundle's own ``logo_secret``).

Shapes: pairs are ``(A, B)``, N×3×S×S float32 in [0, 1] at the profile's data size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuralmark.components.data import pairs
from neuralmark.components.errors import InputError
from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark.logo import key_fingerprint
from neuralmark.components.methods.output_mark.method import OutputMark
from neuralmark.runtime.settings import CODE_ROOT, RunSettings, resolve_profile


@dataclass(frozen=True)
class DerainStudy:
    """A profile's output_mark settings and its derain pairs.

    Attributes:
        settings: the resolved settings (``config`` has ``task: derain``).
        manifest: the built sample dataset's manifest.
        train: ``(A, B)`` training pairs.
        groups: the source photo of each training pair.
        test: ``(A, B)`` test pairs.
    """

    settings: RunSettings
    manifest: Path
    train: tuple[torch.Tensor, torch.Tensor]
    groups: list[str]
    test: tuple[torch.Tensor, torch.Tensor]


def derain_study(profile: str = "tiny", config: Mapping[str, Any] | None = None
                 ) -> DerainStudy:
    """The profile's settings (``config`` overrides, ``task: derain``, no DVC versioning of
    the sample data) and its derain pairs.

    Raises:
        InputError: an unknown profile or a bad override (named).
    """
    settings = resolve_profile("output_mark", profile,
                               config={**dict(config or {}), "task": "derain"},
                               data={"version_with_dvc": False})
    manifest = Path(settings.data.build(CODE_ROOT))
    train, groups, test = pairs.synthesised_pairs(manifest, "derain", settings.data.size)
    return DerainStudy(settings, manifest, train, list(groups), test)


def bundle_and_key(bundle: str | os.PathLike, key: str | None = None
                   ) -> tuple[OutputMark, WatermarkKey]:
    """An output_mark bundle and the key to read it with (default: its ``logo_secret``, only
    when that is the key the bundle was trained for).

    A bundle's ``config.logo_secret`` is the profile's default, not necessarily its key (the
    shipped bundle is trained for ``neuralmark-demo`` with ``logo_secret`` ``neuralmark-eval``):
    the bundle's stored fingerprint decides, so a study never reads a model with a key it was
    not trained for without being told.

    Raises:
        InputError: the bundle is not an output_mark one (or what ``load_bundle`` raises), or
            no ``key`` is given and ``logo_secret`` is not the bundle's key.
    """
    method = load_bundle(bundle)
    if not isinstance(method, OutputMark):
        raise InputError(f"{bundle}: an output_mark bundle is needed, got {method.key!r}")
    if key is None:
        if key_fingerprint(method.config.logo_secret) != method.fingerprint:
            raise InputError(
                f"{bundle}: was trained for another key than its config's logo_secret "
                f"({method.config.logo_secret!r}; the bundle's key fingerprint is "
                f"{method.fingerprint}); pass the key it was made with (--key)")
        key = method.config.logo_secret
    return method, WatermarkKey(key)


__all__ = ["DerainStudy", "bundle_and_key", "derain_study"]
