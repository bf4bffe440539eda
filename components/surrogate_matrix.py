"""The surrogate attack matrix of seed 001 and the pieces its pipeline steps call.

Zhang et al. (AAAI'20) judge a model watermark by what an attacker gets: a
surrogate SM trained on the protected service's (input, output) pairs. Its
Table 2 varies the surrogate's architecture (CNet, Res9, Res16, UNet; L2), its
Table 3 the loss (UNet with L1, L2, perceptual, adversarial and sums), each
with and without stage 2 (the "†" rows: R never fine-tuned on surrogate
outputs) and for a 64-bit spread-spectrum baseline (the "T-*" columns). A cell
is successful on a test output when R's extraction has NC > 0.95 with the logo;
the success rate (SR) of a cell is the share of its test outputs that are.

This module is the library behind ``pipelines/output_mark.py``; steps call one
function each and no training loop, loss or metric lives in a step:

* :func:`build_pairs` — (A, B) from clean images: derain synthesises rain per
  image (``neuralmark.components.data.rain``, one seed per item); debone turns each image
  into a gray "radiograph" A and suppresses rib-scale stripes for B with the
  *classical approximation* of ``neuralmark.components.data.bone_suppression`` (not the
  seed's CNN; every report says so through :func:`target_kind`).
  :func:`load_prepared_pairs` reads the A/B pairs of a prepared paired dataset
  (``voc_derain``, ``chestxray8``) instead.
* :func:`train_stage1` — M, then H/R/D (stage 1 only) on the H/R part of the
  training pairs; :func:`stage2_copy` — a *new* method whose R is fine-tuned on
  A, B, B′, B″ (the input is left untouched, so the matrix can score R before
  and after stage 2 on the same surrogate outputs).
* :func:`attack_pairs` — what the attacker trains on: the surrogate part's
  inputs and the service's outputs for them (B′ for the deep mark, the
  spread-spectrum-marked B for the baseline, :func:`baseline_attack_pairs`).
* :func:`attack_cell` — train one surrogate, return its outputs on test inputs.
* :func:`score_outputs`, :func:`cell_rows`, :func:`matrix_table`,
  :func:`matrix_heatmap` — per-output scores, tidy rows (the
  ``neuralmark.components.evaluation`` row format plus ``stage``), a Markdown table and a
  heatmap.
* :func:`ablation_rows` (no clean loss, no consistency loss) and
  :func:`independent_model_outputs` / :func:`false_positive_rows` (a plain model
  trained with another seed, which never saw B′).

Surrogates do not depend on R, so one trained surrogate per cell serves both the
stage-1 and the stage-2 extractor: the † comparison costs no extra training.

Shapes: images are ``N×3×H×W`` float32 in [0, 1]; methods resize to their
working size.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from neuralmark.components.data.bone_suppression import TARGET_KIND as DEBONE_TARGET_KIND
from neuralmark.components.data.bone_suppression import suppress_ribs
from neuralmark.components.data.manifest import load_image
from neuralmark.components.data.rain import REFERENCE_SIZE, add_rain, item_seed, sample_rain_params
from neuralmark.components.methods.base import (
    Callbacks,
    InputError,
    WatermarkKey,
    check_images,
    resize_square,
)
from neuralmark.components.methods.output_mark import (
    OutputMark,
    OutputMarkConfig,
    SurrogateSettings,
    apply_net,
    extraction_nc,
    parse_loss,
    surrogate_matrix_cells,
    train_protected_model,
    train_surrogate,
)
from neuralmark.components.methods.registry import build
from neuralmark.components.methods.spread_spectrum import SpreadSpectrum

TASKS: tuple[str, ...] = ("derain", "debone")
#: the extractor / mark a matrix row is scored with
STAGES: tuple[str, ...] = ("stage1", "stage2", "spread_spectrum")
#: ``neuralmark.components.evaluation.COLUMNS`` plus the stage
ROW_COLUMNS: tuple[str, ...] = ("method", "attack", "strength", "label", "metric", "value", "n",
                                "stage")
#: what a derain target is (the clean photo) vs a debone target (classical approximation)
DERAIN_TARGET_KIND = "clean-photo"
ABLATIONS: dict[str, dict[str, bool]] = {
    "no_clean_loss": {"clean_loss": False},
    "no_consistency_loss": {"consistency_loss": False},
}


# --------------------------------------------------------------------------- pairs
def target_kind(task: str) -> str:
    """What B is for ``task``: the clean photo (derain) or a classical approximation (debone)."""
    _check_task(task)
    return DERAIN_TARGET_KIND if task == "derain" else DEBONE_TARGET_KIND


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {list(TASKS)}")


def build_pairs(images: torch.Tensor, task: str, seed: int = 0,
                ids: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the host task's (A, B) pairs from clean images.

    Args:
        images: N×3×H×W clean images in [0, 1].
        task: ``derain`` — B = the image, A = B with synthesised rain (one
            ``item_seed(id, seed)`` per image, streak sizes scaled by H/400);
            ``debone`` — A = the image's gray level replicated to 3 channels,
            B = ``suppress_ribs(A)``, a *classical approximation* of rib
            suppression (``target_kind("debone")``), not the seed's network.
        seed: run-level salt of the per-item seeds.
        ids: one id per image (default ``"0", "1", …``); the same id and seed
            give the same rain.

    Returns:
        ``(A, B)``, both N×3×H×W float32 in [0, 1].

    Raises:
        InputError: bad images, unknown task, or ``ids`` of the wrong length.
    """
    _check_task(task)
    check_images(images, 8)
    x = images.detach().float().cpu()
    names = [str(i) for i in range(x.shape[0])] if ids is None else [str(i) for i in ids]
    if len(names) != x.shape[0]:
        raise InputError(f"{len(names)} ids for {x.shape[0]} images")
    if task == "debone":
        gray = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()   # n 3 h w
        return gray, suppress_ribs(gray)
    scale = min(x.shape[-2:]) / REFERENCE_SIZE
    rainy = []
    for img, name in zip(x, names, strict=True):
        s = item_seed(name, seed)
        rainy.append(add_rain(img, sample_rain_params(s, scale=scale), s))
    return torch.stack(rainy), x


