"""A model card's benchmark section, written from a benchmark table, so the card and the
benchmark never disagree.

``card_section(rows, method, run)`` renders, from the rows of ``benchmark.csv`` (and the run
description ``benchmark.json`` written beside it), one Markdown section: what was measured
(photos, size, sweeps, the command that reproduces it), the headline table of every entrant
in the run (the same columns as ``benchmark.md``), the method's robustness curves (bit
accuracy, TPR, FPR per attack and strength) and, when the run has one, the model table.
``replace_section`` puts it between the markers ``BEGIN`` / ``END`` of a card (appended
when the card has none yet), leaving every other line as it was; ``write_card_section``
does both for a card file, atomically.

Example:
    >>> replace_section("# card\\n", "x\\n").endswith(END + "\\n")
    True
"""

from __future__ import annotations

import json
import os
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuralmark.components.benchmark.report import (
    HEADLINE,
    MODEL_HEADLINE,
    format_cell,
    headline,
    model_table,
    read_csv,
)
from neuralmark.components.errors import InputError
from neuralmark.components.files import atomic_write_text

Row = dict[str, Any]
BEGIN = "<!-- BEGIN neuralmark benchmark section (generated: do not edit by hand) -->"
END = "<!-- END neuralmark benchmark section -->"
RUN_FILE = "benchmark.json"
_CURVE_METRICS = ("bit_accuracy", "detection_rate", "false_positive_rate")
_NOT_CURVES = {"none", "copy", "removal", "whitebox_removal", "timing_batch",
               "timing_resolution"}


def settings_command(settings: Mapping[str, Any], images: str | None) -> str:
    """The ``neuralmark benchmark`` command line that measures with ``settings``.

    Args:
        settings: ``BenchmarkSettings.model_dump(mode="json")``.
        images: the photo folder given to the run (``None``: the held-out split).
    """
    args = ["neuralmark", "benchmark"]
    if images:
        args += ["--images", images]

    def names(value: list[str] | None) -> str | None:
        return None if value is None else (",".join(value) or "none")

    for option, field in (("--methods", "methods"), ("--peers", "peers"),
                          ("--attacks", "attacks"), ("--model-methods", "model_methods"),
                          ("--model-attacks", "model_attacks")):
        text = names(settings.get(field))
        if text is not None:
            args += [option, text]
    if settings.get("quick"):
        args.append("--quick")
    args += ["--size", str(settings["size"]), "--limit", str(settings["limit"]),
             "--fpr-keys", str(settings["fpr_keys"]),
             "--whitebox-steps", str(settings["whitebox_steps"])]
    for option, field in (("--batch-sizes", "batch_sizes"), ("--resolutions", "resolutions")):
        if settings.get(field) is not None:
            args += [option, ",".join(str(v) for v in settings[field])]
    if not settings.get("forgery", True):
        args.append("--no-forgery")
    return shlex.join(args)


def run_description(settings: Mapping[str, Any], photos: Sequence[str],
                    images: str | None) -> dict[str, Any]:
    """What ``benchmark.json`` holds: the settings, the photos and the command."""
    return {"settings": dict(settings), "photos": list(photos),
            "images": images, "command": settings_command(settings, images)}


def read_run(csv_path: str | os.PathLike) -> tuple[list[Row], dict[str, Any]]:
    """The rows of ``csv_path`` and the run description beside it.

    Raises:
        InputError: no such CSV, not a benchmark table, or no ``benchmark.json`` beside it.
    """
    path = Path(csv_path)
    if path.is_dir():
        path = path / "benchmark.csv"
    if not path.is_file():
        raise InputError(f"no benchmark table at {path}")
    try:
        rows = read_csv(path)
    except ValueError as err:
        raise InputError(str(err)) from None
    run_path = path.parent / RUN_FILE
    if not run_path.is_file():
        raise InputError(f"{path}: no {RUN_FILE} beside it (the run's settings and photos; "
                         "written by `neuralmark benchmark`)")
    return rows, json.loads(run_path.read_text())


def is_variant(name: str, method: str) -> bool:
    """``name`` is ``method`` or ``method`` with config changes (``method[...]``)."""
    return name == method or name.startswith(method + "[")


