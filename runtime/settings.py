"""Run settings: method defaults ← profile ← overrides, validated before any step runs.

A profile (``configs/profiles/<profile>.yaml``) has one section per method, each
with up to four parts::

    pgd_signer:
      method:     {working_size: 128, rounds: 6, ...}   # the method's config fields
      data:       {root: data/sample-tiny, size: 128, ...}
      evaluation: {limit: 8, fpr_keys: 2000, ...}
      policy:     {min_psnr: 38, min_bit_accuracy: {...}, max_fpr: 1.0e-3}

``resolve`` merges the method's own defaults, the profile section and the
overrides (the pipeline's ``config`` / ``data`` / ``evaluation`` / ``policy``
parameters, from YAML or code) — nested mappings merge key by key, anything
else is replaced — and validates every part against a model that forbids
unknown fields, so a typo anywhere is an ``InputError`` naming the field:

- ``method`` → the method's frozen config (``registry.make_config``),
- ``data`` → ``DataSettings`` (which dataset — sample, procedural classes or a prepared
  one — where to build it, whether to version it),
- ``evaluation`` → ``EvaluationSettings``,
- ``policy`` → ``neuralmark.components.gate.GatePolicy`` (its attack labels are checked
  against the evaluated suite).

No ZenML or MLflow import here: the CLI and tests validate configs without a stack.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from neuralmark.components.data.labelled import ProceduralClassesConfig
from neuralmark.components.data.sample import SampleDataConfig
from neuralmark.components.errors import describe_validation_error
from neuralmark.components.gate import MEAN_ATTACKED, GatePolicy
from neuralmark.components.methods.base import InputError, MethodConfig
from neuralmark.components.methods.registry import make_config, method_class
from neuralmark.components.robustness import EvaluationSettings

CODE_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = CODE_ROOT / "configs"
PROFILES_DIR = CONFIGS_DIR / "profiles"
SECTIONS = ("method", "data", "evaluation", "policy")
#: pipeline parameter carrying each section's overrides
OVERRIDE_PARAMETERS = {"config": "method", "data": "data", "evaluation": "evaluation",
                       "policy": "policy"}


class DataSettings(SampleDataConfig):
    """Which dataset a run reads, where it lives, and whether to version it.

    ``dataset`` picks the source (the ``SampleDataConfig`` fields size it where it is built):

    - ``sample``: the offline sample set (photo crops + procedural images, no labels),
      built under ``root``.
    - ``procedural_classes``: ten labelled procedural classes (``size``,
      ``images_per_class``, ``seed``, ``fractions``), built under ``root``.
    - ``prepared``: a dataset the data-preparation pipeline prepared (``neuralmark data
      prepare cifar10``): ``prepared`` names its ``manifest.csv`` (or folder); its labels
      are handed to the method, and a ``val`` split is carved out of ``train``
      (``val_fraction``) when the publisher has none. Nothing is built; ``root`` and the
      sample fields are unused.

    Attributes:
        dataset: the source (above).
        root: dataset folder; a relative path is taken from the project root.
        prepared: the prepared dataset's manifest (``dataset: prepared``); relative paths
            hang off the project root.
        images_per_class: images per class of ``procedural_classes`` (all splits).
        val_fraction: share of a prepared train split held out as val when there is none.
        version_with_dvc: ``dvc add`` (+ ``dvc push``) ``dvc_target`` after building.
        dvc_target: folder tracked by DVC, relative to the project root.
        dvc_push: also push to the default DVC remote.
    """

    dataset: Literal["sample", "procedural_classes", "prepared"] = "sample"
    root: str = "data/sample"
    prepared: str | None = None
    images_per_class: int = Field(200, ge=3)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    version_with_dvc: bool = True
    dvc_target: str = "data"
    dvc_push: bool = True

    @model_validator(mode="after")
    def _prepared_iff_named(self) -> DataSettings:
        if self.dataset == "prepared" and not self.prepared:
            raise ValueError("dataset 'prepared' needs `prepared`: the prepared manifest, "
                             "e.g. data/cifar10/manifest.csv")
        if self.dataset != "prepared" and self.prepared:
            raise ValueError(f"`prepared` is set but dataset is {self.dataset!r}; set "
                             "dataset: prepared to read it")
        return self

    def sample_config(self) -> SampleDataConfig:
        """The ``SampleDataConfig`` part (what ``build_sample_dataset`` takes)."""
        return SampleDataConfig(**self.model_dump(include=set(SampleDataConfig.model_fields)))

    def classes_config(self) -> ProceduralClassesConfig:
        """The ``ProceduralClassesConfig`` of ``dataset: procedural_classes``."""
        return ProceduralClassesConfig(size=self.size, images_per_class=self.images_per_class,
                                       seed=self.seed, fractions=self.fractions)

    def build(self, project_root: str | Path) -> Path:
        """Build (or reuse) the dataset and return the manifest a run reads.

        ``sample`` / ``procedural_classes``: built under ``root`` (idempotent);
        ``prepared``: the train/val/test view of the prepared manifest
        (``labelled.training_view``).
        """
        from neuralmark.components.data.labelled import build_procedural_classes, training_view
        from neuralmark.components.data.sample import build_sample_dataset

        if self.dataset == "prepared":
            path = Path(str(self.prepared)).expanduser()
            path = path if path.is_absolute() else Path(project_root).resolve() / path
            return training_view(path, self.val_fraction, self.seed)
        root = self.resolved_root(project_root)
        if self.dataset == "procedural_classes":
            return build_procedural_classes(root, self.classes_config())
        return build_sample_dataset(root, self.sample_config())

    def resolved_root(self, project_root: str | Path) -> Path:
        """``root`` as an absolute path (relative roots hang off ``project_root``)."""
        root = Path(self.root).expanduser()
        return root if root.is_absolute() else Path(project_root).resolve() / root


@dataclass(frozen=True)
class RunSettings:
    """Everything a training or evaluation run needs, validated.

    Attributes:
        method: registry key of the method.
        profile: profile name.
        config: the method's config (defaults ← profile ← overrides).
        data: dataset settings.
        evaluation: evaluation settings.
        policy: the gate's floors.
    """

    method: str
    profile: str
    config: MethodConfig
    data: DataSettings
    evaluation: EvaluationSettings
    policy: GatePolicy

    @property
    def model_name(self) -> str:
        """Registered model name: ``neuralmark-<method>[-<variant>]``."""
        return model_name(self.method, getattr(self.config, "variant", None))

    def step_parameters(self) -> dict[str, dict[str, Any]]:
        """JSON dicts handed to the steps (each re-validates its own part)."""
        return {
            "config": self.config.model_dump(mode="json", exclude={"method"}),
            "data": self.data.model_dump(mode="json"),
            "evaluation": self.evaluation.model_dump(mode="json"),
            "policy": self.policy.model_dump(mode="json"),
        }


def model_name(method: str, variant: str | None = None) -> str:
    """Registered model name: ``neuralmark-<method>``, or ``neuralmark-<method>-<variant>``.

    A method whose config has a ``variant`` field (``anti_forward``: baseline,
    rs, rs_aug) registers each variant as its own model, so each has its own
    ``champion``: a service deploying the smoothed scanner never gets the plain
    one because the plain one passed its (different) gate.
    """
    return f"neuralmark-{method}" + (f"-{variant}" if variant else "")


def parse_overrides(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """``["field=value", …]`` (a command's repeated ``--set``) → ``{field: value}``.

    Each value is read as JSON (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``{"a": 1}``), else
    kept as the string it is.

    Raises:
        InputError: an item has no ``=`` or no field name (named, with ``option``).
    """
    out: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise InputError(f"{option} {item!r}: write FIELD=VALUE")
        try:
            out[field.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[field.strip()] = value
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` updated by ``override``: nested mappings merge, anything else is replaced.

    Neither input is modified.
    """
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _validate(model: type[BaseModel], values: Mapping[str, Any], section: str) -> Any:
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        raise InputError(f"invalid {section} config: "
                         f"{describe_validation_error(err, f'{section}.')}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"{where} must be a mapping, got {type(value).__name__}: {value!r}")
    return dict(value)


def available_profiles(profiles_dir: Path | None = None) -> list[str]:
    """Names of the profile files in ``configs/profiles/``."""
    return sorted(p.stem for p in (profiles_dir or PROFILES_DIR).glob("*.yaml"))


def load_profile(profile: str, profiles_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Read ``<profiles_dir>/<profile>.yaml``: method key → sections.

    Raises:
        InputError: no such profile, not valid YAML, or an unknown section name.
    """
    path = (profiles_dir or PROFILES_DIR) / f"{profile}.yaml"
    if not path.is_file():
        raise InputError(f"unknown profile {profile!r}; available: "
                         f"{', '.join(available_profiles(profiles_dir)) or 'none'}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path} is not valid YAML: {err}") from None
    raw = _mapping(raw, str(path))
    out: dict[str, dict[str, Any]] = {}
    for method, sections in raw.items():
        sections = _mapping(sections, f"{path.name}: {method}")
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise InputError(f"{path.name}: {method}: unknown section(s) {unknown}; "
                             f"expected {list(SECTIONS)}")
        out[str(method)] = {s: _mapping(sections.get(s), f"{path.name}: {method}.{s}")
                            for s in SECTIONS}
    return out


def _check_policy_labels(policy: GatePolicy, evaluation: EvaluationSettings) -> None:
    """Every floor must name an evaluated attack label (or ``mean_attacked``)."""
    labels = set(evaluation.labels())
    for field in ("min_bit_accuracy", "min_detection_rate"):
        for lab in getattr(policy, field):
            if lab != MEAN_ATTACKED and lab not in labels:
                raise InputError(
                    f"invalid policy config: policy.{field}.{lab}: not an evaluated attack "
                    f"label; evaluated: {', '.join(sorted(labels))}, or {MEAN_ATTACKED}")


def resolve(method: str, profile: str = "tiny", *, config: Mapping[str, Any] | None = None,
            data: Mapping[str, Any] | None = None,
            evaluation: Mapping[str, Any] | None = None,
            policy: Mapping[str, Any] | None = None,
            profiles_dir: Path | None = None) -> RunSettings:
    """Merge defaults ← profile ← overrides and validate every part.

    Args:
        method: registry key.
        profile: profile name (``tiny``, ``full``).
        config: overrides of the method config.
        data: overrides of the data settings.
        evaluation: overrides of the evaluation settings.
        policy: overrides of the gate policy.
        profiles_dir: where profile files live (default ``configs/profiles``).

    Returns:
        The validated settings.

    Raises:
        InputError: unknown method or profile, no section for the method in the
            profile, or a bad field anywhere (the message names it).
    """
    method_class(method)  # unknown method -> InputError listing the available ones
    sections = load_profile(profile, profiles_dir).get(method)
    if sections is None:
        raise InputError(f"profile {profile!r} has no section for method {method!r}; add "
                         f"`{method}:` with {', '.join(SECTIONS)} to "
                         f"{(profiles_dir or PROFILES_DIR) / f'{profile}.yaml'}")
    merged = {
        "method": deep_merge(sections["method"], _mapping(config, "config")),
        "data": deep_merge(sections["data"], _mapping(data, "data")),
        "evaluation": deep_merge(sections["evaluation"], _mapping(evaluation, "evaluation")),
        "policy": deep_merge(sections["policy"], _mapping(policy, "policy")),
    }
    if "method" in merged["method"] and merged["method"]["method"] != method:
        raise InputError(f"invalid {method} config: method: {merged['method']['method']!r} "
                         f"is not {method!r}")
    settings = RunSettings(
        method=method,
        profile=profile,
        config=make_config(method, merged["method"]),
        data=_validate(DataSettings, merged["data"], "data"),
        evaluation=_validate(EvaluationSettings, merged["evaluation"], "evaluation"),
        policy=_validate(GatePolicy, merged["policy"], "policy"),
    )
    _check_policy_labels(settings.policy, settings.evaluation)
    if settings.evaluation.adversarial is not None and not method_class(method).has_scanner:
        raise InputError(f"invalid evaluation config: evaluation.adversarial: {method} has no "
                         "scanner to attack (only detectors such as anti_forward have one)")
    return settings


def resolve_profile(method: str, profile: str, **overrides: Any) -> RunSettings:
    """:func:`resolve` with ``profile`` a profile name or the path of a profile YAML file.

    Args:
        method: registry key.
        profile: ``tiny`` / ``full`` / another name in ``configs/profiles``, or a path
            ending in ``.yaml`` / ``.yml`` (its folder is the profiles folder).
        **overrides: ``config`` / ``data`` / ``evaluation`` / ``policy`` (:func:`resolve`).

    Raises:
        InputError: a YAML path that is no file, or what :func:`resolve` raises.
    """
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"profile {profile}: no such file")
        return resolve(method, path.stem, profiles_dir=path.resolve().parent, **overrides)
    return resolve(method, profile, **overrides)
