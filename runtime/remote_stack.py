"""A remote ZenML stack from a file (``configs/stacks/<name>.yaml``), registered idempotently.

``python -m neuralmark.runtime.stack --stack configs/stacks/k8s.yaml`` calls
``ensure_remote_stack``: the file is read and *every* component config is validated with
its flavor's own ZenML config class (``KubernetesOrchestratorConfig``,
``S3ArtifactStoreConfig``, ``MLFlowExperimentTrackerConfig``, …) and every ZenML secret it
references (``{{secret.key}}``) is looked up, before anything is registered; then each
component and the stack are looked up and registered or updated only where they differ,
as the local bootstrap does. The local stack stays the active one unless ``activate``.

A stack file::

    name: neuralmark_k8s
    components:
      orchestrator:       {name: nm_k8s_orchestrator, flavor: kubernetes, config: {...}}
      artifact_store:     {name: nm_s3_store, flavor: s3, config: {path: s3://bucket/zenml}}
      container_registry: {name: nm_registry, flavor: default, config: {uri: ...}}
      experiment_tracker: {name: nm_mlflow_tracker, flavor: mlflow, config: {...}}
      model_registry:     {name: nm_mlflow_registry, flavor: mlflow, config: {}}
      image_builder:      {name: nm_image_builder, flavor: local, config: {}}   # optional
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from neuralmark.components.errors import describe_validation_error
from neuralmark.components.methods.base import InputError
from neuralmark.runtime.names import REGISTRY_NAME, TRACKER_NAME

#: component type → flavor → the flavor class (imported directly: ``zenml integration
#: install`` would downgrade the pinned kubernetes client, and these classes need none of
#: the integrations' extra requirements)
FLAVORS: dict[str, dict[str, str]] = {
    "orchestrator": {
        "kubernetes": "zenml.integrations.kubernetes.flavors.KubernetesOrchestratorFlavor",
        # ZenML's Kubeflow flavor with its pod settings kept (the stock ``kubeflow`` flavor
        # of ZenML 0.98 drops them, and with them every GPU request: see the module)
        "nm_kubeflow": "neuralmark.integrations.kubeflow_flavor."
                       "NeuralmarkKubeflowOrchestratorFlavor",
    },
    "artifact_store": {"s3": "zenml.integrations.s3.flavors.S3ArtifactStoreFlavor"},
    "container_registry": {
        "default": "zenml.container_registries.DefaultContainerRegistryFlavor",
    },
    "experiment_tracker": {
        "mlflow": "zenml.integrations.mlflow.flavors.MLFlowExperimentTrackerFlavor",
    },
    "model_registry": {"mlflow": "zenml.integrations.mlflow.flavors.MLFlowModelRegistryFlavor"},
    "image_builder": {"local": "zenml.image_builders.LocalImageBuilderFlavor"},
}
REQUIRED = ("orchestrator", "artifact_store", "container_registry", "experiment_tracker",
            "model_registry")
#: the steps name their tracker (``@step(experiment_tracker=...)``); the stack must use it
FIXED_NAMES = {"experiment_tracker": TRACKER_NAME, "model_registry": REGISTRY_NAME}
_SECRET_REF = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+?)\.([A-Za-z0-9_-]+)\s*\}\}")


class ComponentSpec(BaseModel):
    """One stack component of a stack file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    flavor: str
    config: dict[str, Any] = {}


class StackFile(BaseModel):
    """A stack file: the stack's name and its components by type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    components: dict[str, ComponentSpec]


#: flavors refused with a reason, and what to use instead
REFUSED = {("orchestrator", "kubeflow"): (
    "ZenML 0.98's kubeflow flavor drops the run config's pod settings, so the compiled KFP "
    "spec would request no GPU for any step (neuralmark.integrations.kubeflow_flavor); use "
    "flavor nm_kubeflow, the same orchestrator with them kept")}


def _flavor_class(ctype: str, flavor: str, where: str) -> type:
    if (ctype, flavor) in REFUSED:
        raise InputError(f"{where}.flavor: {flavor!r}: {REFUSED[ctype, flavor]}")
    choices = FLAVORS[ctype]
    if flavor not in choices:
        raise InputError(f"{where}.flavor: {flavor!r} is not supported for {ctype}; "
                         f"use one of {sorted(choices)}")
    module, cls = choices[flavor].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


def secret_references(value: Any) -> set[tuple[str, str]]:
    """``{(secret, key)}`` for every ``{{secret.key}}`` inside ``value`` (nested)."""
    if isinstance(value, str):
        return set(_SECRET_REF.findall(value))
    if isinstance(value, dict):
        return set().union(*(secret_references(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(secret_references(v) for v in value))
    return set()


def _without_secret_references(value: Any) -> Any:
    """``value`` with each ``{{secret.key}}`` replaced by a placeholder string.

    A ZenML config resolves a secret reference whenever a validator reads the field, which
    needs the secret in a store; the file's shape is validated offline, and
    ``ensure_remote_stack`` checks the secrets exist before registering.
    """
    if isinstance(value, str):
        return _SECRET_REF.sub(lambda m: f"<secret {m.group(1)}.{m.group(2)}>", value)
    if isinstance(value, dict):
        return {k: _without_secret_references(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_secret_references(v) for v in value]
    return value


def load_stack_file(path: str | Path) -> StackFile:
    """Read and validate a stack file, each component with its flavor's config class.

    Raises:
        InputError: missing file, bad YAML, a missing or unknown field anywhere (the
            message names it: ``components.artifact_store.config.path: Field required``),
            a missing required component, or a tracker/registry not named as the steps
            expect.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"stack file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"stack file {path} is not valid YAML: {err}") from None
    try:
        spec = StackFile.model_validate(raw)
    except ValidationError as err:
        raise InputError(f"stack file {path}: {describe_validation_error(err)}") from None
    unknown = sorted(set(spec.components) - set(FLAVORS))
    if unknown:
        raise InputError(f"stack file {path}: components.{unknown[0]}: unknown component type; "
                         f"expected {sorted(FLAVORS)}")
    for ctype in REQUIRED:
        if ctype not in spec.components:
            raise InputError(f"stack file {path}: components.{ctype}: missing (a remote stack "
                             f"needs {', '.join(REQUIRED)})")
    for ctype, comp in spec.components.items():
        where = f"components.{ctype}"
        if ctype in FIXED_NAMES and comp.name != FIXED_NAMES[ctype]:
            raise InputError(f"stack file {path}: {where}.name: must be "
                             f"{FIXED_NAMES[ctype]!r} (the steps name it), got {comp.name!r}")
        flavor = _flavor_class(ctype, comp.flavor, f"stack file {path}: {where}")()
        try:
            flavor.config_class(**_without_secret_references(comp.config))
        except ValidationError as err:
            raise InputError(f"stack file {path}: {where} ({comp.flavor}): "
                             f"{describe_validation_error(err, f'{where}.config.')}") from None
        except ValueError as err:  # a flavor's own model validator
            raise InputError(f"stack file {path}: {where} ({comp.flavor}): {err}") from None
    return spec


