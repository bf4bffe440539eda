"""Package list for setuptools (everything else is in pyproject.toml).

The layers live at the repository's top (``components/``, ``integrations/``, ``runtime/``,
``steps/``, ``pipelines/``, ``cli/``) and install as ``neuralmark.<layer>``; ``find_packages``
cannot add that prefix itself, so it is added here. The shipped weights
(``components/pretrained/<method>/``: safetensors, JSON, model card; no Python) are data
packages: listed here so that setuptools installs them as declared packages instead of
warning, for each folder, that an importable package "would be ignored"; their files stay
``neuralmark.components``'s ``package-data`` in pyproject.toml (the wheel holds the same files).
"""

from pathlib import Path

from setuptools import find_packages, setup

LAYERS = ("components", "integrations", "runtime", "steps", "pipelines", "cli")
PRETRAINED = Path(__file__).resolve().parent / "components" / "pretrained"

CODE = [f"neuralmark.{name}" for name in find_packages(include=[f"{layer}*" for layer in LAYERS])]
DATA = ["neuralmark.components.pretrained"] + [
    f"neuralmark.components.pretrained.{folder.name}"
    for folder in sorted(PRETRAINED.iterdir()) if folder.is_dir() and folder.name.isidentifier()]

setup(packages=CODE + DATA)
