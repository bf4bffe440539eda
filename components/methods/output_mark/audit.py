"""The audit verdict as text: was a suspect model trained on our marked outputs?

``neuralmark audit`` scores a folder of a suspect model's outputs with
``OutputMark.verify_model``, draws the evidence (``neuralmark.components.plots``:
``logo_grid``, ``nc_histogram``) and writes this Markdown beside ``verdict.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def audit_markdown(verdict: Mapping[str, Any], files: Sequence[str],
                   unreadable: Mapping[str, str]) -> str:
    """The audit verdict as Markdown: decision, evidence, per-file NC, unreadable files.

    Args:
        verdict: ``Verdict.to_dict()`` of ``verify_model`` (``status``, ``reason``,
            ``score``, ``p_value``, ``extra`` with ``nc``, ``nc_mean``, ``nc_median``,
            ``threshold``).
        files: names of the outputs read, in the order of ``extra["nc"]``.
        unreadable: file name → why it could not be read.
    """
    extra = verdict.get("extra", {})
    ncs = extra.get("nc", [])
    status = verdict.get("status", "unreadable")
    lines = ["# output_mark audit", "",
             f"**Verdict: {str(status).replace('_', ' ')}** — {verdict.get('reason', '')}", "",
             f"- outputs read: {len(files)}; unreadable: {len(unreadable)}",
             f"- success rate (NC > {extra.get('threshold', 'threshold')}): "
             f"{float(verdict.get('score') or 0.0):.3f}"]
    if verdict.get("p_value") is not None:
        lines.append(f"- p-value (binomial under the calibrated clean rate): "
                     f"{float(verdict['p_value']):.3g}")
    if ncs:
        lines.append(f"- NC mean {float(extra.get('nc_mean', 0)):.4f}, "
                     f"median {float(extra.get('nc_median', 0)):.4f}")
        lines += ["", "| file | NC |", "|---|---|"]
        lines += [f"| {f} | {float(v):.4f} |" for f, v in zip(files, ncs, strict=False)]
    if unreadable:
        lines += ["", "## Unreadable files", "", "| file | problem |", "|---|---|"]
        lines += [f"| {f} | {why} |" for f, why in unreadable.items()]
    return "\n".join(lines) + "\n"


__all__ = ["audit_markdown"]
