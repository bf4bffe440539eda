"""ZenML steps: thin adapters from pipelines to ``components``.

Importing this package must not need a ZenML server or stack lookup.
"""
