"""Great Expectations validation of a dataset manifest (``neuralmark.components.data.manifest``).

Per-row facts are first measured with PIL (does the file fully decode, its
actual mode, size and sha256, how many splits its group spans) and joined to
the manifest in one pandas DataFrame; a GX 1.x suite then checks that frame
through an ephemeral context, a pandas data source, a dataframe asset, a
whole-dataframe batch definition and a ``ValidationDefinition``.

``great_expectations`` is imported inside the functions: its import costs
seconds, and importing ``steps`` must stay cheap. The ZenML step wrapping
``validate_manifest`` lives elsewhere.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from neuralmark.components.data.manifest import MANIFEST_COLUMNS, SPLITS
from neuralmark.components.files import atomic_write_text

logger = logging.getLogger(__name__)

#: columns measured from the files and added beside the manifest's own
FACT_COLUMNS = ["readable", "actual_mode", "actual_width", "actual_height",
                "actual_sha256", "group_n_splits"]
#: how many offending values/paths a result keeps
MAX_EXAMPLES = 20


@dataclass
class DataValidationReport:
    """The outcome of ``validate_manifest``.

    Attributes:
        success: every expectation passed.
        results: one dict per expectation: ``expectation`` (our name, e.g.
            ``files_readable``), ``type`` (the GX expectation type),
            ``column``, ``success`` and ``details`` (counts, example values
            and the manifest paths of offending rows, or the exception).
        html: a self-contained HTML page of the results.
        manifest: the manifest validated.
        stats: rows, groups and rows per split.
    """

    success: bool
    results: list[dict[str, Any]]
    html: str = ""
    manifest: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def failed(self) -> list[str]:
        """Names of the expectations that failed."""
        return [r["expectation"] for r in self.results if not r["success"]]

    def to_dict(self, include_html: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict (``html`` only when asked: it repeats ``results``)."""
        out = {"success": self.success, "manifest": self.manifest, "stats": self.stats,
               "failed": self.failed(), "results": self.results}
        if include_html:
            out["html"] = self.html
        return _jsonable(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataValidationReport:
        """Inverse of ``to_dict`` (the HTML is re-rendered when absent)."""
        report = cls(success=bool(data["success"]), results=list(data["results"]),
                     html=data.get("html", ""), manifest=data.get("manifest", ""),
                     stats=dict(data.get("stats", {})))
        if not report.html:
            report.html = render_html(report)
        return report


class DataValidationError(RuntimeError):
    """Raised by callers when a manifest fails validation; carries the report."""

    def __init__(self, report: DataValidationReport, message: str | None = None) -> None:
        self.report = report
        super().__init__(message or (
            f"data validation failed for {report.manifest or 'manifest'}: "
            f"{', '.join(report.failed()) or 'no expectation ran'}"
        ))


# -- facts ----------------------------------------------------------------------

def _file_facts(file: Path) -> dict[str, Any]:
    """Open, fully decode and hash one file; ``None`` for what cannot be measured."""
    facts: dict[str, Any] = {"readable": False, "actual_mode": None, "actual_width": None,
                             "actual_height": None, "actual_sha256": None}
    try:
        data = file.read_bytes()
    except OSError:
        return facts
    facts["actual_sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            facts["actual_mode"] = im.mode
            facts["actual_width"], facts["actual_height"] = im.size
            im.load()
        facts["readable"] = True
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        logger.debug("cannot decode %s: %s", file, err)
    return facts


def manifest_facts(manifest_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Manifest rows (all as strings) joined with the facts measured from their files.

    Args:
        manifest_path: the ``manifest.csv`` file.

    Returns:
        One dict per row: the manifest's columns (empty cells as ``None``) plus
        ``FACT_COLUMNS``.
    """
    manifest_path = Path(manifest_path)
    with manifest_path.open(newline="", encoding="utf-8") as f:
        rows = [{k: (v if v != "" else None) for k, v in rec.items() if k is not None}
                for rec in csv.DictReader(f)]
    splits_of_group: dict[Any, set] = {}
    for row in rows:
        if row.get("group") is not None:
            splits_of_group.setdefault(row["group"], set()).add(row.get("split"))
    for row in rows:
        path = row.get("path")
        facts = (_file_facts(manifest_path.parent / path) if path else
                 {"readable": False, "actual_mode": None, "actual_width": None,
                  "actual_height": None, "actual_sha256": None})
        row.update(facts)
        group = row.get("group")
        row["group_n_splits"] = len(splits_of_group[group]) if group is not None else None
    return rows


# -- expectations ----------------------------------------------------------------

def _suite_spec(min_size: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, GX expectation class, kwargs) of every check, in report order."""
    return [
        ("manifest_columns", "ExpectTableColumnsToMatchSet",
         {"column_set": MANIFEST_COLUMNS + FACT_COLUMNS, "exact_match": True}),
        ("path_not_null", "ExpectColumnValuesToNotBeNull", {"column": "path"}),
        ("group_not_null", "ExpectColumnValuesToNotBeNull", {"column": "group"}),
        ("files_readable", "ExpectColumnValuesToBeInSet",
         {"column": "readable", "value_set": [True]}),
        ("mode_rgb", "ExpectColumnValuesToBeInSet",
         {"column": "actual_mode", "value_set": ["RGB"]}),
        ("width_at_least_min_size", "ExpectColumnValuesToBeBetween",
         {"column": "actual_width", "min_value": min_size}),
        ("height_at_least_min_size", "ExpectColumnValuesToBeBetween",
         {"column": "actual_height", "min_value": min_size}),
        ("sha256_matches_file", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "sha256", "column_B": "actual_sha256",
          "ignore_row_if": "neither"}),
        ("sha256_unique", "ExpectColumnValuesToBeUnique", {"column": "sha256"}),
        ("split_known", "ExpectColumnValuesToBeInSet",
         {"column": "split", "value_set": list(SPLITS)}),
        ("group_in_one_split", "ExpectColumnValuesToBeBetween",
         {"column": "group_n_splits", "min_value": 1, "max_value": 1}),
        ("every_split_non_empty", "ExpectColumnDistinctValuesToContainSet",
         {"column": "split", "value_set": list(SPLITS)}),
    ]


def _jsonable(obj: Any) -> Any:
    """Deep-convert numpy scalars, tuples and sets to plain JSON types."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    return str(obj)


def _details(result: Any, paths: list[Any]) -> dict[str, Any]:
    """The useful part of a GX result: counts, examples, offending manifest paths."""
    info = result.exception_info or {}
    # GX reports one exception at the top level, or one per failed metric
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            return {"exception": str(candidate.get("exception_message"))}
    raw = dict(result.result or {})
    keep = ("element_count", "unexpected_count", "unexpected_percent", "missing_count",
            "observed_value", "partial_unexpected_list", "partial_missing_list", "details")
    details = {k: raw[k] for k in keep if k in raw}
    if "partial_unexpected_list" in details:
        details["partial_unexpected_list"] = details["partial_unexpected_list"][:MAX_EXAMPLES]
    index = raw.get("partial_unexpected_index_list") or []
    offending = [paths[i] for i in index[:MAX_EXAMPLES]
                 if isinstance(i, int) and 0 <= i < len(paths)]
    if offending:
        details["paths"] = offending
    return _jsonable(details)


def _gx_context() -> Any:
    """An in-memory GX context without progress bars or analytics."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def validate_manifest(manifest_path: str | os.PathLike,
                      min_size: int = 64) -> DataValidationReport:
    """Validate a dataset manifest and the files it lists.

    Checks: the columns are the manifest's, every path and group is set, every file
    opens and fully decodes, is RGB and at least ``min_size`` px a side, its
    sha256 matches the manifest and is unique, every split is one of
    ``train``/``val``/``test`` and none is empty, and every group lies in
    exactly one split (splits are disjoint).

    Args:
        manifest_path: the ``manifest.csv`` file.
        min_size: smallest accepted width and height, in pixels.

    Returns:
        The report; ``report.success`` is False when any expectation failed
        (this function does not raise on bad data).

    Raises:
        FileNotFoundError: the manifest itself does not exist.
    """
    import pandas as pd

    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest {manifest_path} does not exist")
    rows = manifest_facts(manifest_path)
    columns = list(rows[0]) if rows else MANIFEST_COLUMNS + FACT_COLUMNS
    df = pd.DataFrame(rows, columns=columns)

    spec = _suite_spec(min_size)
    results = _run_suite(df, spec, "manifest")
    stats = {
        "rows": len(df),
        "groups": int(df["group"].nunique()) if "group" in df else 0,
        "rows_per_split": ({str(k): int(v) for k, v in df["split"].value_counts().items()}
                           if "split" in df else {}),
    }
    report = DataValidationReport(success=all(r["success"] for r in results), results=results,
                                  manifest=str(manifest_path), stats=stats)
    report.html = render_html(report)
    if not report.success:
        logger.warning("manifest %s failed: %s", manifest_path, ", ".join(report.failed()))
    return report


# -- output -----------------------------------------------------------------------

def _summary(details: dict[str, Any]) -> str:
    if "exception" in details:
        return f"error: {details['exception']}"
    parts = []
    if "unexpected_count" in details:
        parts.append(f"{details['unexpected_count']} of {details.get('element_count', '?')} "
                     "rows unexpected")
    if details.get("partial_missing_list"):
        parts.append(f"missing: {details['partial_missing_list']}")
    mismatched = (details.get("details") or {}).get("mismatched")
    if mismatched:
        parts.append(f"columns mismatched: {mismatched}")
    elif details.get("observed_value") is not None:
        parts.append(f"observed: {details['observed_value']}")
    if details.get("paths"):
        parts.append("paths: " + ", ".join(map(str, details["paths"][:5])))
    elif details.get("partial_unexpected_list"):
        parts.append("values: " + ", ".join(map(str, details["partial_unexpected_list"][:5])))
    return "; ".join(parts)


def _target_kind_html(kinds: dict[str, int]) -> str:
    """Header lines on ChestX-ray8 debone targets: counts, and plainly when approximated."""
    from neuralmark.components.data.bone_suppression import TARGET_KIND

    if not kinds:
        return ""
    esc = html.escape
    total = sum(kinds.values())
    listing = ", ".join(f"{n} {esc(kind)}" for kind, n in kinds.items())
    out = [f"<p>Bone-suppressed targets (domain B), per pair: <strong>{listing}</strong> "
           f"(of {total}).</p>"]
    approximated = kinds.get(TARGET_KIND, 0)
    if approximated:
        share = "All" if approximated == total else f"{approximated} of {total}"
        out.append(
            f'<p class="warn"><strong>{share} targets are a classical approximation</strong> '
            "of rib suppression (<code>components/data/bone_suppression.py</code>), not real "
            "bone-suppressed radiographs and not the network seed 001 used. A model trained "
            "on these pairs learns the approximation; say so wherever its results are "
            "reported.</p>")
    else:
        out.append("<p>Every target was supplied by the user (real bone-suppressed images); "
                   "none is the classical approximation.</p>")
    return "".join(out)


def render_html(report: DataValidationReport) -> str:
    """A self-contained HTML page: overall status, stats and one row per expectation.

    When the stats carry ``target_kind`` counts (ChestX-ray8 debone), the header
    states them and says plainly when targets are a classical approximation.
    """
    esc = html.escape
    status = "PASSED" if report.success else "FAILED"
    colour = "#1a7f37" if report.success else "#cf222e"
    rows = []
    for r in report.results:
        ok = r["success"]
        rows.append(
            f'<tr class="{"ok" if ok else "bad"}"><td>{"&#10003;" if ok else "&#10007;"}</td>'
            f"<td>{esc(r['expectation'])}</td><td><code>{esc(str(r['type']))}</code></td>"
            f"<td>{esc(str(r['column'] or ''))}</td>"
            f"<td>{esc(_summary(r['details']))}</td></tr>"
        )
    stats = esc(json.dumps(report.stats, sort_keys=True))
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        "<title>neuralmark data validation</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "tr.ok td:first-child{background:#dafbe1;color:#1a7f37}"
        "tr.bad td:first-child{background:#ffebe9;color:#cf222e}"
        "tr.bad{background:#fff5f5}"
        ".warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px}"
        "</style></head><body>"
        f'<h1>Data validation: <span style="color:{colour}">{status}</span></h1>'
        f"<p>Manifest: <code>{esc(report.manifest)}</code></p>"
        f"{_target_kind_html(report.stats.get('target_kind') or {})}"
        f"<p>Stats: <code>{stats}</code></p>"
        "<table><tr><th></th><th>expectation</th><th>GX type</th><th>column</th>"
        f"<th>details</th></tr>{''.join(rows)}</table></body></html>\n"
    )


def write_report(report: DataValidationReport, directory: str | os.PathLike) -> Path:
    """Write ``validation.html`` and ``validation.json`` into ``directory`` atomically.

    Args:
        report: the validation report.
        directory: output folder (created).

    Returns:
        The path of ``validation.html``; ``validation.json`` sits beside it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "validation.json",
                      json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    html_path = directory / "validation.html"
    atomic_write_text(html_path, report.html or render_html(report))
    return html_path


# -- prepared datasets (neuralmark.components.data.prepare) --------------------------------------

#: facts ``validate_prepared`` adds beside ``FACT_COLUMNS``
PREPARED_FACT_COLUMNS = ["pair_complete", "label_value"]
#: prefix of the columns holding ``extra`` fields a recipe declares (``extra_target_kind``)
EXTRA_PREFIX = "extra_"


def _prepared_spec(columns: list[str], expect: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """The GX checks of one prepared dataset, built from its ``RecipeExpectations``."""
    extra_columns = [EXTRA_PREFIX + k for k in expect.extra_values]
    spec: list[tuple[str, str, dict[str, Any]]] = [
        ("manifest_columns", "ExpectTableColumnsToMatchSet",
         {"column_set": columns + FACT_COLUMNS + PREPARED_FACT_COLUMNS + extra_columns,
          "exact_match": True}),
        ("path_not_null", "ExpectColumnValuesToNotBeNull", {"column": "path"}),
        ("path_unique", "ExpectColumnValuesToBeUnique", {"column": "path"}),
        ("group_not_null", "ExpectColumnValuesToNotBeNull", {"column": "group"}),
        ("files_readable", "ExpectColumnValuesToBeInSet",
         {"column": "readable", "value_set": [True]}),
        ("mode_allowed", "ExpectColumnValuesToBeInSet",
         {"column": "actual_mode", "value_set": list(expect.modes)}),
        ("mode_matches_file", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "mode", "column_B": "actual_mode", "ignore_row_if": "neither"}),
        ("width_matches_file", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "width", "column_B": "actual_width", "ignore_row_if": "neither"}),
        ("height_matches_file", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "height", "column_B": "actual_height", "ignore_row_if": "neither"}),
        ("sha256_matches_file", "ExpectColumnPairValuesToBeEqual",
         {"column_A": "sha256", "column_B": "actual_sha256", "ignore_row_if": "neither"}),
        ("split_known", "ExpectColumnValuesToBeInSet",
         {"column": "split", "value_set": list(SPLITS)}),
        ("group_in_one_split", "ExpectColumnValuesToBeBetween",
         {"column": "group_n_splits", "min_value": 1, "max_value": 1}),
        ("domain_known", "ExpectColumnValuesToBeInSet",
         {"column": "domain", "value_set": list(expect.domains)}),
        ("pair_complete", "ExpectColumnValuesToBeInSet",
         {"column": "pair_complete", "value_set": [True]}),
        ("width_is_size", "ExpectColumnValuesToBeBetween",
         {"column": "actual_width", "min_value": expect.size, "max_value": expect.size}),
        ("height_is_size", "ExpectColumnValuesToBeBetween",
         {"column": "actual_height", "min_value": expect.size, "max_value": expect.size}),
    ]
    if expect.label_range is not None:
        lo, hi = expect.label_range
        spec += [("label_not_null", "ExpectColumnValuesToNotBeNull", {"column": "label_value"}),
                 ("label_in_range", "ExpectColumnValuesToBeBetween",
                  {"column": "label_value", "min_value": lo, "max_value": hi})]
    for key, allowed in expect.extra_values.items():
        spec += [(f"{key}_not_null", "ExpectColumnValuesToNotBeNull",
                  {"column": EXTRA_PREFIX + key}),
                 (f"{key}_known", "ExpectColumnValuesToBeInSet",
                  {"column": EXTRA_PREFIX + key, "value_set": list(allowed)})]
    return spec


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _extra(value: Any) -> dict[str, Any]:
    """The manifest's ``extra`` cell as a dict (empty when absent or not a JSON object)."""
    try:
        parsed = json.loads(value) if value else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _run_suite(df: Any, spec: list[tuple[str, str, dict[str, Any]]],
               name: str) -> list[dict[str, Any]]:
    """Run ``spec`` on ``df`` through an ephemeral GX context; one result dict per entry."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = _gx_context()
    asset = context.data_sources.add_pandas(name).add_dataframe_asset("rows")
    batch_definition = asset.add_batch_definition_whole_dataframe("all_rows")
    suite = gx.ExpectationSuite(name=f"{name}_suite")
    for exp_name, cls_name, kwargs in spec:
        suite.add_expectation(getattr(gxe, cls_name)(**kwargs, meta={"name": exp_name}))
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch_definition, suite=suite))
    outcome = definition.run(batch_parameters={"dataframe": df},
                             result_format={"result_format": "COMPLETE",
                                            "partial_unexpected_count": MAX_EXAMPLES})
    paths = df["path"].tolist() if "path" in df else []
    by_name = {res.expectation_config.meta.get("name"): res for res in outcome.results}
    results = []
    for exp_name, _, kwargs in spec:
        res = by_name[exp_name]
        results.append({
            "expectation": exp_name,
            "type": res.expectation_config.type,
            "column": kwargs.get("column") or (
                f"{kwargs['column_A']}={kwargs['column_B']}" if "column_A" in kwargs else None),
            "success": bool(res.success),
            "details": _details(res, paths),
        })
    return results


def target_kind_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many pairs (rows, for unpaired data) carry each ``extra["target_kind"]``.

    ChestX-ray8's debone recipe records whether each B target was supplied by
    the user or is the classical approximation; rows without the field are not
    counted. Empty when no row has it.
    """
    kinds: dict[str, str] = {}
    for row in rows:
        kind = _extra(row.get("extra")).get("target_kind")
        if kind is not None:
            kinds.setdefault(row.get("pair") or row.get("path") or "", str(kind))
    counts: dict[str, int] = {}
    for kind in kinds.values():
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def validate_prepared(manifest_path: str | os.PathLike, expectations: Any) -> DataValidationReport:
    """Validate a prepared dataset's manifest (``components.data.prepare``) and its files.

    What is checked comes from the recipe (``DatasetRecipe.expectations``), not
    from a table here: the columns are ``PREPARED_COLUMNS``; paths are set and
    unique; every file fully decodes, its mode is one of ``expectations.modes``
    and its mode, size and sha256 match the manifest; every image is
    ``expectations.size``²; splits are known and disjoint by group; every
    domain is one of the recipe's; every pair has one row per domain (each A
    its B and vice versa); labels, when the recipe has a ``label_range``, are
    set and inside it (CIFAR-10: 0..9); declared ``extra_values`` fields are
    set and allowed (ChestX-ray8: ``target_kind``). The report's stats count
    ``target_kind`` per pair when rows carry it, and its HTML says plainly when
    targets are a classical approximation.

    Args:
        manifest_path: the prepared ``manifest.csv``.
        expectations: ``RecipeExpectations`` (or its ``to_dict()``, as the
            prepare report carries it).

    Returns:
        The report (``success`` False when any expectation failed; no raise on bad data).

    Raises:
        FileNotFoundError: the manifest does not exist.
    """
    import pandas as pd

    from neuralmark.components.data.datasets import RecipeExpectations
    from neuralmark.components.data.prepare import PREPARED_COLUMNS

    expect = (expectations if isinstance(expectations, RecipeExpectations)
              else RecipeExpectations.from_dict(expectations))
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest {manifest_path} does not exist")
    domains = list(expect.domains)
    rows = manifest_facts(manifest_path)
    members: dict[str, set] = {}
    for row in rows:
        if row.get("pair") is not None:
            members.setdefault(row["pair"], set()).add(row.get("domain"))
    for row in rows:
        pair = row.get("pair")
        if expect.paired:
            row["pair_complete"] = pair is not None and members.get(pair) == set(domains)
        else:
            row["pair_complete"] = pair is None
        row["label_value"] = _int_or_none(row.get("label"))
        for col in ("width", "height"):
            row[col] = _int_or_none(row.get(col))
        extra = _extra(row.get("extra"))
        for key in expect.extra_values:
            value = extra.get(key)
            row[EXTRA_PREFIX + key] = None if value is None else str(value)
    extra_columns = [EXTRA_PREFIX + k for k in expect.extra_values]
    columns = list(rows[0]) if rows else (PREPARED_COLUMNS + FACT_COLUMNS
                                          + PREPARED_FACT_COLUMNS + extra_columns)
    df = pd.DataFrame(rows, columns=columns)
    manifest_columns = [c for c in columns if c not in FACT_COLUMNS
                        and c not in PREPARED_FACT_COLUMNS and c not in extra_columns]
    spec = _prepared_spec(PREPARED_COLUMNS, expect)
    if manifest_columns != PREPARED_COLUMNS:
        # columns are checked by GX; the others need the expected columns to exist
        spec = [s for s in spec if s[0] == "manifest_columns"
                or all(k not in s[2] or s[2][k] in df for k in ("column", "column_A",
                                                                 "column_B"))]
    results = _run_suite(df, spec, "prepared")
    stats: dict[str, Any] = {
        "dataset": expect.dataset,
        "rows": len(df),
        "groups": int(df["group"].nunique()) if "group" in df else 0,
        "rows_per_split": ({str(k): int(v) for k, v in df["split"].value_counts().items()}
                           if "split" in df else {}),
        "domains": domains,
        "size": expect.size,
    }
    kinds = target_kind_counts(rows)
    if kinds:
        stats["target_kind"] = kinds
    report = DataValidationReport(success=all(r["success"] for r in results), results=results,
                                  manifest=str(manifest_path), stats=stats)
    report.html = render_html(report)
    if not report.success:
        logger.warning("prepared manifest %s failed: %s", manifest_path,
                       ", ".join(report.failed()))
    return report


def validate_training_manifest(manifest_path: str | os.PathLike,
                               min_size: int = 64) -> DataValidationReport:
    """Validate the manifest a training run reads, with the suite its format calls for.

    A sample-set manifest (``MANIFEST_COLUMNS``) gets ``validate_manifest``; a labelled one
    (``PREPARED_COLUMNS``: procedural classes, or the training view of a prepared dataset)
    gets ``validate_prepared`` with the expectations recorded beside it (size, label
    range, …), and must hold non-empty train / val / test splits.

    Args:
        manifest_path: the ``manifest.csv`` (or ``training_view.csv``).
        min_size: smallest accepted side (sample manifests; a prepared one has its own size).

    Raises:
        FileNotFoundError: the manifest does not exist.
        InputError: a labelled manifest without its ``.prepared.json`` expectations.
    """
    from neuralmark.components.data.labelled import prepared_expectations
    from neuralmark.components.data.prepare import PREPARED_COLUMNS

    manifest_path = Path(manifest_path)
    with manifest_path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if header != PREPARED_COLUMNS:
        return validate_manifest(manifest_path, min_size=min_size)
    import pandas as pd

    report = validate_prepared(manifest_path, prepared_expectations(manifest_path))
    splits = pd.read_csv(manifest_path, dtype=str, usecols=["split"])
    report.results += _run_suite(splits, [
        ("every_split_non_empty", "ExpectColumnDistinctValuesToContainSet",
         {"column": "split", "value_set": list(SPLITS)})], "training_splits")
    report.success = all(r["success"] for r in report.results)
    report.html = render_html(report)
    return report
