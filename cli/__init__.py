"""The ``neuralmark`` command: one module per command group, the top layer of the house.

Content commands (``embed``, ``verify``, ``stamp``, ``scan``, ``extract``, ``list``) import
only ``neuralmark.components``; the pipeline commands import ``neuralmark.pipelines``
lazily, inside the command, so the content commands start fast and need no stack.
"""