def split_groups(manifest: str | Path, split: str, limit: int | None = None) -> list[str]:
    """The ``group`` (source photo) of every image of one split, in ``load_split``'s order.

    For a prepared paired manifest (``domain``/``pair`` columns), one group per
    complete pair, in :func:`load_prepared_pairs`' order (the group column, or
    the pair id when the column is empty).

    Raises:
        InputError: the manifest does not exist.
    """
    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    if rows and {"domain", "pair"} <= set(rows[0]):
        files: dict[str, dict[str, str]] = {}
        for r in rows:
            if r["domain"] in ("A", "B") and r["pair"]:
                files.setdefault(r["pair"], {})[r["domain"]] = r.get("group") or r["pair"]
        pairs = sorted(p for p, d in files.items() if set(d) == {"A", "B"})[:limit]
        return [files[p]["A"] for p in pairs]
    rows = rows if limit is None else rows[: max(limit, 0)]
    return [r.get("group") or r["path"] for r in rows]


def load_prepared_pairs(manifest: str | Path, split: str, size: int | None = None,
                        limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (A, B) pairs of one split of a *prepared* paired dataset.

    Prepared paired recipes (``voc_derain``, ``chestxray8``) write one manifest
    row per file with a ``domain`` (``A``/``B``) and a ``pair`` id
    (``neuralmark.components.data.prepare``); a pair is used when both files are listed.

    Args:
        manifest: the prepared dataset's ``manifest.csv``.
        split: ``train`` / ``val`` / ``test``.
        size: resize every image to ``size×size`` (needed for mixed sizes).
        limit: keep the first ``limit`` pairs (sorted by pair id).

    Returns:
        ``(A, B)``, N×3×S×S float32 in [0, 1].

    Raises:
        InputError: not a paired manifest, or no complete pair in the split.
    """
    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"prepared manifest {path} does not exist")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"domain", "pair", "path", "split"} <= set(rows[0]):
        raise InputError(f"{path} is not a paired prepared manifest (no domain/pair columns)")
    files: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["split"] == split and r["domain"] in ("A", "B") and r["pair"]:
            files.setdefault(r["pair"], {})[r["domain"]] = r["path"]
    pairs = sorted(p for p, d in files.items() if set(d) == {"A", "B"})[:limit]
    if not pairs:
        raise InputError(f"{path}: split {split!r} has no complete A/B pair")
    a = torch.stack([load_image(path.parent / files[p]["A"], size) for p in pairs])
    b = torch.stack([load_image(path.parent / files[p]["B"], size) for p in pairs])
    return a, b


# --------------------------------------------------------------------------- training
def _calibrate_heldout(method: OutputMark, a: torch.Tensor, gt: torch.Tensor) -> None:
    """Null NC distribution from clean images R never trained on (A, M(A), targets)."""
    method.reset_calibration()
    for name, x in (("heldout_A", a), ("heldout_B", method.model_outputs(a)),
                    ("heldout_target", gt)):
        method.calibrate(x, name)


def train_stage1(train_pairs: tuple[torch.Tensor, torch.Tensor],
                 config: OutputMarkConfig | Mapping[str, Any], key: WatermarkKey | None = None,
                 callbacks: Callbacks | Sequence[Any] = (), groups: Sequence[str] | None = None
                 ) -> tuple[OutputMark, dict[str, float]]:
    """Stage 1 only: the protected model M, then H, R and D on the H/R part.

    The pairs are split with ``method.split_indices`` (the seed's disjoint
    parts): H/R train on one part; the other (the surrogate part) is held out,
    calibrates the null NC distribution here and trains the stage-2 surrogate
    and the attack matrix later.

    Args:
        train_pairs: ``(A, B)`` N×3×H×W in [0, 1] (resized to the working size).
        config: ``output_mark`` config (or its fields).
        key: whose logo to hide when ``config.logo == "key"`` (default
            ``config.logo_secret``).
        callbacks: metrics/progress sinks.
        groups: source group (photo) of each training pair: whole groups go to
            one part, so calibration runs on photos R never saw.

    Returns:
        ``(method, metrics)``: the stage-1 method (``trained``, calibrated) and
        the last stage-1 training metrics plus ``time_model_s``,
        ``time_stage1_s``, ``n_hr``, ``n_surrogate``.
    """
    import time

    method = build("output_mark", config)
    if not isinstance(method, OutputMark):
        raise InputError("train_stage1 needs an output_mark config")
    c = method.config
    if key is not None:
        method.set_logo(c.logo, key)
    a, gt = method.working_pairs(train_pairs, "train pairs")
    if groups is not None and len(groups) != a.shape[0]:
        raise InputError(f"{len(groups)} groups for {a.shape[0]} training pairs")
    method.set_groups(groups)
    start = time.time()
    method.train_model(a, gt, callbacks)
    t_model = time.time() - start
    hr, sur = method.split_indices(a.shape[0])
    b = method.model_outputs(a)
    metrics = method.train_embedder(a[hr], b[hr], gt[hr], callbacks, step0=c.model_steps)
    _calibrate_heldout(method, a[sur], gt[sur])
    method.trained = True
    return method, {**metrics, "time_model_s": t_model,
                    "time_stage1_s": time.time() - start - t_model,
                    "n_hr": float(len(hr)), "n_surrogate": float(len(sur))}


def stage2_copy(method_stage1: OutputMark, train_pairs: tuple[torch.Tensor, torch.Tensor],
                callbacks: Callbacks | Sequence[Any] = ()) -> tuple[OutputMark, dict[str, float]]:
    """Stage 2 on a copy: surrogate SM on (A, B′) of the surrogate part, then fine-tune R.

    ``method_stage1`` is not changed (the matrix scores both extractors). SM is
    ``config.surrogate`` (UNet, L2 by default, the seed's white-box cell); R is
    fine-tuned on A, B, B′ and B″ = SM(A) of the H/R part, H stays frozen.

    Args:
        method_stage1: a method from :func:`train_stage1`.
        train_pairs: the same ``(A, B)`` training pairs.
        callbacks: metrics/progress sinks.

    Returns:
        ``(new method, metrics)``; metrics: ``nc_surrogate_before`` /
        ``_after`` and ``sr_surrogate_before`` / ``_after`` (R on SM's outputs
        for the surrogate part, before and after fine-tuning), the last
        fine-tuning metrics, ``time_stage2_s``.
    """
    import time

    start = time.time()
    method = copy.deepcopy(method_stage1)
    c = method.config
    a, gt = method.working_pairs(train_pairs, "train pairs")
    hr, sur = method.split_indices(a.shape[0])
    b = method.model_outputs(a)
    marked = method.marked_outputs(a)
    sm = train_surrogate(a[sur], marked[sur], config=c.surrogate, callbacks=callbacks)
    b2 = apply_net(sm, a, c.eval_batch)
    logo = method.logo.cpu()
    b2_clean = method.clean_surrogate_outputs(a, b, sur, hr, callbacks)
    before = extraction_nc(method.R, b2[sur], logo, c.eval_batch)
    fine = method.finetune_extractor(a[hr], b[hr], gt[hr], marked[hr], b2[hr], callbacks,
                                     step0=c.model_steps + c.steps, b_clean_second=b2_clean)
    after = extraction_nc(method.R, b2[sur], logo, c.eval_batch)
    _calibrate_heldout(method, a[sur], gt[sur])
    t = c.threshold
    return method, {**fine,
                    "nc_surrogate_before": float(before.mean()),
                    "sr_surrogate_before": float((before > t).float().mean()),
                    "nc_surrogate_after": float(after.mean()),
                    "sr_surrogate_after": float((after > t).float().mean()),
                    "time_stage2_s": time.time() - start}


def attack_pairs(method: OutputMark, train_pairs: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's training set: surrogate-part inputs A and the service's B′ for them.

    Returns:
        ``(A, B′)``, K×3×S×S at the working size (K = surrogate part).
    """
    a, _ = method.working_pairs(train_pairs, "train pairs")
    _, sur = method.split_indices(a.shape[0])
    return a[sur], method.marked_outputs(a[sur])


def baseline_config(method: OutputMark, overrides: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Spread-spectrum config at the deep method's working size (≥ 32), plus overrides."""
    return {"working_size": max(32, method.config.working_size), **dict(overrides or {})}


def baseline_attack_pairs(method: OutputMark, train_pairs: tuple[torch.Tensor, torch.Tensor],
                          baseline: SpreadSpectrum, key: WatermarkKey
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's training set against the baseline: A and SS-marked M(A) (surrogate part).

    Returns:
        ``(A, SS(B))``, K×3×S×S at the deep method's working size.
    """
    a, _ = method.working_pairs(train_pairs, "train pairs")
    _, sur = method.split_indices(a.shape[0])
    return a[sur], baseline.embed(method.model_outputs(a[sur]), key)


def attack_cell(marked_train_outputs: torch.Tensor, train_inputs: torch.Tensor,
                test_inputs: torch.Tensor, arch: str, loss: str,
                settings: SurrogateSettings | Mapping[str, Any],
                callbacks: Callbacks | Sequence[Any] = ()) -> torch.Tensor:
    """One cell of the matrix: train SM(arch, loss) on (inputs, marked outputs), run it on test.

    Args:
        marked_train_outputs: K×3×S×S the service's outputs (the attacker's targets).
        train_inputs: K×3×S×S the matching inputs.
        test_inputs: T×3×H×W test inputs (resized to S).
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet``.
        loss: ``+``-joined loss terms (see ``parse_loss``).
        settings: surrogate schedule (``SurrogateSettings`` fields; arch/loss ignored).
        callbacks: metrics/progress sinks.

    Returns:
        T×3×S×S surrogate outputs on the test inputs (B″), CPU.
    """
    s = settings if isinstance(settings, SurrogateSettings) else \
        SurrogateSettings.model_validate(dict(settings))
    sm = train_surrogate(train_inputs, marked_train_outputs, arch, loss, s, callbacks)
    size = marked_train_outputs.shape[-1]
    x = resize_square(test_inputs.float(), size)
    return apply_net(sm, x, s.batch_size * 4).clamp(0, 1)


def cell_name(arch: str, loss: str) -> str:
    """MLflow/step-safe cell label: ``surrogate_unet_l2_adversarial``."""
    parse_loss(loss)  # validates the terms
    return f"surrogate_{arch}_{'_'.join(p.strip().lower() for p in loss.split('+'))}"


def matrix_cells(cells: Sequence[Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """The cells to run: ``cells`` (``[arch, loss]`` pairs) or the seed's nine."""
    if cells is None:
        return surrogate_matrix_cells()
    out = []
    for cell in cells:
        if len(cell) != 2:
            raise InputError(f"a matrix cell is [arch, loss], got {list(cell)}")
        arch, loss = str(cell[0]), str(cell[1])
        try:
            SurrogateSettings(arch=arch, loss=loss)  # validates both
        except ValidationError as err:
            raise InputError(f"bad matrix cell [{arch}, {loss}]: "
                             f"{err.errors()[0]['msg']}") from None
        out.append((arch, loss))
    if len(set(out)) != len(out):
        raise InputError(f"duplicate matrix cells in {out}")
    return out


# --------------------------------------------------------------------------- scoring
def score_outputs(method: OutputMark | SpreadSpectrum, outputs: torch.Tensor,
                  key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output score and success of a method on N×3×H×W outputs.

    Returns:
        ``(scores, hits)``: N floats and N bools. Deep mark: NC of R's
        extraction with the key's logo, hit = NC > threshold (the seed's SR).
        A flat (unreadable) output is never a hit.
        Spread spectrum: bit accuracy, hit = detected (p ≤ alpha).
    """
    if isinstance(method, SpreadSpectrum):
        verdicts = method.verify(outputs, key)
        return (torch.tensor([float(v.bit_accuracy or 0.0) for v in verdicts]),
                torch.tensor([bool(v.detected) for v in verdicts]))
    return method.hits(outputs, key)


def cell_rows(method_name: str, stage: str, arch: str, loss: str, scores: torch.Tensor,
              hits: torch.Tensor) -> list[dict[str, Any]]:
    """Tidy rows of one matrix cell scored with one extractor.

    Args:
        method_name: ``output_mark`` or ``spread_spectrum``.
        stage: one of :data:`STAGES`.
        arch, loss: the cell.
        scores: N per-output scores (NC, or bit accuracy for the baseline).
        hits: N per-output successes.

    Returns:
        Rows in ``neuralmark.components.evaluation`` format plus ``stage``: metric
        ``success_rate`` and ``nc_mean`` (``bit_accuracy_mean`` for the baseline).
    """
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    name = cell_name(arch, loss)
    n = int(scores.numel())
    base = {"method": method_name, "attack": name, "strength": None, "label": name,
            "n": n, "stage": stage}
    score_metric = "bit_accuracy_mean" if method_name == "spread_spectrum" else "nc_mean"
    return [{**base, "metric": "success_rate", "value": float(hits.float().mean())},
            {**base, "metric": score_metric, "value": float(scores.float().mean())}]


def matrix_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Flat metrics of the matrix: ``sr/<stage>/<cell>`` and ``sr_mean/<stage>``."""
    out: dict[str, float] = {}
    per_stage: dict[str, list[float]] = {}
    for r in rows:
        if r["metric"] == "success_rate" and r.get("stage") in STAGES:
            out[f"sr/{r['stage']}/{r['label']}"] = float(r["value"])
            per_stage.setdefault(r["stage"], []).append(float(r["value"]))
    for stage, values in per_stage.items():
        out[f"sr_mean/{stage}"] = sum(values) / len(values)
    return out


def matrix_table(rows: Sequence[Mapping[str, Any]], metric: str = "success_rate") -> str:
    """Markdown table: one line per cell, one column per stage (the seed's Tables 2–3)."""
    cells: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["metric"] == metric and r.get("stage") in STAGES:
            cells.setdefault(r["label"], {})[r["stage"]] = float(r["value"])
    stages = [s for s in STAGES if any(s in v for v in cells.values())]
    head = {"stage1": "deep, stage 1 only (†)", "stage2": "deep, with stage 2",
            "spread_spectrum": "spread spectrum 64 bit"}
    lines = ["| cell | " + " | ".join(head[s] for s in stages) + " |",
             "|---|" + "---|" * len(stages)]
    for label, values in cells.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * values[s]:.0f}%" if s in values and metric == "success_rate"
            else (f"{values[s]:.3f}" if s in values else "–") for s in stages) + " |")
    return "\n".join(lines)


