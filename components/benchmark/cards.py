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
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuralmark.components.benchmark.report import (
    HEADLINE,
    MODEL_HEADLINE,
    RUN_FILE,
    format_cell,
    headline,
    model_table,
    read_csv,
)
from neuralmark.components.errors import InputError
from neuralmark.components.files import atomic_write_text
from neuralmark.components.stats import clopper_pearson

Row = dict[str, Any]
BEGIN = "<!-- BEGIN neuralmark benchmark section (generated: do not edit by hand) -->"
END = "<!-- END neuralmark benchmark section -->"
_CURVE_METRICS = ("bit_accuracy", "detection_rate", "false_positive_rate")
_NOT_CURVES = {"none", "copy", "removal", "whitebox_removal", "timing_batch",
               "timing_resolution"}


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
    heads = headline(rows)
    sweeps = "quick" if s["quick"] else "full"
    measured = (f"{len(photos)} photos ({where}: {', '.join(photos)}) at "
                f"{s['size']}×{s['size']}, {sweeps} sweeps, FPR over {s['fpr_keys']} random keys "
                f"per photo, white-box APGD {s['whitebox_steps']} steps" if heads else
                f"the model table only ({sweeps} model sweep; the task PSNR is measured on the "
                "host's test patches of the photos bundled with the package)")
    lines = ["## Benchmark (`neuralmark benchmark`)", "",
             f"Written from the benchmark's own table by `neuralmark benchmark --card {method}`;"
             f" do not edit by hand, re-run the command. Measured: {measured}. Command:", "",
             f"    {run['command']}", ""]
    if heads:
        lines += ["| " + " | ".join(HEADLINE) + " |", "|" + "---|" * len(HEADLINE)]
        lines += ["| " + " | ".join(format_cell(h[c]) for c in HEADLINE) + " |"
                  for h in heads]
        lines += ["", "removal: black-box (size-preserving sweep attacks) and "
                  "whitebox_removal: APGD-L2 on the public decoder / scanner, both within "
                  "PSNR(attacked, marked) ≥ the method's own PSNR; forgery: the most successful of "
                  "the copy, residual-copy, feature-mean-shift and surrogate attacks (the table "
                  "below gives each, with its 95% interval); ms per "
                  "image at batch 1 (CPU, shared machine).", ""]
    attacks = _attack_table(rows, method)
    if attacks:
        lines += [f"{method}'s forgery and removal attacks (success = detected under the "
                  "victim's key / no longer detected; exact 95% interval):", ""]
        lines += attacks + [""]
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


def _attack_table(rows: Sequence[Row], method: str) -> list[str]:
    """Markdown rows of ``method``'s forgery / removal success rates with their intervals."""
    quality = {(r["label"], r["metric"]): r["value"] for r in rows if r["method"] == method}
    out = []
    for r in rows:
        if (r["method"] != method or r["value"] in (None, "")
                or r["metric"] not in ("forgery_success_rate", "removal_success_rate")):
            continue
        n = int(float(r["n"]))
        k = round(float(r["value"]) * n)
        lo, hi = clopper_pearson(k, n)
        kind = "forgery" if r["metric"].startswith("forgery") else "removal"
        db = quality.get((r["label"], f"{kind}_psnr"))
        out.append(f"| {r['label']} | {kind} | {k}/{n} | [{lo:.3f}, {hi:.3f}] | "
                   f"{format_cell(None if db in (None, '') else float(db))} |")
    if not out:
        return []
    return ["| attack | kind | success | 95% CI | PSNR |", "|---|---|---|---|---|", *out]


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


#: a section another script generates into a card: ``<!-- BEGIN name -->`` … ``<!-- END name -->``
_MARKED = re.compile(r"<!-- BEGIN (?P<name>[^>]*?) -->")


def _units(card: str) -> list[str]:
    """``card`` cut into the pieces a rewrite may have to carry over, in order: each generated
    section (its markers included), each ``## `` section outside them, and the text that
    follows a generated section up to the next heading or marker (notes written under it).

    Raises:
        InputError: a generated section's end marker is missing.
    """
    lines, units, current, i = card.split("\n"), [], [], 0
    while i < len(lines):
        m = _MARKED.fullmatch(lines[i].strip())
        if m:
            end_marker = END if m.group(0) == BEGIN else f"<!-- END {m.group('name')} -->"
            j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == end_marker),
                     None)
            if j is None:
                raise InputError(f"the card's section {m.group('name')!r} has no {end_marker!r}")
            units += [current, lines[i:j + 1]]
            current, i = [], j + 1
            continue
        if lines[i].startswith("## "):
            units.append(current)
            current = []
        current.append(lines[i])
        i += 1
    units.append(current)
    return [text for text in ("\n".join(u).strip("\n") for u in units) if text.strip()]


def keep_section(old_card: str, new_card: str) -> str:
    """``new_card`` with what other tools wrote into ``old_card`` carried over (a script that
    rewrites a card keeps the sections it does not write).

    The benchmark section goes between ``new_card``'s benchmark markers (appended if it has
    none). Every other piece of ``old_card`` (see :func:`_units`: a generated section between
    ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers, a ``## `` section, notes under a
    generated section) whose first line ``new_card`` does not contain is appended in its old
    order; where ``new_card`` has it, its version wins. The title (``# …``) is the new card's.
    """
    begin, end = old_card.find(BEGIN), old_card.find(END)
    card = new_card
    if begin != -1 and end > begin:
        card = replace_section(card, old_card[begin + len(BEGIN):end].strip("\n"))
    for unit in _units(old_card):
        first = unit.split("\n", 1)[0].strip()
        if not first.startswith("# ") and first not in card:
            card = card.rstrip("\n") + "\n\n" + unit + "\n"
    return card


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
