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
components, the DAG, resources, ``Compiler().compile``) unchanged. It is made when a stack
first uses it (``orchestrator_class``): it needs ``kfp``, which only the Kubeflow
environment (``.venv-kfp``) has, and this module is imported without it. Run configs set
its settings under ``settings: orchestrator.nm_kubeflow:``.
"""

from __future__ import annotations

import functools
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


@functools.cache
def orchestrator_class() -> type:
    """ZenML's ``KubeflowOrchestrator`` reading ``NeuralmarkKubeflowOrchestratorSettings``.

    Raises:
        ImportError: ``kfp`` is not installed (use the Kubeflow environment).
    """
    from zenml.integrations.kubeflow.orchestrators import KubeflowOrchestrator

    return type("NeuralmarkKubeflowOrchestrator", (KubeflowOrchestrator,), {
        "__module__": __name__,
        "__doc__": "ZenML's Kubeflow orchestrator with pod settings kept.",
        "settings_class": property(lambda self: NeuralmarkKubeflowOrchestratorSettings)})