def _curves(rows: Sequence[Row], method: str) -> list[str]:
    """One table row per (entrant, attack, strength) of ``method`` and its variants."""
    cells: dict[tuple[str, str, float | None], dict[str, Any]] = defaultdict(dict)
    order: list[tuple[str, str, float | None]] = []
    for r in rows:
        if not is_variant(r["method"], method) or r["metric"] not in _CURVE_METRICS:
            continue
        if r["attack"] in _NOT_CURVES and r["label"] != "none":
            continue
        key = (r["method"], r["attack"], r["strength"])
        if key not in cells:
            order.append(key)
        cells[key][r["metric"]] = r["value"]
    if not order:
        return []
    lines = ["| method | attack | strength | bit accuracy | TPR | FPR (attacked clean) |",
             "|---|---|---|---|---|---|"]
    for name, attack, strength in order:
        c = cells[(name, attack, strength)]
        lines.append(f"| {name} | {attack} | {format_cell(strength)} | " + " | ".join(
            format_cell(c.get(m)) for m in _CURVE_METRICS) + " |")
    return lines


def card_section(rows: Sequence[Row], method: str, run: Mapping[str, Any]) -> str:
    """The card's benchmark section (Markdown, markers excluded) from a benchmark table.

    Raises:
        InputError: ``method`` has no row in the table.
    """
    if not any(is_variant(r["method"], method) for r in rows):
        methods = sorted({r["method"] for r in rows if r["family"] != "input"})
        raise InputError(f"the benchmark table has no row of {method!r}; it has: "
                         f"{', '.join(methods)}")
    s = run["settings"]
    photos = run["photos"]
    where = f"the photos of `{run['images']}`" if run.get("images") else \
        "the held-out split of the sample dataset"
    lines = ["## Benchmark (`neuralmark benchmark`)", "",
             f"Written from the benchmark's own table by `neuralmark benchmark --card {method}`;"
             " do not edit by hand, re-run the command. "
             f"{len(photos)} photos ({where}: {', '.join(photos)}) at {s['size']}×{s['size']}, "
             f"{'quick' if s['quick'] else 'full'} sweeps, FPR over {s['fpr_keys']} random keys "
             f"per photo, white-box APGD {s['whitebox_steps']} steps. Command:", "",
             f"    {run['command']}", "",
             "| " + " | ".join(HEADLINE) + " |", "|" + "---|" * len(HEADLINE)]
    lines += ["| " + " | ".join(format_cell(h[c]) for c in HEADLINE) + " |" for h in headline(rows)]
    lines += ["", "removal: black-box (size-preserving sweep attacks) and whitebox_removal: "
              "APGD-L2 on the public decoder / scanner, both within PSNR(attacked, marked) ≥ "
              "the method's own PSNR; forgery: copy attack; ms per image at batch 1 (CPU, "
              "shared machine).", ""]
    curves = _curves(rows, method)
    if curves:
        lines += [f"{method} (and its config variants in the run) along the sweeps:", ""]
        lines += curves + [""]
    models = model_table(rows)
    if models:
        lines += ["Model watermarks in the same run (shipped host through the model attacks):",
                  "", "| " + " | ".join(MODEL_HEADLINE) + " |",
                  "|" + "---|" * len(MODEL_HEADLINE)]
        lines += ["| " + " | ".join(format_cell(m[c]) for c in MODEL_HEADLINE) + " |"
                  for m in models]
        lines.append("")
    return "\n".join(lines)


def replace_section(card: str, section: str) -> str:
    """``card`` with ``section`` between ``BEGIN`` and ``END`` (appended if absent).

    Raises:
        InputError: the card has one marker without the other, or them out of order.
    """
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    begin, end = card.find(BEGIN), card.find(END)
    if begin == -1 and end == -1:
        return card.rstrip("\n") + "\n\n" + block + "\n"
    if begin == -1 or end == -1 or end < begin:
        raise InputError("the card's benchmark markers are broken: it needs "
                         f"{BEGIN!r} before {END!r}")
    return card[:begin] + block + card[end + len(END):]


def keep_section(old_card: str, new_card: str) -> str:
    """``new_card`` with ``old_card``'s benchmark section carried over (a script that rewrites
    a card keeps what the benchmark wrote); ``new_card`` as is when there was none."""
    begin, end = old_card.find(BEGIN), old_card.find(END)
    if begin == -1 or end < begin:
        return new_card
    return replace_section(new_card, old_card[begin + len(BEGIN):end].strip("\n"))


def write_card_section(card_path: str | os.PathLike, csv_path: str | os.PathLike,
                       method: str) -> Path:
    """Rewrite the benchmark section of the card at ``card_path`` from ``csv_path``.

    Raises:
        InputError: no card, no table / run description, ``method`` not in the table,
            broken markers.
    """
    card = Path(card_path)
    if not card.is_file():
        raise InputError(f"no model card at {card}")
    rows, run = read_run(csv_path)
    return atomic_write_text(card, replace_section(card.read_text(),
                                                   card_section(rows, method, run)))