def matrix_heatmap(rows: Sequence[Mapping[str, Any]], metric: str = "success_rate") -> Any:
    """Heatmap of the matrix: cells × stages, annotated with the value.

    Args:
        rows: rows from :func:`cell_rows`.
        metric: which metric to draw.

    Returns:
        A matplotlib ``Figure`` (Agg canvas; the caller saves or logs it).

    Raises:
        ValueError: no row has ``metric`` and a stage.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["metric"] == metric and r.get("stage") in STAGES:
            if r["label"] not in labels:
                labels.append(r["label"])
            values[(r["label"], r["stage"])] = float(r["value"])
    if not values:
        raise ValueError(f"no matrix rows with metric {metric!r}")
    stages = [s for s in STAGES if any(k[1] == s for k in values)]
    grid = torch.full((len(labels), len(stages)), math.nan)
    for (lab, stage), v in values.items():
        grid[labels.index(lab), stages.index(stage)] = v
    fig = Figure(figsize=(2.2 + 1.6 * len(stages), 0.9 + 0.42 * len(labels)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(stages)), [s.replace("_", " ") for s in stages])
    ax.set_yticks(range(len(labels)), [lab.removeprefix("surrogate_") for lab in labels])
    for i in range(len(labels)):
        for j in range(len(stages)):
            v = float(grid[i, j])
            if math.isfinite(v):
                ax.text(j, i, f"{100 * v:.0f}%" if metric == "success_rate" else f"{v:.2f}",
                        ha="center", va="center", color="black" if v > 0.6 else "white")
    ax.set_title(f"surrogate attack matrix: {metric.replace('_', ' ')}")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


# --------------------------------------------------------------------------- tables, ablations
def quality_rows(method: OutputMark, test_pairs: tuple[torch.Tensor, torch.Tensor],
                 stage: str) -> list[dict[str, Any]]:
    """Table 1 on held-out pairs: PSNR/SSIM of B′ vs B, NC and SR on B′, clean NC/FPR.

    Returns:
        One row per ``method.quality`` metric (attack ``none``, label ``none``).
    """
    a, gt = method.working_pairs(test_pairs, "test pairs")
    q = method.quality(a, gt)
    return [{"method": "output_mark", "attack": "none", "strength": None, "label": "none",
             "metric": k, "value": float(v), "n": int(a.shape[0]), "stage": stage}
            for k, v in q.items()]


def ablation_rows(name: str, train_pairs: tuple[torch.Tensor, torch.Tensor],
                  test_pairs: tuple[torch.Tensor, torch.Tensor],
                  config: OutputMarkConfig | Mapping[str, Any], key: WatermarkKey | None = None,
                  callbacks: Callbacks | Sequence[Any] = (), groups: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """The seed's Figures 5–6: stage 1 without the clean or the consistency loss.

    Trains stage 1 with the switch off, then one UNet/L2 surrogate on its B′
    (surrogate part), and measures on the test pairs: NC on B′, on clean A and
    B (without the clean loss R should hallucinate the logo there: high NC,
    flagged clean images) and on the surrogate's outputs B″ (without the
    consistency loss the seed sees weak extraction there).

    Args:
        name: a key of :data:`ABLATIONS`.
        train_pairs, test_pairs: ``(A, B)`` N×3×H×W.
        config: the output_mark config the ablation starts from.
        key: the owner's key.
        callbacks: metrics/progress sinks.
        groups: source group of each training pair (see :func:`train_stage1`).

    Returns:
        Rows (attack ``ablation_<name>``, stage ``ablation``): ``nc_marked``,
        ``nc_clean_A``, ``nc_clean_B``, ``fpr_clean_B``, ``nc_surrogate``,
        ``sr_surrogate``.
    """
    if name not in ABLATIONS:
        raise InputError(f"unknown ablation {name!r}; expected one of {list(ABLATIONS)}")
    cfg = config.model_dump() if isinstance(config, OutputMarkConfig) else dict(config)
    method, _ = train_stage1(train_pairs, {**cfg, **ABLATIONS[name]}, key, callbacks, groups)
    key = key or WatermarkKey(method.config.logo_secret)
    c = method.config
    sa, sb = attack_pairs(method, train_pairs)
    ta, tgt = method.working_pairs(test_pairs, "test pairs")
    b2 = attack_cell(sb, sa, ta, "unet", "l2", c.surrogate, callbacks)
    tb = method.model_outputs(ta)
    measured = {"nc_marked": method.nc(method.marked_outputs(ta), key),
                "nc_clean_A": method.nc(ta, key), "nc_clean_B": method.nc(tb, key),
                "nc_surrogate": method.nc(b2, key)}
    values = {k: float(v.mean()) for k, v in measured.items()}
    values["fpr_clean_B"] = float(method.hits(tb, key)[1].float().mean())
    values["sr_surrogate"] = float(method.hits(b2, key)[1].float().mean())
    return [{"method": "output_mark", "attack": f"ablation_{name}", "strength": None,
             "label": f"ablation_{name}", "metric": k, "value": v, "n": int(ta.shape[0]),
             "stage": "ablation"} for k, v in values.items()]


def independent_model_outputs(train_pairs: tuple[torch.Tensor, torch.Tensor],
                              test_inputs: torch.Tensor, config: OutputMarkConfig,
                              seed_offset: int = 1000,
                              callbacks: Callbacks | Sequence[Any] = ()) -> torch.Tensor:
    """Outputs of a plain model of the same task that never saw B′ (for false positives).

    Trains M's architecture on the clean (A, B) pairs with seed
    ``config.seed + seed_offset`` and runs it on the test inputs.

    Returns:
        T×3×S×S outputs at the working size.
    """
    cfg = config.model_copy(update={"seed": config.seed + seed_offset})
    model = train_protected_model(train_pairs, cfg, callbacks)
    size = config.working_size
    x = resize_square(test_inputs.float(), size)
    return apply_net(model, x, config.eval_batch).clamp(0, 1)


def false_positive_rows(method: OutputMark | SpreadSpectrum, stage: str,
                        outputs: torch.Tensor, key: WatermarkKey,
                        source: str = "independent_model") -> list[dict[str, Any]]:
    """False positives on watermark-free outputs: per-image rate and the model-level verdict.

    Returns:
        Rows (attack ``clean_<source>``): ``false_positive_rate`` (share of
        outputs scored as marked), ``nc_mean`` / ``bit_accuracy_mean``,
        ``model_flagged`` (1 if ``verify_model`` calls the model a copy).
    """
    scores, hits = score_outputs(method, outputs, key)
    verdict = method.verify_model(outputs, key)
    name = "spread_spectrum" if isinstance(method, SpreadSpectrum) else "output_mark"
    base = {"method": name, "attack": f"clean_{source}", "strength": None,
            "label": f"clean_{source}", "n": int(outputs.shape[0]), "stage": stage}
    score_metric = "bit_accuracy_mean" if name == "spread_spectrum" else "nc_mean"
    return [{**base, "metric": "false_positive_rate", "value": float(hits.float().mean())},
            {**base, "metric": score_metric, "value": float(scores.float().mean())},
            {**base, "metric": "model_flagged", "value": float(verdict.detected)}]


def gate_summary(rows: Sequence[Mapping[str, Any]], stage: str = "stage2") -> dict[str, float]:
    """The metrics the gate reads (``neuralmark.components.gate`` keys) from the evaluation rows.

    ``psnr`` / ``ssim``: Table 1 on ``stage``; ``detection_rate/none``: SR on
    the unattacked marked outputs B′; ``detection_rate/<cell>`` and
    ``detection_rate_mean_attacked``: the matrix success rates of ``stage``;
    ``fpr``: false-positive rate on the independent model's outputs (the
    larger of it and the clean-B rate when both are there). Plus every
    :func:`matrix_summary` key and the ablation/false-positive values as
    ``<label>/<metric>``.
    """
    out = matrix_summary(rows)
    srs = []
    fprs = []
    for r in rows:
        st, metric, value = r.get("stage"), r["metric"], float(r["value"])
        if st == stage and r["label"] == "none":
            out[metric] = value
            if metric == "psnr_marked":
                out["psnr"] = value
            elif metric == "sr_marked":
                out["detection_rate/none"] = value
            elif metric == "ssim_marked":
                out["ssim"] = value
            elif metric == "fpr_clean_B":
                fprs.append(value)
        elif st == stage and metric == "success_rate":
            out[f"detection_rate/{r['label']}"] = value
            srs.append(value)
        elif st == stage and metric == "false_positive_rate":
            fprs.append(value)
            out[f"{r['label']}/false_positive_rate"] = value
        elif st in ("ablation", "spread_spectrum", "stage1") and metric != "success_rate":
            out[f"{st}/{r['label']}/{metric}"] = value
    if srs:
        out["detection_rate_mean_attacked"] = sum(srs) / len(srs)
    if fprs:
        out["fpr"] = max(fprs)
    return out


__all__ = [
    "ABLATIONS", "ROW_COLUMNS", "STAGES", "TASKS", "ablation_rows", "attack_cell",
    "attack_pairs", "baseline_attack_pairs", "baseline_config", "build_pairs", "cell_name",
    "cell_rows", "false_positive_rows", "gate_summary", "independent_model_outputs",
    "load_prepared_pairs", "matrix_cells", "matrix_heatmap", "matrix_summary", "matrix_table",
    "quality_rows", "report_markdown", "score_outputs", "split_groups", "stage2_copy",
    "target_kind",
    "train_stage1", "evaluation_rows", "logo_grid", "nc_histogram", "audit_markdown",
]


# --------------------------------------------------------------------------- the whole evaluation
def evaluation_rows(stage1: OutputMark, stage2: OutputMark, baseline: SpreadSpectrum | None,
                    key: WatermarkKey, test_pairs: tuple[torch.Tensor, torch.Tensor],
                    cells: Sequence[tuple[str, str]], deep_outputs: Sequence[torch.Tensor],
                    baseline_outputs: Sequence[torch.Tensor],
                    independent_outputs: torch.Tensor | None,
                    ablations: Sequence[Sequence[Mapping[str, Any]]] = ()
                    ) -> list[dict[str, Any]]:
    """Every row of the output_mark evaluation, in one tidy table.

    Args:
        stage1, stage2: the method before and after stage 2 (same H, same M).
        baseline: the spread-spectrum baseline (``None``: no baseline rows).
        key: the owner's key.
        test_pairs: ``(A, B)`` held-out pairs, N×3×H×W.
        cells: the matrix cells, in the order of the outputs.
        deep_outputs: per cell, T×3×S×S outputs of the surrogate trained on B′.
        baseline_outputs: per cell, outputs of the surrogate trained on the
            baseline's marked outputs (empty: no baseline cells).
        independent_outputs: T×3×S×S outputs of a model that never saw B′.
        ablations: rows from :func:`ablation_rows`.

    Returns:
        Table 1 (stage 1 and 2), the matrix (stage1 / stage2 / spread_spectrum),
        false positives, ablations, and the baseline's own quality.

    Raises:
        InputError: outputs and cells do not match in number.
    """
    if len(deep_outputs) != len(cells) or (baseline_outputs and len(baseline_outputs)
                                           != len(cells)):
        raise InputError(f"{len(cells)} cells but {len(deep_outputs)} deep / "
                         f"{len(baseline_outputs)} baseline surrogate outputs")
    rows = quality_rows(stage1, test_pairs, "stage1") + quality_rows(stage2, test_pairs, "stage2")
    for (arch, loss), out in zip(cells, deep_outputs, strict=True):
        for stage, method in (("stage1", stage1), ("stage2", stage2)):
            rows += cell_rows("output_mark", stage, arch, loss, *score_outputs(method, out, key))
    if baseline is not None:
        for (arch, loss), out in zip(cells if baseline_outputs else [], baseline_outputs,
                                     strict=True):
            rows += cell_rows("spread_spectrum", "spread_spectrum", arch, loss,
                              *score_outputs(baseline, out, key))
        ta, _ = stage2.working_pairs(test_pairs, "test pairs")
        b = stage2.model_outputs(ta)
        marked = baseline.embed(b, key)
        scores, hits = score_outputs(baseline, marked, key)
        base = {"method": "spread_spectrum", "attack": "none", "strength": None,
                "label": "none", "n": int(ta.shape[0]), "stage": "spread_spectrum"}
        from neuralmark.components.metrics import psnr
        rows += [{**base, "metric": "psnr_marked",
                  "value": float(psnr(marked, b).clamp(max=100).mean())},
                 {**base, "metric": "sr_marked", "value": float(hits.float().mean())},
                 {**base, "metric": "bit_accuracy_mean", "value": float(scores.mean())}]
    if independent_outputs is not None:
        for stage, method in (("stage1", stage1), ("stage2", stage2)):
            rows += false_positive_rows(method, stage, independent_outputs, key)
        if baseline is not None:
            rows += false_positive_rows(baseline, "spread_spectrum", independent_outputs, key)
    for block in ablations:
        rows += [dict(r) for r in block]
    return rows


def report_markdown(rows: Sequence[Mapping[str, Any]], task: str) -> str:
    """The seed's tables in Markdown: Table 1, the matrix (SR and mean score), FP, ablations."""
    t1 = {(r["stage"], r["metric"]): float(r["value"]) for r in rows
          if r["label"] == "none" and r["method"] == "output_mark"}
    parts = [f"# output_mark evaluation ({task}; targets: {target_kind(task)})", "",
             "## Table 1: invisibility and extraction on held-out outputs", "",
             "| extractor | PSNR B′ vs B (dB) | SSIM | NC on B′ | SR on B′ | NC clean B | "
             "FPR clean B |", "|---|---|---|---|---|---|---|"]
    for stage in ("stage1", "stage2"):
        if (stage, "psnr_marked") in t1:
            parts.append(f"| {stage} | {t1[(stage, 'psnr_marked')]:.2f} | "
                         f"{t1[(stage, 'ssim_marked')]:.4f} | {t1[(stage, 'nc_marked')]:.4f} | "
                         f"{100 * t1[(stage, 'sr_marked')]:.0f}% | "
                         f"{t1[(stage, 'nc_clean_B_mean')]:.3f} | "
                         f"{100 * t1[(stage, 'fpr_clean_B')]:.0f}% |")
    if ("stage2", "psnr_task_marked") in t1:
        parts += ["", "## Task-specific variant: H is the marked model, vs a plain M "
                  "(against the targets)", "",
                  "| model | PSNR vs target (dB) | SSIM vs target |", "|---|---|---|",
                  f"| H (marked, task-specific) | {t1[('stage2', 'psnr_task_marked')]:.2f} | "
                  f"{t1[('stage2', 'ssim_task_marked')]:.4f} |",
                  f"| plain M (no mark) | {t1[('stage2', 'psnr_task_baseline')]:.2f} | "
                  f"{t1[('stage2', 'ssim_task_baseline')]:.4f} |"]
    parts += ["", "## Surrogate attack matrix: success rate (NC > threshold; baseline: "
              "p ≤ alpha)", "", matrix_table(rows), "",
              "## Mean score per cell (NC; baseline: bit accuracy)", "",
              _score_table(rows), ""]
    fp = [r for r in rows if str(r["attack"]).startswith("clean_")]
    if fp:
        parts += ["## False positives: outputs of an independently trained model", "",
                  "| extractor | metric | value |", "|---|---|---|"]
        parts += [f"| {r['stage']} | {r['metric']} | {float(r['value']):.4g} |" for r in fp]
        parts.append("")
    abl = [r for r in rows if r.get("stage") == "ablation"]
    if abl:
        parts += ["## Ablations (stage 1)", "", "| ablation | metric | value |", "|---|---|---|"]
        parts += [f"| {r['label'].removeprefix('ablation_')} | {r['metric']} | "
                  f"{float(r['value']):.4f} |" for r in abl]
        parts.append("")
    return "\n".join(parts)


