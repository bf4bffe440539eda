"""Evaluate a method bundle on the sample test split (``neuralmark evaluate``).

The same components as the training pipeline's evaluation
(``neuralmark.components.robustness.robustness_report``: ``run_suite`` over the profile's suite
plus ``calibrate_fpr``), without a ZenML stack: the bundle is read from disk,
the tidy table is written to ``<project>/reports/evaluation-<method>-<profile>-<time>/``
and the headline numbers are returned, with what the profile's gate would say.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuralmark.components.data.manifest import load_split
from neuralmark.components.evaluation import embed_all, rows_to_csv
from neuralmark.components.files import atomic_write_text
from neuralmark.components.gate import decide
from neuralmark.components.methods.base import Callbacks, InputError
from neuralmark.integrations.loading import load_method
from neuralmark.runtime.settings import CODE_ROOT, resolve

HEADLINE = ("psnr", "ssim", "bit_accuracy_mean_attacked", "detection_rate/none",
            "detection_rate_mean_attacked", "fpr", "fpr_ci_high", "fpr_trials")


#: per-label metrics worth printing (bits when the method has them, else detection)
HEADLINE_PREFIXES = ("bit_accuracy/", "attack_success_rate/", "attack_success_rate_verify/",
                     "certified_accuracy/")


def headline(summary: Mapping[str, float]) -> dict[str, float]:
    """The summary metrics worth printing: ``HEADLINE``, every per-label bit accuracy,
    adversarial success and certified accuracy; per-label detection rates for
    methods without bits."""
    has_bits = any(k.startswith("bit_accuracy/") for k in summary)
    return {k: float(v) for k, v in summary.items()
            if k in HEADLINE or k.startswith(HEADLINE_PREFIXES)
            or (not has_bits and k.startswith("detection_rate/"))}


def run_evaluation(method: str = "pgd_signer", bundle: str | os.PathLike | None = None,
                   profile: str = "tiny", callbacks: Sequence[Any] | None = None, *,
                   overrides: Mapping[str, Any] | None = None,
                   project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``bundle`` (default: the shipped one) with the profile's evaluation settings.

    Args:
        method: registry key; the bundle must hold this method.
        bundle: bundle directory (default ``components/pretrained/<method>/``).
        profile: profile whose ``data``, ``evaluation`` and ``policy`` are used.
        callbacks: progress sinks (``on_progress``), e.g. the CLI's bar.
        overrides: ``{"data"|"evaluation"|"policy": {...}}`` over the profile.
        project_root: where ``data/`` and ``reports/`` live (default: this checkout).

    Returns:
        ``bundle``, ``images``, ``summary`` (headline metrics), ``metrics`` (every
        summary metric), ``gate`` (the profile policy's decision, no champion
        compared), ``csv`` (the tidy table) and ``reports_dir`` (the folder holding it,
        ``report.json`` and ``report.md``).

    Raises:
        InputError: unknown method/profile, bad overrides, or no such bundle.
    """
    from neuralmark.components.robustness import robustness_report

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {"data", "evaluation", "policy"})
    if unknown:
        raise InputError(f"unknown override section(s) {unknown}; expected data, evaluation, "
                         "policy")
    settings = resolve(method, profile, **overrides)
    root = Path(project_root or CODE_ROOT).resolve()
    source = str(bundle) if bundle is not None else method
    wm = load_method(source, "cpu", expect=method)

    ev = settings.evaluation
    manifest = settings.data.build(root)
    clean = load_split(manifest, ev.split, limit=ev.limit)
    marked = embed_all(wm, clean, ev.key(), batch_size=ev.batch_size)
    report = robustness_report(wm, clean, marked, ev, progress=Callbacks.of(callbacks))

    out = root / "reports" / f"evaluation-{method}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    csv_path = rows_to_csv(report.rows, out / "robustness.csv")
    atomic_write_text(out / "report.json", report.to_json())
    atomic_write_text(out / "report.md", report.to_markdown())
    decision = decide(report.summary, None, settings.policy)
    return {
        "bundle": source,
        "images": int(clean.shape[0]),
        "summary": headline(report.summary),
        "metrics": dict(report.summary),
        "gate": {"promote": decision.promote, "reasons": decision.reasons,
                 "notes": decision.notes},
        "csv": str(csv_path),
        "reports_dir": str(out),
    }

