"""The benchmark table on disk: tidy CSV, a Markdown summary, a self-contained HTML report.

Model methods (family ``model``) have their own table: detection and the host's task PSNR
after each model attack. The HTML embeds its figures as base64 PNG (one file to send or open
offline): one figure per swept attack with every method on it (bit accuracy and TPR against
strength), and the timing curves (ms per image against resolution). Every file is written
atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import shlex
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuralmark.components.benchmark.runner import COLUMNS, BenchmarkResult, BenchmarkSettings
from neuralmark.components.benchmark.whitebox import NOT_APPLICABLE
from neuralmark.components.files import atomic_file, atomic_write_text

Row = dict[str, Any]
_SWEPT_OUT = {"none", "copy", "removal", "whitebox_removal", "timing_batch",
              "timing_resolution"}
_NOT_CONTENT = {"input", "model"}
RUN_FILE = "benchmark.json"

HEADLINE = ("method", "family", "psnr", "ssim", "bit_acc_clean", "bit_acc_mean", "bit_acc_worst",
            "tpr_clean", "tpr_mean", "fpr_clean", "embed_ms", "verify_ms", "forgery",
            "removal", "whitebox_removal", "whitebox_psnr", "note")
MODEL_HEADLINE = ("method", "attack", "strength", "model_detected", "task_psnr", "p_value",
                  "note")


def write_csv(rows: Sequence[Row], path: str | os.PathLike) -> Path:
    """The tidy table (``runner.COLUMNS``) as CSV, written atomically."""
    with atomic_file(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in COLUMNS})
    return Path(path)


def read_csv(path: str | os.PathLike) -> list[Row]:
    """Rows written by ``write_csv`` (empty cells → ``None``; numbers back as floats)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a benchmark table: missing {sorted(missing)}")
        out = []
        for r in reader:
            row: Row = dict(r)
            for c in ("strength", "value"):
                row[c] = float(r[c]) if r[c] else None
            row["n"] = int(r["n"]) if r["n"] else 0
            out.append(row)
        return out


def _value(rows: Sequence[Row], method: str, metric: str, label: str) -> float | None:
    for r in rows:
        if (r["method"], r["metric"], r["label"]) == (method, metric, label) \
                and r["value"] is not None:
            return float(r["value"])
    return None


def headline(rows: Sequence[Row]) -> list[Row]:
    """One summary row per method: quality, robustness over the sweeps, FPR, speed, forgery.

    ``bit_acc_mean`` / ``tpr_mean`` average every swept (attack, strength); ``worst`` is
    the lowest of them; ``embed_ms`` / ``verify_ms`` are at batch 1 on the benchmark size;
    ``whitebox_removal`` is the APGD (or shipped remover's) removal success rate, or
    ``NOT_APPLICABLE`` for a method with neither a public differentiable decoder nor a
    shipped remover. Model methods are ``model_table``'s.
    """
    methods: dict[str, str] = {}
    for r in rows:
        if r["family"] not in _NOT_CONTENT:
            methods.setdefault(r["method"], r["family"])
    table = []
    for method, family in methods.items():
        own = [r for r in rows if r["method"] == method]
        swept = defaultdict(list)
        for r in own:
            if r["attack"] not in _SWEPT_OUT and r["value"] is not None:
                swept[r["metric"]].append(float(r["value"]))
        notes = [r["note"] for r in own if r["metric"] == "unavailable"]
        acc, tpr = swept.get("bit_accuracy", []), swept.get("detection_rate", [])
        table.append({
            "method": method, "family": family,
            "psnr": _value(own, method, "psnr", "none"),
            "ssim": _value(own, method, "ssim", "none"),
            "bit_acc_clean": _value(own, method, "bit_accuracy", "none"),
            "bit_acc_mean": statistics.fmean(acc) if acc else None,
            "bit_acc_worst": min(acc) if acc else None,
            "tpr_clean": _value(own, method, "detection_rate", "none"),
            "tpr_mean": statistics.fmean(tpr) if tpr else None,
            "fpr_clean": _value(own, method, "fpr_clean", "none"),
            "embed_ms": _value(own, method, "embed_ms", "timing_batch_1"),
            "verify_ms": _value(own, method, "verify_ms", "timing_batch_1"),
            "forgery": _worst_forgery(own),
            "removal": _value(own, method, "removal_success_rate", "removal"),
            "whitebox_removal": _whitebox(own),
            "whitebox_psnr": _value(own, method, "whitebox_removal_psnr", "whitebox_removal"),
            "note": "; ".join(notes),
        })
    return table


def _worst_forgery(own: Sequence[Row]) -> float | None:
    """The highest success rate among the forgery attacks (copy, residual copy, mean shift,
    surrogate)."""
    rates = [float(r["value"]) for r in own
             if r["metric"] == "forgery_success_rate" and r["value"] is not None]
    return max(rates) if rates else None


