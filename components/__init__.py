"""neuralmark components: the pure library (torch, kornia, pillow, numpy).

Nothing in this package imports zenml, mlflow, dvc, great_expectations or
kubernetes; it runs in a notebook with no stack configured.
"""
