"""ZenML's ``KubeflowOrchestrator`` with the settings class that keeps pod settings.

Imported only through ``NeuralmarkKubeflowOrchestratorFlavor.implementation_class`` (it
needs ``kfp``, which lives in the Kubeflow environment, ``.venv-kfp``, not the main one).
Everything else, how steps become KFP components, the DAG, resources and the
compilation, is ZenML's code unchanged (``neuralmark.integrations.kubeflow_flavor`` says
why the settings class differs).
"""

from __future__ import annotations

from zenml.integrations.kubeflow.orchestrators import KubeflowOrchestrator

from neuralmark.integrations.kubeflow_flavor import NeuralmarkKubeflowOrchestratorSettings


class NeuralmarkKubeflowOrchestrator(KubeflowOrchestrator):
    """ZenML's Kubeflow orchestrator reading ``NeuralmarkKubeflowOrchestratorSettings``."""

    @property
    def settings_class(self) -> type[NeuralmarkKubeflowOrchestratorSettings]:
        return NeuralmarkKubeflowOrchestratorSettings