def ensure_remote_stack(path: str | Path, project_root: str | Path,
                        activate: bool = False) -> dict[str, Any]:
    """Register (or update) the stack of a stack file in the connected ZenML store.

    Validates the whole file and checks that every referenced ZenML secret exists
    before registering anything; a second call with the same file changes nothing.

    Args:
        path: the stack file.
        project_root: the repository root (``zenml init`` there if needed).
        activate: make it the active stack (default: the local stack stays active).

    Returns:
        ``stack``, ``registered`` / ``updated`` (names), ``active_stack``.

    Raises:
        InputError: a bad stack file, a missing ZenML secret, or a component of the
            same name with another flavor.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType

    spec = load_stack_file(path)
    root = Path(project_root).resolve()
    if not Client.is_repository_directory(root):
        Client.initialize(root=root)
    client = Client(root=root)
    for secret, key in sorted(secret_references({c: s.config for c, s in
                                                 spec.components.items()})):
        try:
            values = client.get_secret(secret, allow_partial_name_match=False).secret_values
        except KeyError:
            raise InputError(f"stack file {path}: ZenML secret {secret!r} does not exist; "
                             f"create it first: zenml secret create {secret} "
                             f"--{key}=...") from None
        if key not in values:
            raise InputError(f"stack file {path}: ZenML secret {secret!r} has no key {key!r} "
                             f"(has {sorted(values)})")

    report: dict[str, Any] = {"stack": spec.name, "registered": [], "updated": []}
    for ctype, comp in spec.components.items():
        source = FLAVORS[ctype][comp.flavor]
        if source.startswith("neuralmark."):  # a flavor of ours: ZenML must know its source
            kind = StackComponentType(ctype)
            try:
                client.get_flavor_by_name_and_type(comp.flavor, kind)
            except KeyError:
                try:
                    client.create_flavor(source=source, component_type=kind)
                except ValueError as err:  # ZenML imports the implementation: kfp for Kubeflow
                    raise InputError(f"stack file {path}: flavor {comp.flavor!r} cannot be "
                                     f"registered here ({err}); the Kubeflow stack is "
                                     "registered from the Kubeflow environment: make kfp-venv, "
                                     "then .venv-kfp/bin/python -m neuralmark.runtime.stack "
                                     f"--stack {path}") from None
                report["registered"].append(f"flavor {comp.flavor}")
    wanted: dict[StackComponentType, str] = {}
    for ctype, comp in spec.components.items():
        kind = StackComponentType(ctype)
        wanted[kind] = comp.name
        try:
            have = client.get_stack_component(kind, comp.name, allow_name_prefix_match=False)
        except KeyError:
            client.create_stack_component(name=comp.name, flavor=comp.flavor,
                                          component_type=kind, configuration=comp.config)
            report["registered"].append(comp.name)
            continue
        if have.flavor_name != comp.flavor:
            raise InputError(f"ZenML {ctype} {comp.name!r} exists with flavor "
                             f"{have.flavor_name!r}, the stack file wants {comp.flavor!r}")
        if any(have.configuration.get(k) != v for k, v in comp.config.items()):
            client.update_stack_component(comp.name, kind, configuration=comp.config)
            report["updated"].append(comp.name)
    try:
        stack = client.get_stack(spec.name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=spec.name, components=wanted)
        report["registered"].append(spec.name)
    else:
        have = {t: [c.name for c in cs] for t, cs in stack.components.items()}
        if have != {t: [n] for t, n in wanted.items()}:
            client.update_stack(spec.name, component_updates=wanted)
            report["updated"].append(spec.name)
    if activate and client.active_stack_model.name != spec.name:
        client.activate_stack(spec.name)
    report["active_stack"] = client.active_stack_model.name
    return report
