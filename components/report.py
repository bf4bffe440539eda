"""A tidy evaluation report: long-format rows, scalar summary, free-form extras.

Pure data, no orchestration or tracking imports. ``integrations/materializers.py`` stores a
``Report`` as ``report.json`` (the whole object) + ``rows.csv`` (the table that
notebooks and plots read), and ``integrations/tracking.py`` logs it to MLflow.

Example:
    >>> r = Report(rows=[{"attack": "jpeg", "strength": 50, "metric": "bit_accuracy",
    ...                   "value": 0.97}], summary={"bit_accuracy": 0.97})
    >>> Report.from_json(r.to_json()) == r
    True
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    """Result of an evaluation.

    Attributes:
        rows: tidy table, one dict per measurement (e.g. ``method, attack,
            strength, metric, value``). Values must be JSON-serialisable
            scalars; rows may have different keys (missing cells are empty).
        summary: scalar headline numbers (what the gate and MLflow metrics use).
        extra: any other JSON-serialisable information (configs, notes).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- JSON --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable; non-finite floats become ``None``)."""
        return {
            "rows": [{k: _jsonable(v) for k, v in row.items()} for row in self.rows],
            "summary": {k: _jsonable(float(v)) for k, v in self.summary.items()},
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict` (``None`` summary values come back as NaN)."""
        unknown = set(data) - {"rows", "summary", "extra"}
        if unknown:
            raise ValueError(f"unknown report fields: {sorted(unknown)}")
        summary = {
            k: (math.nan if v is None else float(v)) for k, v in data.get("summary", {}).items()
        }
        return cls(
            rows=[dict(r) for r in data.get("rows", [])],
            summary=summary,
            extra=dict(data.get("extra", {})),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Parse a string written by :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    # -- tables ------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """Union of the row keys, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for k in row:
                seen.setdefault(k, None)
        return list(seen)

    def rows_to_csv(self) -> str:
        """The rows as CSV text (header = :attr:`columns`; empty string if no rows)."""
        if not self.rows:
            return ""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()

    def to_markdown(self, max_rows: int = 50) -> str:
        """Human-readable summary + the first ``max_rows`` rows as Markdown tables."""
        lines = ["## Summary", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in self.summary.items()]
        cols = self.columns
        if cols:
            lines += ["", f"## Rows ({len(self.rows)})", "",
                      "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for row in self.rows[:max_rows]:
                lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
            if len(self.rows) > max_rows:
                lines.append(f"\n… {len(self.rows) - max_rows} more rows in rows.csv")
        own = self.extra.get("method_markdown") if isinstance(self.extra, dict) else None
        if own:
            lines += ["", "## Method-specific tables", "", own.rstrip()]
        return "\n".join(lines) + "\n"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