def _whitebox(own: Sequence[Row]) -> float | str | None:
    for r in own:
        if r["metric"] == "whitebox_removal_success_rate":
            if r["value"] is not None:
                return float(r["value"])
            return NOT_APPLICABLE if r["note"] == NOT_APPLICABLE else None
    return None


def model_table(rows: Sequence[Row]) -> list[Row]:
    """One row per (model method, model attack, strength): detected, task PSNR, p-value;
    a model method that cannot run is one row with its reason in ``note``."""
    cells: dict[tuple[str, str, Any], Row] = {}
    for r in rows:
        if r["family"] != "model":
            continue
        key = (r["method"], r["label"], r["strength"])
        cell = cells.setdefault(key, {"method": r["method"], "attack": r["label"],
                                      "strength": r["strength"], "model_detected": None,
                                      "task_psnr": None, "p_value": None, "note": ""})
        if r["metric"] in ("model_detected", "task_psnr", "p_value"):
            cell[r["metric"]] = r["value"]
        if r["note"]:
            cell["note"] = r["note"]
    return list(cells.values())


def format_cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.1e}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def to_markdown(result: BenchmarkResult) -> str:
    """The headline table, unavailable entrants and skipped photos, as Markdown."""
    s = result.settings
    lines = ["# neuralmark benchmark", "",
             f"{len(result.photos)} photos at {s.size}², sweeps {'quick' if s.quick else 'full'}"
             f", key message {s.key_message}, FPR over {s.fpr_keys} random keys per photo."]
    heads = headline(result.rows)
    if heads:  # a run of model methods only has no content table
        lines += ["", "| " + " | ".join(HEADLINE) + " |", "|" + "---|" * len(HEADLINE)]
        lines += ["| " + " | ".join(format_cell(row[c]) for c in HEADLINE) + " |"
                  for row in heads]
    models = model_table(result.rows)
    if models:
        lines += ["", "Model watermarks through the model attacks (their shipped host; "
                  "task_psnr: the host's own task on its test patches):", "",
                  "| " + " | ".join(MODEL_HEADLINE) + " |", "|" + "---|" * len(MODEL_HEADLINE)]
        lines += ["| " + " | ".join(format_cell(row[c]) for c in MODEL_HEADLINE) + " |"
                  for row in models]
    skipped = [r for r in result.rows if r["metric"] == "skipped_image"]
    if skipped:
        lines += ["", "Photos left out:", ""] + [f"- {r['note']}" for r in skipped]
    lines += ["", "bit_acc_mean / tpr_mean / worst: over every swept (attack, strength); "
              "tpr: share of marked photos detected at the method's own level; fpr_clean: "
              "calibrated on clean photos against random keys; forgery: success rate of the "
              "most successful of the copy, residual-copy and mean-shift attacks; removal: "
              "black-box removal success within the method's own PSNR; "
              "whitebox_removal: APGD-L2 removal against the public decoder / scanner, or the "
              "shipped remover (visible_gan's V), within the same PSNR (whitebox_psnr: "
              "attacked vs marked); ms per image at batch 1. "
              "The full table is benchmark.csv."]
    return "\n".join(lines) + "\n"


def _colours(rows: Sequence[Row]) -> dict[str, str]:
    """One colour per method, the same in every panel and figure."""
    methods = sorted({r["method"] for r in rows if r["family"] not in _NOT_CONTENT})
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def attack_figure(rows: Sequence[Row], attack: str) -> Figure:
    """Bit accuracy and TPR against strength for one attack, one line per method.

    Raises:
        ValueError: no row of this attack has a value.
    """
    fig = _figure(8.0, 3.0)
    axes = fig.subplots(1, 2)
    colours = _colours(rows)
    drawn = False
    for ax, metric in zip(axes, ("bit_accuracy", "detection_rate"), strict=True):
        curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            if r["attack"] == attack and r["metric"] == metric and r["value"] is not None:
                curves[r["method"]].append((float(r["strength"]), float(r["value"])))
        for method, points in sorted(curves.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", ms=3, label=method, color=colours[method])
            drawn = True
        ax.set_title(f"{attack}: {metric.replace('_', ' ')}")
        ax.set_xlabel("strength")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if not drawn:
        raise ValueError(f"no values for attack {attack!r}")
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8)
    axes[1].legend(fontsize="small")
    return fig


def timing_figure(rows: Sequence[Row]) -> Figure:
    """Embed and verify ms per image against resolution, one line per method (log scales)."""
    fig = _figure(8.0, 3.0)
    axes = fig.subplots(1, 2)
    colours = _colours(rows)
    for ax, metric in zip(axes, ("embed_ms", "verify_ms"), strict=True):
        curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            if r["attack"] == "timing_resolution" and r["metric"] == metric \
                    and r["value"] is not None:
                curves[r["method"]].append((float(r["strength"]), max(float(r["value"]), 1e-3)))
        for method, points in sorted(curves.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", ms=3, label=method, color=colours[method])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{metric.replace('_', ' ')} per image")
        ax.set_xlabel("side, px")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="small")
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def figures(rows: Sequence[Row]) -> dict[str, Figure]:
    """``attack_<name>`` for every swept attack with values, and ``timing`` when timed."""
    out: dict[str, Figure] = {}
    attacks = dict.fromkeys(r["attack"] for r in rows
                            if r["attack"] not in _SWEPT_OUT and r["family"] not in _NOT_CONTENT)
    for attack in attacks:
        try:
            out[f"attack_{attack}"] = attack_figure(rows, attack)
        except ValueError:
            continue
    if any(r["attack"] == "timing_resolution" and r["value"] is not None for r in rows):
        out["timing"] = timing_figure(rows)
    return out


