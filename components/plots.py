"""Figures drawn from the suite table, from image batches, and from the evidence of
model watermarks (the surrogate attack matrix, extracted logos, NC distributions).

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas (no
pyplot global state, no display needed), returned to the caller, who saves
them (``fig.savefig``) or logs them (``mlflow.log_figure`` in a step).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuralmark.components.metrics import psnr

_RATE_METRICS = {"bit_accuracy", "detection_rate", "false_positive_rate", "unreadable_rate",
                 "p_value_median", "ssim"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def robustness_curves(rows: Sequence[Mapping[str, Any]], metric: str = "bit_accuracy") -> Figure:
    """One panel per attack: ``metric`` vs strength, one line per method.

    Attacks without a numeric strength (``none``, ``combo``) get no panel; the
    ``none`` value is drawn in every panel as a dotted reference line.

    Args:
        rows: suite rows (``run_suite`` / ``rows_from_csv``).
        metric: which metric to plot.

    Raises:
        ValueError: no row has this metric with a numeric strength.
    """
    curves: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    reference: dict[str, float] = {}
    for r in rows:
        if r["metric"] != metric:
            continue
        if r["strength"] is None:
            if r["attack"] == "none":
                reference[r["method"]] = float(r["value"])
            continue
        curves[r["attack"]][r["method"]].append((float(r["strength"]), float(r["value"])))
    if not curves:
        raise ValueError(f"no rows with metric {metric!r} and a numeric strength to plot")

    attacks = sorted(curves)
    ncols = min(4, len(attacks))
    nrows = math.ceil(len(attacks) / ncols)
    fig = _figure(3.2 * ncols, 2.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for method, points in sorted(curves[attack].items()):
            xs, ys = zip(*sorted(points), strict=True)
            line = ax.plot(xs, ys, marker="o", ms=3, label=method)[0]
            if method in reference:
                ax.axhline(reference[method], color=line.get_color(), ls=":", lw=1)
        ax.set_title(attack)
        ax.set_xlabel("strength")
        ax.set_ylabel(metric)
        if metric in _RATE_METRICS:
            ax.set_ylim(-0.02, 1.02)
        if metric == "bit_accuracy":
            ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(attacks):]:
        ax.set_visible(False)
    if len({m for c in curves.values() for m in c}) > 1:
        axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{metric} under attack")
    return fig


def _hwc(img: torch.Tensor) -> Any:
    return img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()  # h w c


def example_grid(clean: torch.Tensor, marked: torch.Tensor, n: int = 4,
                 amplify: float = 10.0) -> Figure:
    """Rows: original / marked / amplified residual ``|marked − clean|`` as a heat map.

    Args:
        clean: B×3×H×W in [0, 1].
        marked: B×3×H×W in [0, 1].
        n: columns (first ``min(n, B)`` images).
        amplify: residual gain before clipping to [0, 1].
    """
    if clean.shape != marked.shape or clean.ndim != 4:
        raise ValueError(f"clean {tuple(clean.shape)} and marked {tuple(marked.shape)} "
                         "must be equal B×3×H×W")
    n = max(1, min(n, clean.shape[0]))
    clean, marked = clean[:n].detach().float(), marked[:n].detach().float()
    scores = psnr(marked, clean).tolist()  # n
    residual = ((marked - clean).abs().mean(dim=1) * amplify).clamp(0, 1)  # n h w
    fig = _figure(2.4 * n, 7.2)
    axes = fig.subplots(3, n, squeeze=False)
    image = None
    for j in range(n):
        axes[0, j].imshow(_hwc(clean[j]))
        axes[0, j].set_title(f"PSNR {scores[j]:.1f} dB", fontsize="small")
        axes[1, j].imshow(_hwc(marked[j]))
        image = axes[2, j].imshow(residual[j].cpu().numpy(), cmap="magma", vmin=0, vmax=1)
    for i, name in enumerate(("original", "marked", f"|residual| ×{amplify:g}")):
        axes[i, 0].set_ylabel(name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[2, :].tolist(), shrink=0.8)
    return fig


Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def curve(xs: Sequence[float] | Series, ys: Sequence[float] | None = None, xlabel: str = "",
          ylabel: str = "", title: str = "") -> Figure:
    """A generic line plot; several lines when ``xs`` is ``{name: (xs, ys)}``.

    Used e.g. for bit accuracy vs rotation per EM round
    (``{"round 1": (angles, accs), "round 2": ...}``).

    Args:
        xs: x values, or a mapping of line name to ``(xs, ys)``.
        ys: y values (only with a plain ``xs``).
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: figure title.
    """
    if isinstance(xs, Mapping):
        if ys is not None:
            raise ValueError("pass ys only with a plain xs sequence, not with a series mapping")
        series = dict(xs)
    else:
        if ys is None:
            raise ValueError("curve needs ys when xs is a sequence")
        series = {"": (xs, ys)}
    if not series:
        raise ValueError("curve needs at least one line")
    fig = _figure(5.0, 3.5)
    ax = fig.subplots()
    for name, (x, y) in series.items():
        x, y = list(map(float, x)), list(map(float, y))
        if len(x) != len(y):
            raise ValueError(f"line {name!r}: {len(x)} x values but {len(y)} y values")
        ax.plot(x, y, marker="o", ms=3, label=name or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(series):
        ax.legend(fontsize="small")
    return fig


def certified_accuracy_plot(rows: Sequence[Mapping[str, Any]],
                            metric: str = "certified_accuracy") -> Figure:
    """Certified accuracy vs L2 radius, one colour per method.

    Draws ``metric`` (solid) and, when present, ``<metric>_stamped`` (dashed)
    and ``<metric>_clean`` (dotted) from ``certified_rows`` output.

    Args:
        rows: tidy rows (``adversarial_evaluation.certified_rows`` / ``rows_from_csv``).
        metric: the overall metric name.

    Raises:
        ValueError: no row has this metric with a numeric strength (radius).
    """
    styles = {metric: ("-", "all"), f"{metric}_stamped": ("--", "stamped"),
              f"{metric}_clean": (":", "clean")}
    lines: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["metric"] in styles and r["strength"] is not None:
            lines[r["method"]][r["metric"]].append((float(r["strength"]), float(r["value"])))
    if not any(metric in by_metric for by_metric in lines.values()):
        raise ValueError(f"no rows with metric {metric!r} and a radius to plot")
    fig = _figure(5.0, 3.5)
    ax = fig.subplots()
    for i, (method, by_metric) in enumerate(sorted(lines.items())):
        color = f"C{i}"
        for name, (style, part) in styles.items():
            if name not in by_metric:
                continue
            xs, ys = zip(*sorted(by_metric[name]), strict=True)
            ax.plot(xs, ys, ls=style, color=color, marker="o" if name == metric else None,
                    ms=3, label=f"{method} ({part})")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("certified accuracy vs radius")
    return fig


def attack_success_plot(rows: Sequence[Mapping[str, Any]],
                        metrics: Sequence[str] = ("attack_success_rate",
                                                  "detection_rate_adversarial")) -> Figure:
    """Grouped bars per adversarial attack label, one bar per method, a panel per metric.

    A panel for ``detection_rate_adversarial`` also draws each method's
    ``detection_rate_unattacked`` as a dashed reference line.

    Args:
        rows: tidy rows (``adversarial_evaluation.adversarial_rows`` / ``rows_from_csv``).
        metrics: metrics to draw (those absent from ``rows`` are skipped).

    Raises:
        ValueError: none of ``metrics`` is in ``rows``.
    """
    values: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    reference: dict[str, float] = {}
    for r in rows:
        if r["metric"] in metrics:
            values[r["metric"]][r["label"]][r["method"]] = float(r["value"])
        elif r["metric"] == "detection_rate_unattacked":
            reference[r["method"]] = float(r["value"])
    present = [m for m in metrics if m in values]
    if not present:
        raise ValueError(f"no rows with any of the metrics {list(metrics)}")
    methods = sorted({m for per_label in values.values() for v in per_label.values() for m in v})
    fig = _figure(max(4.0, 1.2 + 1.1 * max(len(values[m]) for m in present)) * len(present), 3.6)
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    width = 0.8 / len(methods)
    for ax, metric in zip(axes, present, strict=True):
        labels = sorted(values[metric])
        for i, method in enumerate(methods):
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(labels))]
            ys = [values[metric][lab].get(method, math.nan) for lab in labels]
            bars = ax.bar(xs, ys, width=width, color=f"C{i}", label=method)
            ax.bar_label(bars, fmt="%.2f", fontsize="x-small")
            if metric == "detection_rate_adversarial" and method in reference:
                ax.axhline(reference[method], color=f"C{i}", ls="--", lw=1)
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    if len(methods) > 1:
        axes[0].legend(fontsize="small")
    fig.suptitle("adversarial robustness of the scanner")
    return fig


# -- model watermarks through outputs (output_mark) ------------------------------------------
def matrix_heatmap(rows: Sequence[Mapping[str, Any]], stages: Sequence[str],
                   metric: str = "success_rate") -> Figure:
    """Heatmap of a surrogate attack matrix: cells (labels) × stages, annotated with the value.

    Args:
        rows: tidy rows with ``label``, ``metric``, ``value`` and ``stage``
            (``output_mark.matrix.cell_rows``).
        stages: the columns, in order (rows of other stages are ignored).
        metric: which metric to draw (success rates print as percentages).

    Raises:
        ValueError: no row has ``metric`` and one of ``stages``.
    """
    labels: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["metric"] == metric and r.get("stage") in stages:
            if r["label"] not in labels:
                labels.append(r["label"])
            values[(r["label"], r["stage"])] = float(r["value"])
    if not values:
        raise ValueError(f"no matrix rows with metric {metric!r}")
    cols = [s for s in stages if any(k[1] == s for k in values)]
    grid = torch.full((len(labels), len(cols)), math.nan)                      # cells stages
    for (lab, stage), v in values.items():
        grid[labels.index(lab), cols.index(stage)] = v
    fig = _figure(2.2 + 1.6 * len(cols), 0.9 + 0.42 * len(labels))
    ax = fig.add_subplot()
    im = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [s.replace("_", " ") for s in cols])
    ax.set_yticks(range(len(labels)), [lab.removeprefix("surrogate_") for lab in labels])
    for i in range(len(labels)):
        for j in range(len(cols)):
            v = float(grid[i, j])
            if math.isfinite(v):
                ax.text(j, i, f"{100 * v:.0f}%" if metric == "success_rate" else f"{v:.2f}",
                        ha="center", va="center", color="black" if v > 0.6 else "white")
    ax.set_title(f"surrogate attack matrix: {metric.replace('_', ' ')}")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def logo_grid(logos: torch.Tensor, reference: torch.Tensor, names: Sequence[str],
              ncs: Sequence[float], threshold: float, max_items: int = 24) -> Figure:
    """The reference logo, then the logo extracted from each suspect output with its NC.

    Args:
        logos: N×3×S×S extracted logos in [0, 1].
        reference: 3×S×S the owner's logo.
        names: N file names (titles).
        ncs: N NC values.
        threshold: NC success threshold (titles say hit ✓ / miss ✗).
        max_items: draw at most this many estimates.
    """
    n = min(len(names), max_items)
    cols = min(6, n + 1)
    rows = math.ceil((n + 1) / cols)
    fig = _figure(1.9 * cols, 2.1 * rows)
    items = [("reference logo", reference, None)] + [
        (names[i], logos[i], float(ncs[i])) for i in range(n)]
    for i, (title, img, nc) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_hwc(img), interpolation="nearest")
        if nc is not None:
            title = f"{title[:14]}\nNC {nc:.3f} {'✓' if nc > threshold else '✗'}"
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return fig


def nc_histogram(ncs: Sequence[float], threshold: float,
                 null_scores: Sequence[float] = ()) -> Figure:
    """Distribution of the suspect outputs' NC against the threshold and the clean NC.

    Args:
        ncs: NC of each suspect output.
        threshold: success threshold (vertical line).
        null_scores: calibrated NC of clean images (drawn for comparison when given).
    """
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    lo = min([*ncs, *null_scores, threshold]) - 0.02
    bins = torch.linspace(lo, 1.0, 41).tolist()
    if null_scores:
        ax.hist(list(null_scores), bins=bins, density=True, alpha=0.45, color="gray",
                label=f"clean images (calibration, n={len(null_scores)})")
    ax.hist(list(ncs), bins=bins, density=bool(null_scores), alpha=0.8, color="tab:red",
            label=f"suspect outputs (n={len(ncs)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("NC of R's extraction with the owner's logo")
    ax.set_ylabel("density" if null_scores else "outputs")
    ax.legend(fontsize=7)
    return fig


def value_heatmap(cells: Sequence[tuple[str, str, float]], title: str = "") -> Figure:
    """Heatmap of ``(row, column, value)`` triples, annotated (e.g. trigger_key's
    uniqueness: hosts × keys, the distance d).

    Raises:
        ValueError: no cell.
    """
    if not cells:
        raise ValueError("value_heatmap needs at least one cell")
    rows = list(dict.fromkeys(c[0] for c in cells))
    cols = list(dict.fromkeys(c[1] for c in cells))
    grid = torch.full((len(rows), len(cols)), math.nan)                       # rows cols
    for r, c, v in cells:
        grid[rows.index(r), cols.index(c)] = float(v)
    fig = _figure(2.2 + 1.2 * len(cols), 1.0 + 0.45 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(grid[i, j])
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
