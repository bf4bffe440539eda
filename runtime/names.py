"""Names of neuralmark's ZenML stack components, shared by the local and the remote stacks.

The steps name their experiment tracker (``@step(experiment_tracker=TRACKER_NAME)``), so
every stack that runs them, local or remote, has its MLflow tracker under this name.
"""

TRACKER_NAME = "nm_mlflow_tracker"
REGISTRY_NAME = "nm_mlflow_registry"
STACK_NAME = "neuralmark_local"
