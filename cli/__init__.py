"""The ``neuralmark`` command: one module per command group, the top layer of the house.

``neuralmark.cli.app`` holds the typer app and ``main``. Content commands (``embed``,
``verify``, ``stamp``, ``scan``, ``extract``, ``list``) import only
``neuralmark.components`` (and MLflow only for a ``--model-uri``); the pipeline commands
import ``neuralmark.pipelines`` inside the command, so the content commands start fast
and need no stack.
"""
