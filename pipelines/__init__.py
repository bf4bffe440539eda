"""ZenML pipelines and the ``neuralmark`` CLI."""
