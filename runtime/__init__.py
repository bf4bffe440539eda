"""Where and how a run happens: validated run settings (profiles, overrides) and the
bootstrap of the local ZenML stack and MLflow store.

Layer 1 of the house (``../shared/DESIGN.md``), beside ``integrations``: imports only
``neuralmark.components``. ``settings`` imports no MLOps package; ``stack`` imports ZenML
and MLflow lazily, inside its functions.
"""
