"""Adapters to the MLOps tools: MLflow tracking and registry, Great Expectations, DVC,
ZenML materializers and the MLflow pyfunc wrapper.

Layer 1 of the house (``../shared/DESIGN.md``): imported by ``steps`` and above, imports
only ``neuralmark.components`` (and ``neuralmark.runtime``) below it. Every module here
imports its tool lazily or at top level, never at ``neuralmark.integrations`` import.
"""
