"""Headline tables of pipeline results: what a person reads after ``train``, ``evaluate``,
``protect``.

The pipelines return everything they measured (``run_training``'s ``metrics`` holds
every summary metric, several per attack); these functions choose the few rows
worth reading — image quality, clean and attacked bit accuracy / detection, the
false-positive rate with its interval, the gate's decision with its reasons, the
registered version and the champion — and point to the full report on disk and to
the MLflow UI. Imports only rich and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

Row = tuple[str, str]

#: most gate reasons / notes printed; the rest are in the report
MAX_REASONS = 4


def _num(value: float, digits: int = 3) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _rate(value: float) -> str:
    """A rate that may be tiny (a false-positive rate, its bounds): 0, 2 significant
    digits under 0.001, else 3 decimals."""
    if math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 1e-3 else f"{value:.3f}"


def _family(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{label: value}`` of the metrics named ``<prefix><label>``."""
    return {k[len(prefix):]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _spread(values: Mapping[str, float], worst: Callable[..., str]) -> str:
    """``mean M; worst W (label)`` over ``values`` (``worst`` is ``min`` or ``max``)."""
    finite = {k: v for k, v in values.items() if not math.isnan(v)}
    if not finite:
        return "n/a"
    label = worst(finite, key=finite.__getitem__)
    mean = sum(finite.values()) / len(finite)
    if len(finite) == 1:
        return f"{_num(mean)} ({label})"
    return f"mean {_num(mean)}; worst {_num(finite[label])} ({label})"


def _clean_and_attacked(metrics: Mapping[str, float], name: str, key: str) -> list[Row]:
    family = _family(metrics, f"{key}/")
    rows: list[Row] = []
    if "none" in family:
        rows.append((f"{name}, clean", _num(family.pop("none"))))
    if family:
        rows.append((f"{name}, attacked", _spread(family, min)))
    return rows


def quality_rows(metrics: Mapping[str, float]) -> list[Row]:
    """Image quality, robustness and false positives, from a report's summary metrics.

    Args:
        metrics: flat summary metrics (``psnr``, ``bit_accuracy/<label>``,
            ``detection_rate/<label>``, ``fpr``, ``fpr_ci_low``/``_high``, ``fpr_trials``,
            ``attack_success_rate/<attack>``, ``certified_accuracy/<radius>``,
            ``sr_mean/<stage>``, …); missing ones are skipped.

    Returns:
        ``(name, value)`` rows, at most a dozen whatever the number of metrics.
    """
    rows: list[Row] = []
    if "psnr" in metrics:
        rows.append(("PSNR", f"{float(metrics['psnr']):.2f} dB"))
    if "ssim" in metrics:
        rows.append(("SSIM", _num(float(metrics["ssim"]), 4)))
    rows += _clean_and_attacked(metrics, "bit accuracy", "bit_accuracy")
    rows += _clean_and_attacked(metrics, "detection rate", "detection_rate")
    if not any(k.startswith("detection_rate/") for k in metrics) \
            and "detection_rate_mean_attacked" in metrics:
        rows.append(("detection rate, attacked (mean)",
                     _num(float(metrics["detection_rate_mean_attacked"]))))
    adversarial = _family(metrics, "detection_rate_adversarial/")
    if adversarial:
        rows.append(("detection rate, adversarial", _spread(adversarial, min)))
    success = _family(metrics, "attack_success_rate/")
    if success:
        rows.append(("adversarial attack success", _spread(success, max)))
    certified = _family(metrics, "certified_accuracy/")
    if certified:
        rows.append(("certified accuracy", "  ".join(
            f"{label.removeprefix('certified_l2_')}: {_num(v)}" for label, v in certified.items())))
    for stage, value in _family(metrics, "sr_mean/").items():
        rows.append((f"surrogate copies read ({stage})", _num(value)))
    if "fpr" in metrics:
        fpr = _rate(float(metrics["fpr"]))
        if "fpr_ci_low" in metrics and "fpr_ci_high" in metrics:
            fpr += (f"  (95% CI {_rate(float(metrics['fpr_ci_low']))}–"
                    f"{_rate(float(metrics['fpr_ci_high']))}")
            if "fpr_trials" in metrics:
                fpr += f", {int(metrics['fpr_trials'])} clean trials"
            fpr += ")"
        rows.append(("false-positive rate", fpr))
    return rows


def gate_rows(decision: Mapping[str, Any] | None) -> list[Row]:
    """The gate's decision, then its reasons (why not) and notes, a few of each."""
    if not decision:
        return []
    promote = bool(decision.get("promote"))
    rows: list[Row] = [("gate", "[green]passed[/]" if promote else "[yellow]refused[/]")]
    for label, items in (("  because", decision.get("reasons") or []),
                         ("  note", decision.get("notes") or [])):
        shown = list(items)[:MAX_REASONS]
        rows += [(label, escape(str(item))) for item in shown]
        if len(items) > len(shown):
            rows.append((label, f"… {len(items) - len(shown)} more in the report"))
    return rows


def registry_rows(result: Mapping[str, Any]) -> list[Row]:
    """Registered model and version, and which version is the champion now."""
    rows: list[Row] = []
    version = result.get("registered_version")
    if version is not None:
        rows.append(("registered", f"{escape(str(result.get('model_name', 'model')))} "
                                   f"version {escape(str(version))}"))
    if "champion_version" in result:
        champion = result["champion_version"]
        if champion is None:
            rows.append(("champion", "none yet"))
        elif result.get("promoted"):
            rows.append(("champion", f"version {escape(str(champion))} (this run)"))
        else:
            rows.append(("champion", f"version {escape(str(champion))} (kept; this run is "
                                     "the challenger)"))
    return rows


def _table(title: str, rows: list[Row]) -> Table:
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(escape(name), value)
    return table


def print_footer(console: Console, reports_dir: str | None, mlflow_ui: str | None) -> None:
    """Where the full report is (with the files in it), and the MLflow UI command."""
    if reports_dir:
        folder = Path(reports_dir)
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        listing = f"  ({', '.join(files)})" if files else ""
        console.print(f"Full report: {escape(str(folder))}{escape(listing)}", soft_wrap=True)
    if mlflow_ui:
        # on its own line, unwrapped, so it can be copied
        console.print("Open the MLflow UI (runs side by side, registry aliases):")
        console.print(f"  {escape(mlflow_ui)}", soft_wrap=True)


def print_training(console: Console, result: Mapping[str, Any], title: str) -> None:
    """Headline of a ``run_training`` / ``run_output_mark`` result (~20 rows at most)."""
    rows: list[Row] = []
    if result.get("run"):
        rows.append(("run", escape(str(result["run"]))))
    rows += quality_rows(result.get("metrics") or result.get("summary") or {})
    rows += gate_rows(result.get("decision"))
    rows += registry_rows(result)
    console.print(_table(title, rows))
    print_footer(console, result.get("reports_dir"), result.get("mlflow_ui"))


def print_evaluation(console: Console, result: Mapping[str, Any], title: str) -> None:
    """Headline of a ``run_evaluation`` result: quality, robustness, what the gate would say."""
    rows: list[Row] = []
    if result.get("bundle"):
        rows.append(("bundle", escape(str(result["bundle"]))))
    if result.get("images") is not None:
        rows.append(("test images", str(result["images"])))
    rows += quality_rows(result.get("metrics") or result.get("summary") or {})
    rows += gate_rows(result.get("gate"))
    console.print(_table(title, rows))
    print_footer(console, result.get("reports_dir"), result.get("mlflow_ui"))


def print_variants(console: Console, result: Mapping[str, Any], title: str) -> None:
    """One row per variant (quality, robustness, gate, registry), then where the tables are."""
    table = Table(title=escape(title), title_justify="left")
    for column in ("variant", "PSNR", "attacked", "FPR", "gate", "registered", "champion"):
        table.add_column(column)
    for variant, run in (result.get("variants") or {}).items():
        metrics = run.get("metrics") or run.get("summary") or {}
        attacked = next((value for name, value in quality_rows(metrics)
                         if name.endswith(", attacked")), "n/a")
        decision = run.get("decision") or {}
        table.add_row(
            escape(variant),
            f"{float(metrics['psnr']):.2f} dB" if "psnr" in metrics else "n/a",
            attacked,
            _rate(float(metrics["fpr"])) if "fpr" in metrics else "n/a",
            "passed" if decision.get("promote") else "refused",
            escape(str(run.get("registered_version", "n/a"))),
            escape(str(run.get("champion_version", "n/a"))),
        )
    console.print(table)
    print_footer(console, result.get("reports_dir"), result.get("mlflow_ui"))
