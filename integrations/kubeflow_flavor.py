"""ZenML's Kubeflow orchestrator flavor with its pod settings kept (flavor ``nm_kubeflow``).

ZenML 0.98's ``KubeflowOrchestratorSettings`` rebuilds ``pod_settings`` in a ``before``
validator from the deprecated top-level ``node_selectors`` / ``node_affinity`` on *every*
validation, so a ``pod_settings`` given in a run config is replaced by an empty one; and the
deprecated ``node_selectors`` are stripped by ZenML's compiler as unknown attributes. Either
way the orchestrator never sees the ``accelerator`` node selector, the one pod setting it
applies with KFP 2.x (the accelerator type of steps with ``resources.gpu_count``), and the
compiled KFP spec requests **no GPU for any step** (seen compiling
``configs/k8s/pgd_signer.yaml`` with the stock flavor: no ``accelerator`` in any executor).

This flavor is ZenML's, with the validator replaced by one that keeps a given
``pod_settings`` and still migrates the deprecated fields; the orchestrator is ZenML's
``KubeflowOrchestrator`` with that settings class, everything else (steps → KFP container
components, the DAG, resources, ``Compiler().compile``) unchanged, plus one thing ZenML's
drops: each step's ``pod_settings`` tolerations and node selectors reach its KFP task
(``kfp.kubernetes.add_toleration`` / ``add_node_selector``, in the compiled spec's
Kubernetes platform section), so GPU steps land on tainted GPU nodes. It is made when a stack
first uses it (``orchestrator_class``): it needs ``kfp``, which only the Kubeflow
environment (``.venv-kfp``) has, and this module is imported without it. Run configs set
its settings under ``settings: orchestrator.nm_kubeflow:``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from pydantic import model_validator
from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import (
    KubeflowOrchestratorConfig,
    KubeflowOrchestratorFlavor,
    KubeflowOrchestratorSettings,
)
from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

FLAVOR = "nm_kubeflow"
FLAVOR_SOURCE = "neuralmark.integrations.kubeflow_flavor.NeuralmarkKubeflowOrchestratorFlavor"


def _migrate_pod_settings(data: Any) -> Any:
    """ZenML's migration of ``node_selectors`` / ``node_affinity``, keeping ``pod_settings``.

    Deprecated fields given: they become the pod settings' node selectors and affinity,
    merged over a ``pod_settings`` given too. Neither given: ``pod_settings`` is left as it
    is. Username and password must come together (ZenML's rule).
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    node_selectors = data.pop("node_selectors", None) or {}
    node_affinity = data.pop("node_affinity", None) or {}
    if node_selectors or node_affinity:
        pod = data.get("pod_settings") or {}
        pod = (pod.model_dump(exclude_unset=True) if isinstance(pod, KubernetesPodSettings)
               else dict(pod))
        pod["node_selectors"] = {**(pod.get("node_selectors") or {}), **node_selectors}
        if node_affinity:
            pod["affinity"] = {"node_affinity": {
                "required_during_scheduling_ignored_during_execution": {
                    "node_selector_terms": [{"match_expressions": [
                        {"key": k, "operator": "In", "values": v}
                        for k, v in node_affinity.items()]}]}}}
        data["pod_settings"] = KubernetesPodSettings(**pod)
    if (data.get("client_username") is None) != (data.get("client_password") is None):
        raise ValueError("`client_username` and `client_password` both need to be set together.")
    return data


class NeuralmarkKubeflowOrchestratorSettings(KubeflowOrchestratorSettings):
    """``KubeflowOrchestratorSettings`` whose ``pod_settings`` survive validation."""

    @model_validator(mode="before")
    @classmethod
    def _validate_and_migrate_pod_settings(cls, data: Any) -> Any:
        # the same name as ZenML's validator, so pydantic runs this one instead
        return _migrate_pod_settings(data)


class NeuralmarkKubeflowOrchestratorConfig(KubeflowOrchestratorConfig,
                                           NeuralmarkKubeflowOrchestratorSettings):
    """``KubeflowOrchestratorConfig`` with the settings' validator above."""

    @model_validator(mode="before")
    @classmethod
    def _validate_and_migrate_pod_settings(cls, data: Any) -> Any:
        return _migrate_pod_settings(data)


class NeuralmarkKubeflowOrchestratorFlavor(KubeflowOrchestratorFlavor):
    """The ``nm_kubeflow`` orchestrator flavor: ZenML's Kubeflow flavor, pod settings kept."""

    @property
    def name(self) -> str:
        return FLAVOR

    @property
    def config_class(self) -> type[NeuralmarkKubeflowOrchestratorConfig]:
        return NeuralmarkKubeflowOrchestratorConfig

    @property
    def implementation_class(self) -> type:
        return orchestrator_class()


def toleration_arguments(toleration: dict[str, Any]) -> dict[str, Any]:
    """A pod settings toleration (the Kubernetes client's snake_case or the API's camelCase
    keys) as the keyword arguments of ``kfp.kubernetes.add_toleration``.

    Raises:
        ValueError: a key that is no field of a toleration.
    """
    names = {"key": "key", "operator": "operator", "value": "value", "effect": "effect",
             "toleration_seconds": "toleration_seconds",
             "tolerationSeconds": "toleration_seconds"}
    unknown = sorted(set(toleration) - set(names))
    if unknown:
        raise ValueError(f"toleration {toleration}: {unknown[0]!r} is not a toleration field")
    return {names[k]: v for k, v in toleration.items() if v is not None}


def apply_pod_scheduling(task: Any, pod_settings: KubernetesPodSettings | None) -> Any:
    """Give a compiled KFP task the pod settings' tolerations and node selectors
    (``kfp.kubernetes``: the platform spec of the pipeline); the ``accelerator`` node
    selector stays ZenML's (the accelerator type of GPU steps), not a pod label."""
    from kfp import kubernetes

    if pod_settings is None:
        return task
    for toleration in pod_settings.tolerations:
        task = kubernetes.add_toleration(task, **toleration_arguments(toleration))
    for label, value in sorted(pod_settings.node_selectors.items()):
        if label != "accelerator":
            task = kubernetes.add_node_selector(task, label, str(value))
    return task


def _applied_here(record: logging.LogRecord) -> bool:
    """Drop ZenML's warning that tolerations are ignored with KFP 2.x (this orchestrator
    applies them); a warning naming any other pod setting still shows."""
    return not record.getMessage().endswith("will be ignored: ['tolerations'].")


@functools.cache
def orchestrator_class() -> type:
    """ZenML's ``KubeflowOrchestrator`` reading ``NeuralmarkKubeflowOrchestratorSettings``,
    with each step's tolerations and node selectors applied to its KFP task.

    ZenML 0.98 builds every step's task in ``submit_pipeline`` and then calls
    ``_configure_container_resources(task, resource_settings, ...)`` on it (resources and
    the accelerator only); this class remembers the snapshot being submitted and, after
    ZenML's resources, adds the step's ``pod_settings`` tolerations and node selectors with
    ``kfp.kubernetes`` (the task's display name is its step's invocation id).

    Raises:
        ImportError: ``kfp`` / ``kfp-kubernetes`` are not installed (the Kubeflow
            environment has them).
    """
    from zenml.integrations.kubeflow.orchestrators import KubeflowOrchestrator

    class NeuralmarkKubeflowOrchestrator(KubeflowOrchestrator):
        """ZenML's Kubeflow orchestrator with pod settings kept and scheduled."""

        @property
        def settings_class(self) -> type[NeuralmarkKubeflowOrchestratorSettings]:
            return NeuralmarkKubeflowOrchestratorSettings

        def submit_pipeline(self, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
            self._nm_snapshot = snapshot
            zenml_log = logging.getLogger(KubeflowOrchestrator.__module__)
            zenml_log.addFilter(_applied_here)
            try:
                return super().submit_pipeline(snapshot, *args, **kwargs)
            finally:
                self._nm_snapshot = None
                zenml_log.removeFilter(_applied_here)

        def _configure_container_resources(self, dynamic_component: Any, *args: Any,
                                           **kwargs: Any) -> Any:
            task = super()._configure_container_resources(dynamic_component, *args,
                                                          **kwargs)
            snapshot = getattr(self, "_nm_snapshot", None)
            step = (snapshot.step_configurations.get(task._task_spec.display_name)
                    if snapshot is not None else None)
            if step is None:
                raise RuntimeError("a KFP task with no ZenML step of the snapshot being "
                                   f"submitted: {task._task_spec.display_name!r}")
            settings = self.get_settings(step)
            return apply_pod_scheduling(task, settings.pod_settings)

    NeuralmarkKubeflowOrchestrator.__module__ = __name__
    return NeuralmarkKubeflowOrchestrator
