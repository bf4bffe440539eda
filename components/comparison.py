"""Side-by-side tables of several trained variants, in the shape of a paper's tables.

Input: one flat summary per variant (``evaluation.summarize`` + calibration +
adversarial/certified rows, i.e. ``Report.summary``). Output: named tables,
each a list of row dicts, and their Markdown. For ``anti_forward`` these are
the seed's tables (DeepRAFT):

- ``imperceptibility``: PSNR / SSIM of stamped vs original per variant (Table 2).
- ``detection``: per attack, detection accuracy on stamped images and on clean
  images (1 − false-positive rate) (Table 1), plus the calibrated FPR.
- ``adversarial``: attack success rate and robust detection per adversarial
  attack (Table 3), judged by the (smoothed) classifier and by ``verify`` (the
  deployed rule), when the summaries have them.
- ``certified``: certified accuracy per L2 radius, when present.

A table whose metrics no variant has is left out rather than printed empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Summary = Mapping[str, float]
Table = list[dict[str, object]]


def _labels(summaries: Mapping[str, Summary], prefix: str) -> list[str]:
    seen: dict[str, None] = {}
    for summary in summaries.values():
        for key in summary:
            if key.startswith(prefix):
                seen.setdefault(key[len(prefix):], None)
    return list(seen)


def _get(summary: Summary, key: str) -> float:
    value = summary.get(key)
    return math.nan if value is None else float(value)


def variant_tables(summaries: Mapping[str, Summary]) -> dict[str, Table]:
    """Build the comparison tables from ``variant -> summary``.

    Raises:
        ValueError: no summaries.
    """
    if not summaries:
        raise ValueError("no variants to compare")
    tables: dict[str, Table] = {
        "imperceptibility": [
            {"variant": v, "psnr": _get(s, "psnr"), "ssim": _get(s, "ssim")}
            for v, s in summaries.items()],
        "detection": [
            {"variant": v, "attack": lab,
             "stamped_detected": _get(s, f"detection_rate/{lab}"),
             "clean_correct": 1.0 - _get(s, f"fpr/{lab}")}
            for lab in _labels(summaries, "detection_rate/") for v, s in summaries.items()]
        + [{"variant": v, "attack": "calibrated FPR", "stamped_detected": math.nan,
            "clean_correct": 1.0 - _get(s, "fpr")} for v, s in summaries.items() if "fpr" in s],
    }
    adversarial = [
        {"variant": v, "attack": lab,
         "attack_success_rate": _get(s, f"attack_success_rate/{lab}"),
         "detection_rate_adversarial": _get(s, f"detection_rate_adversarial/{lab}"),
         "detection_rate_adversarial_verify": _get(
             s, f"detection_rate_adversarial_verify/{lab}")}
        for lab in dict.fromkeys(_labels(summaries, "detection_rate_adversarial/")
                                 + _labels(summaries, "attack_success_rate/"))
        for v, s in summaries.items()]
    if adversarial:
        tables["adversarial"] = adversarial
    certified = [
        {"variant": v, "radius": lab.removeprefix("certified_l2_"),
         "certified_accuracy": _get(s, f"certified_accuracy/{lab}")}
        for lab in _labels(summaries, "certified_accuracy/") for v, s in summaries.items()]
    if certified:
        tables["certified"] = certified
    return tables


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def tables_markdown(tables: Mapping[str, Table]) -> str:
    """Markdown: one ``## name`` section with a table per entry of ``tables``."""
    out: list[str] = []
    for name, rows in tables.items():
        if not rows:
            continue
        cols = list(dict.fromkeys(c for r in rows for c in r))
        out += [f"## {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
        out.append("")
    return "\n".join(out)
