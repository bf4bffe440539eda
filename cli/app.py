"""The ``neuralmark`` command line: the root app, one module per command group.

* ``neuralmark.cli.content``: ``list``, ``embed``, ``verify``, ``stamp``, ``scan``;
* ``neuralmark.cli.pipeline_runs``: ``train``, ``evaluate``;
* ``neuralmark.cli.data``: ``data sample``, ``data prepare``;
* ``neuralmark.cli.output_mark``: ``protect``, ``extract``, ``audit``;
* ``neuralmark.cli.brand``: ``brand``, ``brand-verify`` (visible marks, DeepStamp);
* ``neuralmark.cli.model_marks``: ``mark-model``, ``verify-model``, ``attack-model``
  (trigger_key: ownership marks in image-processing models);
* ``neuralmark.cli.benchmark``: ``benchmark`` (methods and peers side by side);
* ``neuralmark.cli.common``: what they share (consoles, errors, verdicts, loading);
  ``neuralmark.cli.headline``: the headline tables of pipeline results.

Importing this module (and ``neuralmark --help``, and every sub-command's ``--help``)
loads typer and rich only: each command imports torch, ``neuralmark.components`` or a
pipeline inside its function, so the content commands start fast and need no stack.

Exit codes: 0 detected / done, 1 not detected, 2 unreadable input or bad arguments
(every domain error is one red line naming the problem, no traceback).
"""

from __future__ import annotations

import typer

from neuralmark.cli import (
    benchmark,
    brand,
    content,
    data,
    model_marks,
    output_mark,
    pipeline_runs,
)

app = typer.Typer(
    name="neuralmark",
    help="Deep image watermarking: embed, verify, train and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (content, brand, pipeline_runs, data, output_mark, model_marks, benchmark):
    group.register(app)


def main() -> None:
    """Entry point of the ``neuralmark`` command (and ``python -m neuralmark.cli.app``)."""
    app()


if __name__ == "__main__":
    main()
