"""trigger_key's evaluation as Markdown tables (the seed's, in shape) and figures.

Everything here reads tidy rows (:mod:`.evaluation`, :mod:`.analysis`) and returns text
or ``matplotlib`` figures (``components/plots.py``); nothing is measured here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from neuralmark.components.plots import curve, value_heatmap

OURS = "trigger_key"
BASE1 = "trigger_key_backdoor"
BASE2 = "trigger_key_randproj"


def _cells(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, label): {metric: value}}``."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        out.setdefault((r["method"], r["label"]), {})[r["metric"]] = float(r["value"])
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, spec)


def _ok(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else ("Succeeded" if v else "Failed")


def attack_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The seed's robustness tables in shape: one line per attack label.

    Columns: our PSNR, d (×1e-3), d_rel, verification (p ≤ alpha ⇔ d_rel < η), then NCC and
    NCC-based verification (> 0.95) of Base-1, Base-2 and ours, and each baseline's own
    p-value verification.
    """
    cells = _cells(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows if r["method"] == OURS))
    head = ("| attack | PSNR | d (×10⁻³) | d_rel | verification | NCC Base-1 | NCC Base-2 | "
            "NCC ours | NCC>0.95 Base-1 | NCC>0.95 Base-2 | NCC>0.95 ours | Base-1 verified | "
            "Base-2 verified | Base-1 PSNR | Base-2 PSNR |")
    lines = [head, "|" + "---|" * 15]
    for lab in labels:
        o, b1, b2 = (cells.get((m, lab), {}) for m in (OURS, BASE1, BASE2))
        d = o.get("d")
        lines.append(
            f"| {lab} | {_fmt(o.get('psnr'), '.2f')} | "
            f"{_fmt(None if d is None else 1e3 * d, '.2f')} | {_fmt(o.get('d_rel'), '.3f')} | "
            f"{_ok(o.get('detected'))} | "
            f"{_fmt(b1.get('ncc'), '.4f')} | {_fmt(b2.get('ncc'), '.4f')} | "
            f"{_fmt(o.get('ncc'), '.4f')} | {_ok(b1.get('ncc_verified'))} | "
            f"{_ok(b2.get('ncc_verified'))} | {_ok(o.get('ncc_verified'))} | "
            f"{_ok(b1.get('detected'))} | {_ok(b2.get('detected'))} | "
            f"{_fmt(b1.get('psnr'), '.2f')} | {_fmt(b2.get('psnr'), '.2f')} |")
    return "\n".join(lines)


def breaking_points(rows: Sequence[Mapping[str, Any]], attack: str = "prune") -> dict[str, float]:
    """Per method, the smallest strength of ``attack`` at which the mark is not detected
    (``inf`` when it survives every strength tried)."""
    out: dict[str, float] = {}
    for r in rows:
        if r["attack"] == attack and r["metric"] == "detected":
            out.setdefault(r["method"], math.inf)
            if not r["value"]:
                out[r["method"]] = min(out[r["method"]], float(r["strength"]))
    return out


def uniqueness_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """d_rel (d / d of the unmarked host) for every host (rows) × key (columns), ``*`` where
    detected."""
    hosts = list(dict.fromkeys(r["host"] for r in rows))
    keys = list(dict.fromkeys(r["key"] for r in rows))
    cell = {(r["host"], r["key"]): r for r in rows}
    lines = ["| host \\ key | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for h in hosts:
        vals = []
        for k in keys:
            r = cell.get((h, k))
            vals.append("–" if r is None else
                        f"{r['d_rel']:.3f}{'*' if r['detected'] else ''}")
        lines.append(f"| {h} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def capacity_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fidelity cost and verification per trigger size."""
    sizes = sorted({int(r["trigger_size"]) for r in rows})
    cell = {(int(r["trigger_size"]), r["metric"]): float(r["value"]) for r in rows}
    lines = ["| trigger | fidelity cost (dB) | PSNR marked | ℓ_w/pixel | η (d_rel) | marked "
             "detected | unmarked detected |", "|---|---|---|---|---|---|---|"]
    for s in sizes:
        lines.append(f"| {s}×{s} | {cell[(s, 'fidelity_cost_db')]:.3f} | "
                     f"{cell[(s, 'psnr_marked')]:.2f} | {cell[(s, 'l_w_per_pixel')]:.2e} | "
                     f"{cell[(s, 'eta')]:.3f} | {_ok(cell[(s, 'detected_marked')])} | "
                     f"{_ok(cell[(s, 'detected_unmarked')])} |")
    return "\n".join(lines)


def pruning_curve(rows: Sequence[Mapping[str, Any]], metric: str = "score") -> Figure:
    """``metric`` against the pruning rate, one line per method."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        if r["attack"] == "prune" and r["metric"] == metric:
            xs, ys = series.setdefault(r["method"], ([], []))
            xs.append(float(r["strength"]))
            ys.append(float(r["value"]))
    return curve(series, xlabel="pruning rate per layer", ylabel=metric,
                 title=f"pruning: {metric}")


def capacity_curve(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Fidelity cost (dB) against the trigger side."""
    pts = sorted((int(r["trigger_size"]), float(r["value"])) for r in rows
                 if r["metric"] == "fidelity_cost_db")
    return curve([p[0] for p in pts], [p[1] for p in pts], xlabel="trigger side (px)",
                 ylabel="fidelity cost (dB)", title="capacity")


def uniqueness_heatmap(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Heatmap of d_rel over hosts × keys."""
    return value_heatmap([(r["host"], r["key"], float(r["d_rel"])) for r in rows],
                         title="uniqueness: d_rel = d / d(unmarked), hosts × keys")


__all__ = ["BASE1", "BASE2", "OURS", "attack_table", "breaking_points", "capacity_curve",
           "capacity_table", "pruning_curve", "uniqueness_heatmap", "uniqueness_table"]
