"""The output_mark evaluation as Markdown: the seed's Table 1, the attack matrix, FP, ablations.

Everything here reads the tidy rows of :func:`.matrix.evaluation_rows` (method,
attack, label, metric, value, n, stage) and returns text; nothing is measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from neuralmark.components.data.pairs import target_kind
from neuralmark.components.methods.output_mark.matrix import STAGES

_HEADS = {"stage1": "deep, stage 1 only (†)", "stage2": "deep, with stage 2",
          "spread_spectrum": "spread spectrum 64 bit"}


def matrix_table(rows: Sequence[Mapping[str, Any]], metric: str = "success_rate") -> str:
    """Markdown table: one line per cell, one column per stage (the seed's Tables 2–3).

    Success rates print as percentages, other metrics with three decimals, a
    missing (cell, stage) as ``–``.
    """
    cells: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["metric"] == metric and r.get("stage") in STAGES:
            cells.setdefault(r["label"], {})[r["stage"]] = float(r["value"])
    stages = [s for s in STAGES if any(s in v for v in cells.values())]
    lines = ["| cell | " + " | ".join(_HEADS[s] for s in stages) + " |",
             "|---|" + "---|" * len(stages)]
    for label, values in cells.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * values[s]:.0f}%" if s in values and metric == "success_rate"
            else (f"{values[s]:.3f}" if s in values else "–") for s in stages) + " |")
    return "\n".join(lines)


def score_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the mean score per cell and stage (NC; baseline: bit accuracy)."""
    merged = [{**r, "metric": "score"} for r in rows
              if r["metric"] in ("nc_mean", "bit_accuracy_mean") and r.get("stage") in STAGES
              and str(r["attack"]).startswith("surrogate_")]
    return matrix_table(merged, metric="score")


def _table1(t1: Mapping[tuple[str, str], float]) -> list[str]:
    lines = ["## Table 1: invisibility and extraction on held-out outputs", "",
             "| extractor | PSNR B′ vs B (dB) | SSIM | NC on B′ | SR on B′ | NC clean B | "
             "FPR clean B |", "|---|---|---|---|---|---|---|"]
    for stage in ("stage1", "stage2"):
        if (stage, "psnr_marked") in t1:
            lines.append(f"| {stage} | {t1[(stage, 'psnr_marked')]:.2f} | "
                         f"{t1[(stage, 'ssim_marked')]:.4f} | {t1[(stage, 'nc_marked')]:.4f} | "
                         f"{100 * t1[(stage, 'sr_marked')]:.0f}% | "
                         f"{t1[(stage, 'nc_clean_B_mean')]:.3f} | "
                         f"{100 * t1[(stage, 'fpr_clean_B')]:.0f}% |")
    if ("stage2", "psnr_task_marked") in t1:
        lines += ["", "## Task-specific variant: H is the marked model, vs a plain M "
                  "(against the targets)", "",
                  "| model | PSNR vs target (dB) | SSIM vs target |", "|---|---|---|",
                  f"| H (marked, task-specific) | {t1[('stage2', 'psnr_task_marked')]:.2f} | "
                  f"{t1[('stage2', 'ssim_task_marked')]:.4f} |",
                  f"| plain M (no mark) | {t1[('stage2', 'psnr_task_baseline')]:.2f} | "
                  f"{t1[('stage2', 'ssim_task_baseline')]:.4f} |"]
    return lines


def report_markdown(rows: Sequence[Mapping[str, Any]], task: str) -> str:
    """The seed's tables in Markdown: Table 1, the matrix (SR and mean score), FP, ablations.

    Args:
        rows: rows of :func:`.matrix.evaluation_rows`.
        task: ``derain`` or ``debone`` (the title says what its targets are).
    """
    t1 = {(r["stage"], r["metric"]): float(r["value"]) for r in rows
          if r["label"] == "none" and r["method"] == "output_mark"}
    parts = [f"# output_mark evaluation ({task}; targets: {target_kind(task)})", "",
             *_table1(t1),
             "", "## Surrogate attack matrix: success rate (NC > threshold; baseline: "
             "p ≤ alpha)", "", matrix_table(rows), "",
             "## Mean score per cell (NC; baseline: bit accuracy)", "",
             score_table(rows), ""]
    fp = [r for r in rows if str(r["attack"]).startswith("clean_")]
    if fp:
        parts += ["## False positives: outputs of an independently trained model (and of each "
                  "cell's clean twin, a surrogate of the unmarked M)", "",
                  "| source | extractor | metric | value |", "|---|---|---|---|"]
        parts += [f"| {str(r['attack']).removeprefix('clean_')} | {r['stage']} | {r['metric']} "
                  f"| {float(r['value']):.4g} |" for r in fp]
        parts.append("")
    abl = [r for r in rows if r.get("stage") == "ablation"]
    if abl:
        parts += ["## Ablations (stage 1)", "", "| ablation | metric | value |", "|---|---|---|"]
        parts += [f"| {r['label'].removeprefix('ablation_')} | {r['metric']} | "
                  f"{float(r['value']):.4f} |" for r in abl]
        parts.append("")
    return "\n".join(parts)


__all__ = ["matrix_table", "report_markdown", "score_table"]