def _score_table(rows: Sequence[Mapping[str, Any]]) -> str:
    merged = [{**r, "metric": "score"} for r in rows
              if r["metric"] in ("nc_mean", "bit_accuracy_mean") and r.get("stage") in STAGES
              and str(r["attack"]).startswith("surrogate_")]
    return matrix_table(merged, metric="score")


# --------------------------------------------------------------------------- audit evidence
def logo_grid(logos: torch.Tensor, reference: torch.Tensor, names: Sequence[str],
              ncs: Sequence[float], threshold: float, max_items: int = 24) -> Any:
    """Figure: the reference logo, then R's estimate from each suspect output with its NC.

    Args:
        logos: N×3×S×S extracted logos in [0, 1].
        reference: 3×S×S the owner's logo.
        names: N file names (titles).
        ncs: N NC values.
        threshold: NC success threshold (titles say hit / miss).
        max_items: draw at most this many estimates.

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(len(names), max_items)
    cols = min(6, n + 1)
    rows = math.ceil((n + 1) / cols)
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    items = [("reference logo", reference, None)] + [
        (names[i], logos[i], float(ncs[i])) for i in range(n)]
    for i, (title, img, nc) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img.detach().permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        if nc is not None:
            title = f"{title[:14]}\nNC {nc:.3f} {'✓' if nc > threshold else '✗'}"
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return fig


def nc_histogram(ncs: Sequence[float], threshold: float,
                 null_scores: Sequence[float] = ()) -> Any:
    """Figure: distribution of the suspect outputs' NC against the threshold and clean NC.

    Args:
        ncs: NC of each suspect output.
        threshold: success threshold (vertical line).
        null_scores: calibrated NC of clean images (drawn for comparison when given).

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
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


def audit_markdown(verdict: Mapping[str, Any], files: Sequence[str],
                   unreadable: Mapping[str, str]) -> str:
    """The audit verdict as Markdown: decision, evidence, per-file NC, unreadable files."""
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