def to_html(result: BenchmarkResult, figs: dict[str, Figure] | None = None) -> str:
    """A self-contained HTML page: the headline table, then every figure inline."""
    figs = figures(result.rows) if figs is None else figs
    head = "".join(f"<th>{html.escape(c)}</th>" for c in HEADLINE)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(row[c]))}</td>"
                                    for c in HEADLINE) + "</tr>" for row in headline(result.rows))
    skipped = "".join(f"<li>{html.escape(r['note'])}</li>" for r in result.rows
                      if r["metric"] == "skipped_image")
    models = model_table(result.rows)
    model_html = ("<h2>Model watermarks through the model attacks</h2><table><tr>"
                  + "".join(f"<th>{html.escape(c)}</th>" for c in MODEL_HEADLINE) + "</tr>"
                  + "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(row[c]))}</td>"
                                             for c in MODEL_HEADLINE) + "</tr>"
                            for row in models) + "</table>") if models else ""
    images = "".join(f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" '
                     f'src="data:image/png;base64,{_png(fig)}">' for name, fig in figs.items())
    md_note = to_markdown(result).splitlines()[2]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>neuralmark benchmark"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style>"
            f"</head><body><h1>neuralmark benchmark</h1><p>{html.escape(md_note)}</p>"
            f"<table><tr>{head}</tr>{body}</table>{model_html}"
            + (f"<h2>Photos left out</h2><ul>{skipped}</ul>" if skipped else "")
            + f"<h2>Curves</h2>{images}</body></html>\n")


#: ``BenchmarkSettings`` fields that ``neuralmark benchmark`` has a flag for
_CLI_FIELDS = {"methods", "peers", "attacks", "model_methods", "model_attacks", "quick", "size",
               "limit", "fpr_keys", "whitebox_steps", "batch_sizes", "resolutions", "forgery",
               "forgery_targets", "device"}


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
    args += ["--size", str(settings["size"])]
    if settings.get("limit") is not None:
        args += ["--limit", str(settings["limit"])]
    args += ["--fpr-keys", str(settings["fpr_keys"]),
             "--whitebox-steps", str(settings["whitebox_steps"])]
    for option, field in (("--batch-sizes", "batch_sizes"), ("--resolutions", "resolutions")):
        if settings.get(field) is not None:
            args += [option, ",".join(str(v) for v in settings[field])]
    if not settings.get("forgery", True):
        args.append("--no-forgery")
    if settings.get("forgery_targets"):
        args += ["--forgery-targets", str(settings["forgery_targets"])]
    if settings.get("device", "auto") != "auto":
        args += ["--device", str(settings["device"])]
    defaults = BenchmarkSettings().model_dump(mode="json")
    unflagged = {k: v for k, v in settings.items()
                 if k not in _CLI_FIELDS and k in defaults and v != defaults[k]}
    command = shlex.join(args)
    if unflagged:  # set through the Python API / pipeline YAML: say so, do not drop them
        command += "  # and, without a flag: " + ", ".join(
            f"{k}={v}" for k, v in sorted(unflagged.items()))
    return command


def run_description(settings: Mapping[str, Any], photos: Sequence[str],
                    images: str | None) -> dict[str, Any]:
    """What ``benchmark.json`` holds: the settings, the photos and the command."""
    return {"settings": dict(settings), "photos": list(photos),
            "images": images, "command": settings_command(settings, images)}


def write_reports(result: BenchmarkResult, out_dir: str | os.PathLike,
                  images: str | None = None) -> dict[str, Path]:
    """``benchmark.csv``, ``benchmark.md``, ``benchmark.html`` and ``benchmark.json`` (the
    settings, photos and command: what a model card's section states) in ``out_dir``.

    Args:
        result: the benchmark.
        out_dir: where the files go (created).
        images: the photo folder the run read (``None``: the held-out split).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(result.rows)
    run = run_description(result.settings.model_dump(mode="json"), result.photos, images)
    return {"csv": write_csv(result.rows, out / "benchmark.csv"),
            "md": atomic_write_text(out / "benchmark.md", to_markdown(result)),
            "html": atomic_write_text(out / "benchmark.html", to_html(result, figs)),
            "json": atomic_write_text(out / RUN_FILE, json.dumps(run, indent=2) + "\n")}
