"""Package list for setuptools (everything else is in pyproject.toml).

The layers live at the repository's top (``components/``, ``integrations/``, ``runtime/``,
``steps/``, ``pipelines/``, ``cli/``) and install as ``neuralmark.<layer>``; ``find_packages``
cannot add that prefix itself, so it is added here.
"""

from setuptools import find_packages, setup

LAYERS = ("components", "integrations", "runtime", "steps", "pipelines", "cli")

setup(packages=[f"neuralmark.{name}" for name in find_packages(
    include=[f"{layer}*" for layer in LAYERS])])
