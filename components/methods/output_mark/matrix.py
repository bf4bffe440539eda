"""The surrogate attack matrix of seed 001: who gets attacked, how each cell is scored.

Zhang et al. (AAAI'20) judge a model watermark by what an attacker gets: a
surrogate SM trained on the protected service's (input, output) pairs. Table 2
varies the surrogate's architecture, Table 3 its loss; each cell is scored with
the stage-1 extractor (the "†" rows: R never fine-tuned on surrogate outputs),
the stage-2 extractor, and against a 64-bit spread-spectrum baseline (the "T-*"
columns). A cell succeeds on a test output when R's extraction has NC above the
threshold; its success rate (SR) is the share of test outputs that do.

Why here, inside the ``output_mark`` package: every function below scores
*this* method's extractors (stage 1 vs stage 2, its held-out split, its Table 1
and ablations) against its baseline; it is how this method is evaluated, as its
seed defines it. What any model watermark can reuse — training a surrogate for
one (arch, loss) cell — is the model attack ``neuralmark.components.attacks.surrogate``
(for trigger_key, seed 002, as well); the Markdown tables are in :mod:`.tables`,
the heatmap in ``neuralmark.components.plots``.

* :func:`attack_pairs` / :func:`baseline_attack_pairs` — what the attacker trains
  on: held-out inputs and the service's outputs (B′, or the baseline's marked B);
  :func:`clean_attack_pairs` — what a cell's *clean twin* trains on: the same inputs and
  the unmarked M's outputs B (an innocent copy: its flags are false positives).
* :func:`score_outputs`, :func:`cell_rows`, :func:`quality_rows`,
  :func:`false_positive_rows`, :func:`evaluation_rows` — tidy rows (the
  ``neuralmark.components.evaluation`` format plus ``stage``).
* :func:`attacker_quality_rows` — each cell's attacker against the service (fidelity to
  B′) and against the targets (the task), to show it is a working copy.
* :func:`ablation_rows` (no clean loss, no consistency loss) and
  :func:`independent_model_outputs` (a plain model trained with another seed).
* :func:`matrix_summary` / :func:`gate_summary` — flat metrics for MLflow and the gate.

Surrogates do not depend on R, so one trained surrogate per cell serves both
extractors: the † comparison costs no extra training. Shapes: images are
``N×3×H×W`` float32 in [0, 1]; methods resize to their working size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch

from neuralmark.components.attacks.surrogate import (
    SurrogateSettings,
    attack_cell,
    attack_cell_ladder,
    cell_name,
)
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks, WatermarkKey, resize_square
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.evaluation import quality
from neuralmark.components.methods.output_mark.method import OutputMark
from neuralmark.components.methods.output_mark.training import (
    CleanImages,
    stage1_method,
    train_protected_model,
    training_pairs,
)
from neuralmark.components.methods.spread_spectrum import SpreadSpectrum
from neuralmark.components.metrics import psnr
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.reproducibility import pinned

#: the extractor / mark a matrix row is scored with
STAGES: tuple[str, ...] = ("stage1", "stage2", "spread_spectrum")
#: ``neuralmark.components.evaluation.COLUMNS`` plus the stage
ROW_COLUMNS: tuple[str, ...] = ("method", "attack", "strength", "label", "metric", "value", "n",
                                "stage")
ABLATIONS: dict[str, dict[str, bool]] = {
    "no_clean_loss": {"clean_loss": False},
    "no_consistency_loss": {"consistency_loss": False},
}


# --------------------------------------------------------------------------- the attacker's data
def attack_pairs(method: OutputMark, train_pairs: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's training set: held-out inputs A and the service's B′ for them.

    Returns:
        ``(A, B′)``, K×3×S×S at the working size (K = held-out part).
    """
    tp = training_pairs(method, train_pairs)
    a = tp.a[tp.held_out]
    return a, method.marked_outputs(a)


def clean_attack_pairs(method: OutputMark, train_pairs: tuple[torch.Tensor, torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean twin's training set: the attacker's held-out inputs A and the unmarked
    model M's outputs B for them (what an innocent copy of the same task learns from).

    Returns:
        ``(A, B)``, K×3×S×S at the working size (the inputs of :func:`attack_pairs`).
    """
    tp = training_pairs(method, train_pairs)
    a = tp.a[tp.held_out]
    with torch.no_grad():
        return a, method.model_outputs(a)


def baseline_config(method: OutputMark, overrides: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Spread-spectrum config at the deep method's working size (≥ 32), plus overrides."""
    return {"working_size": max(32, method.config.working_size), **dict(overrides or {})}


def baseline_attack_pairs(method: OutputMark, train_pairs: tuple[torch.Tensor, torch.Tensor],
                          baseline: SpreadSpectrum, key: WatermarkKey
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's training set against the baseline: A and SS-marked M(A) (held-out part).

    Returns:
        ``(A, SS(B))``, K×3×S×S at the deep method's working size.
    """
    tp = training_pairs(method, train_pairs)
    a = tp.a[tp.held_out]
    return a, baseline.embed(method.model_outputs(a), key)


def cell_outputs(marked_train_outputs: torch.Tensor, train_inputs: torch.Tensor,
                 test_inputs: torch.Tensor, arch: str, loss: str,
                 settings: SurrogateSettings | Mapping[str, Any], cpu_threads: int = 1,
                 callbacks: Callbacks | Sequence[Any] = ()) -> torch.Tensor:
    """One matrix cell (``attacks.surrogate.attack_cell``) trained inside
    ``reproducibility.pinned`` (the schedule's seed, ``cpu_threads`` threads).

    Returns:
        T×3×S×S surrogate outputs on the test inputs, in [0, 1].
    """
    seed = settings.seed if isinstance(settings, SurrogateSettings) else \
        int(dict(settings).get("seed", 0))
    with pinned(seed, cpu_threads):
        return attack_cell(marked_train_outputs, train_inputs, test_inputs, arch, loss,
                           settings, callbacks)


def cell_ladder_outputs(marked_train_outputs: torch.Tensor, train_inputs: torch.Tensor,
                        test_inputs: torch.Tensor, arch: str, loss: str,
                        settings: SurrogateSettings, budgets: Sequence[int],
                        cpu_threads: int = 1) -> dict[int, torch.Tensor]:
    """:func:`cell_outputs` at several step budgets from one run
    (``attacks.surrogate.attack_cell_ladder``), inside ``reproducibility.pinned``.

    Returns:
        ``{steps: T×3×S×S outputs}``; each equals :func:`cell_outputs` with that ``steps``.
    """
    with pinned(settings.seed, cpu_threads):
        return attack_cell_ladder(marked_train_outputs, train_inputs, test_inputs, arch, loss,
                                  settings, budgets)


# --------------------------------------------------------------------------- scoring
def score_outputs(method: OutputMark | SpreadSpectrum, outputs: torch.Tensor,
                  key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output score and success of a method on N×3×H×W outputs.

    Returns:
        ``(scores, hits)``: N floats and N bools. Deep mark: NC of R's extraction
        with the key's logo, hit = readable and NC > threshold (the seed's SR).
        Spread spectrum: bit accuracy, hit = detected (p ≤ alpha).
    """
    if isinstance(method, SpreadSpectrum):
        verdicts = method.verify(outputs, key)
        return (torch.tensor([float(v.bit_accuracy or 0.0) for v in verdicts]),
                torch.tensor([bool(v.detected) for v in verdicts]))
    return method.hits(outputs, key)


def _row(method_name: str, attack: str, stage: str, n: int, metric: str, value: float
         ) -> dict[str, Any]:
    return {"method": method_name, "attack": attack, "strength": None, "label": attack,
            "metric": metric, "value": float(value), "n": n, "stage": stage}


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
        Metric ``success_rate`` and ``nc_mean`` (``bit_accuracy_mean`` for the baseline).
    """
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    name, n = cell_name(arch, loss), int(scores.numel())
    score_metric = "bit_accuracy_mean" if method_name == "spread_spectrum" else "nc_mean"
    return [_row(method_name, name, stage, n, "success_rate", float(hits.float().mean())),
            _row(method_name, name, stage, n, score_metric, float(scores.float().mean()))]


def quality_rows(method: OutputMark, test_pairs: tuple[torch.Tensor, torch.Tensor],
                 stage: str) -> list[dict[str, Any]]:
    """Table 1 on held-out pairs (``evaluation.quality``), one row per metric (label ``none``)."""
    a, gt = method.working_pairs(test_pairs, "test pairs")
    return [_row("output_mark", "none", stage, int(a.shape[0]), k, v)
            for k, v in quality(method, a, gt).items()]


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
    score_metric = "bit_accuracy_mean" if name == "spread_spectrum" else "nc_mean"
    attack, n = f"clean_{source}", int(outputs.shape[0])
    return [_row(name, attack, stage, n, "false_positive_rate", float(hits.float().mean())),
            _row(name, attack, stage, n, score_metric, float(scores.float().mean())),
            _row(name, attack, stage, n, "model_flagged", float(verdict.detected))]


#: attack label prefix of a clean twin's false-positive rows (``clean_twin_<cell>``)
TWIN_PREFIX = "clean_twin_"


def twin_source(arch: str, loss: str) -> str:
    """``source`` of a cell's clean twin for :func:`false_positive_rows` (the rows' attack
    is ``clean_`` + it: ``clean_twin_surrogate_unet_l2``)."""
    return TWIN_PREFIX.removeprefix("clean_") + cell_name(arch, loss)


def attacker_quality_rows(cells: Sequence[tuple[str, str]], outputs: Sequence[torch.Tensor],
                          marked: torch.Tensor, targets: torch.Tensor) -> list[dict[str, Any]]:
    """Is each cell's attacker a working copy of the service? (stage ``attacker``)

    Args:
        cells: the matrix cells, in the order of ``outputs``.
        outputs: per cell, T×3×S×S surrogate outputs B″ on the test inputs.
        marked: T×3×S×S the service's outputs B′ on the same inputs.
        targets: T×3×S×S the clean targets (the task's ground truth) at the same size.

    Returns:
        Per cell ``psnr_vs_marked`` (fidelity: B″ vs B′, dB) and ``psnr_vs_target`` (the
        task: B″ vs targets); label ``none``: ``psnr_service_vs_target`` (B′ vs targets),
        the service's task PSNR the om10 theft bar compares with.
    """
    n = int(marked.shape[0])
    rows = [_row("output_mark", "none", "attacker", n, "psnr_service_vs_target",
                 float(psnr(marked, targets).clamp(max=100).mean()))]
    for (arch, loss), out in zip(cells, outputs, strict=True):
        name = cell_name(arch, loss)
        rows += [_row("output_mark", name, "attacker", n, "psnr_vs_marked",
                      float(psnr(out, marked).clamp(max=100).mean())),
                 _row("output_mark", name, "attacker", n, "psnr_vs_target",
                      float(psnr(out, targets).clamp(max=100).mean()))]
    return rows


#: the om10 theft bar (MODEL_CARD.md, session om10), fixed before its ladder ran: a cell's
#: attacker at budget k is a *converged copy* when doubling k adds less than this to its
#: fidelity to B′ (PSNR(B″, B′) on the test inputs) ...
CONVERGED_GAIN_DB = 0.5
#: ... and *useful* when it derains at most this much worse than the service (B″ vs B′,
#: each against the clean targets); both: a successful theft, the cell is at the bar
TASK_MARGIN_DB = 1.0


def theft_bar_rows(cells: Sequence[tuple[str, str]], outputs: Sequence[torch.Tensor],
                   doubled: Sequence[torch.Tensor], marked: torch.Tensor,
                   targets: torch.Tensor) -> list[dict[str, Any]]:
    """Does each cell's attacker meet the theft bar at its budget? (stage ``attacker``)

    One seed's attacker (the cell's), so "converged" is that attacker's, not om10's mean
    over three attacker seeds.

    Args:
        cells: the matrix cells, in the order of ``outputs``.
        outputs: per cell, T×3×S×S B″ after the cell's budget k.
        doubled: per cell, T×3×S×S B″ of the same attacker after 2k steps (one run:
            ``attacks.surrogate.attack_cell_ladder``).
        marked: T×3×S×S the service's outputs B′ on the test inputs.
        targets: T×3×S×S the clean targets at the same size.

    Returns:
        Per cell ``bar_fidelity_gain_db`` (fidelity at 2k minus at k), ``bar_task_margin_db``
        (task PSNR at k minus the service's) and ``met_theft_bar`` (1: gain <
        :data:`CONVERGED_GAIN_DB` and margin ≥ −:data:`TASK_MARGIN_DB`; else 0).

    Raises:
        InputError: outputs, doubled outputs and cells do not match in number.
    """
    if not len(cells) == len(outputs) == len(doubled):
        raise InputError(f"{len(cells)} cells but {len(outputs)} outputs and {len(doubled)} "
                         "doubled-budget outputs")
    n = int(marked.shape[0])
    service = float(psnr(marked, targets).clamp(max=100).mean())

    def mean_psnr(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(psnr(x, y).clamp(max=100).mean())

    rows = []
    for (arch, loss), out, twice in zip(cells, outputs, doubled, strict=True):
        gain = mean_psnr(twice, marked) - mean_psnr(out, marked)
        margin = mean_psnr(out, targets) - service
        met = gain < CONVERGED_GAIN_DB and margin >= -TASK_MARGIN_DB
        name = cell_name(arch, loss)
        rows += [_row("output_mark", name, "attacker", n, "bar_fidelity_gain_db", gain),
                 _row("output_mark", name, "attacker", n, "bar_task_margin_db", margin),
                 _row("output_mark", name, "attacker", n, "met_theft_bar", float(met))]
    return rows


# --------------------------------------------------------------------------- more training
def ablation_rows(name: str, train_pairs: tuple[torch.Tensor, torch.Tensor],
                  test_pairs: tuple[torch.Tensor, torch.Tensor],
                  config: OutputMarkConfig | Mapping[str, Any], key: WatermarkKey | None = None,
                  callbacks: Callbacks | Sequence[Any] = (), groups: Sequence[str] | None = None,
                  clean: CleanImages | None = None) -> list[dict[str, Any]]:
    """The seed's Figures 5–6: stage 1 without the clean or the consistency loss.

    Trains stage 1 with the switch off (``training.stage1_method``), then one
    UNet/L2 surrogate on its B′ (held-out part), and measures on the test pairs:
    NC on B′, on clean A and B (without the clean loss R should hallucinate the
    logo there) and on the surrogate's outputs B″ (without the consistency loss
    the seed sees weak extraction there).

    Args:
        name: a key of :data:`ABLATIONS`.
        train_pairs, test_pairs: ``(A, B)`` N×3×H×W.
        config: the output_mark config the ablation starts from.
        key: the owner's key.
        callbacks: metrics/progress sinks.
        groups: source group of each training pair.
        clean: extra clean images for R's clean term, as the full run's
            (``config.clean_variety``: ``training.clean_variety_images``).

    Returns:
        Rows (attack ``ablation_<name>``, stage ``ablation``): ``nc_marked``,
        ``nc_clean_A``, ``nc_clean_B``, ``fpr_clean_B``, ``nc_surrogate``,
        ``sr_surrogate``.
    """
    if name not in ABLATIONS:
        raise InputError(f"unknown ablation {name!r}; expected one of {list(ABLATIONS)}")
    cfg = config.model_dump() if isinstance(config, OutputMarkConfig) else dict(config)
    trained, _ = stage1_method(train_pairs, {**cfg, **ABLATIONS[name]}, key, callbacks, groups,
                               clean=clean)
    method = cast(OutputMark, trained)
    key = key or WatermarkKey(method.config.logo_secret)
    sa, sb = attack_pairs(method, train_pairs)
    ta, _ = method.working_pairs(test_pairs, "test pairs")
    b2 = cell_outputs(sb, sa, ta, "unet", "l2", method.config.surrogate,
                      method.config.cpu_threads, callbacks)
    tb = method.model_outputs(ta)
    measured = {"nc_marked": method.nc(method.marked_outputs(ta), key),
                "nc_clean_A": method.nc(ta, key), "nc_clean_B": method.nc(tb, key),
                "nc_surrogate": method.nc(b2, key)}
    values = {k: float(v.mean()) for k, v in measured.items()}
    values["fpr_clean_B"] = float(method.hits(tb, key)[1].float().mean())
    values["sr_surrogate"] = float(method.hits(b2, key)[1].float().mean())
    return [_row("output_mark", f"ablation_{name}", "ablation", int(ta.shape[0]), k, v)
            for k, v in values.items()]


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
    with pinned(cfg.seed, cfg.cpu_threads):
        model = train_protected_model(train_pairs, cfg, callbacks)
    x = resize_square(test_inputs.float(), config.working_size)
    return apply_net(model, x, config.eval_batch).clamp(0, 1)


# --------------------------------------------------------------------------- the whole table
def evaluation_rows(stage1: OutputMark, stage2: OutputMark, baseline: SpreadSpectrum | None,
                    key: WatermarkKey, test_pairs: tuple[torch.Tensor, torch.Tensor],
                    cells: Sequence[tuple[str, str]], deep_outputs: Sequence[torch.Tensor],
                    baseline_outputs: Sequence[torch.Tensor],
                    independent_outputs: torch.Tensor | None,
                    ablations: Sequence[Sequence[Mapping[str, Any]]] = (),
                    twin_outputs: Sequence[torch.Tensor] = ()
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
        twin_outputs: per cell, outputs of its clean twin (same attacker trained on
            :func:`clean_attack_pairs`; empty: no twins).

    Returns:
        Table 1 (stage 1 and 2), the matrix (stage1 / stage2 / spread_spectrum),
        false positives (the independent model, and each cell's clean twin as attack
        ``clean_twin_<cell>``: ``false_positive_rate`` rows, never in a success mean),
        ablations, and the baseline's own quality.

    Raises:
        InputError: outputs and cells do not match in number.
    """
    if len(deep_outputs) != len(cells) or any(
            extra and len(extra) != len(cells) for extra in (baseline_outputs, twin_outputs)):
        raise InputError(f"{len(cells)} cells but {len(deep_outputs)} deep / "
                         f"{len(baseline_outputs)} baseline / {len(twin_outputs)} clean-twin "
                         "surrogate outputs")
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
        n = int(ta.shape[0])
        rows += [_row("spread_spectrum", "none", "spread_spectrum", n, "psnr_marked",
                      float(psnr(marked, b).clamp(max=100).mean())),
                 _row("spread_spectrum", "none", "spread_spectrum", n, "sr_marked",
                      float(hits.float().mean())),
                 _row("spread_spectrum", "none", "spread_spectrum", n, "bit_accuracy_mean",
                      float(scores.mean()))]
    if independent_outputs is not None:
        for stage, method in (("stage1", stage1), ("stage2", stage2)):
            rows += false_positive_rows(method, stage, independent_outputs, key)
        if baseline is not None:
            rows += false_positive_rows(baseline, "spread_spectrum", independent_outputs, key)
    for (arch, loss), out in zip(cells if twin_outputs else [], twin_outputs, strict=True):
        for stage, method in (("stage1", stage1), ("stage2", stage2)):
            rows += false_positive_rows(method, stage, out, key, twin_source(arch, loss))
    for block in ablations:
        rows += [dict(r) for r in block]
    return rows


# --------------------------------------------------------------------------- summaries
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


def gate_summary(rows: Sequence[Mapping[str, Any]], stage: str = "stage2",
                 twins_in_fpr: bool = False) -> dict[str, float]:
    """The metrics the gate reads (``neuralmark.components.gate`` keys) from the rows.

    ``psnr`` / ``ssim``: Table 1 on ``stage``; ``detection_rate/none``: SR on
    the unattacked marked outputs B′; ``detection_rate/<cell>`` and
    ``detection_rate_mean_attacked``: the matrix success rates of ``stage``;
    ``fpr``: false-positive rate on the independent model's outputs (the
    larger of it and the clean-B rate when both are there). Plus every
    :func:`matrix_summary` key and the ablation/false-positive values as
    ``<label>/<metric>``.

    Clean twins (``clean_twin_<cell>`` rows) are always reported
    (``clean_twin_<cell>/false_positive_rate``, their largest as ``fpr_clean_twins``);
    ``twins_in_fpr`` also counts them in ``fpr``, so the policy's ``max_fpr`` applies
    to innocent copies (off by default: ``fpr`` keeps its meaning).
    """
    out = matrix_summary(rows)
    renamed = {"psnr_marked": "psnr", "sr_marked": "detection_rate/none", "ssim_marked": "ssim"}
    srs, fprs, twins = [], [], []
    for r in rows:
        st, metric, value = r.get("stage"), r["metric"], float(r["value"])
        if st == stage and r["label"] == "none":
            out[metric] = value
            if metric in renamed:
                out[renamed[metric]] = value
            elif metric == "fpr_clean_B":
                fprs.append(value)
        elif st == stage and metric == "success_rate":
            out[f"detection_rate/{r['label']}"] = value
            srs.append(value)
        elif st == stage and metric == "false_positive_rate":
            out[f"{r['label']}/false_positive_rate"] = value
            if str(r["label"]).startswith(TWIN_PREFIX):
                twins.append(value)
                if not twins_in_fpr:
                    continue
            fprs.append(value)
        elif st in ("ablation", "spread_spectrum", "stage1") and metric != "success_rate":
            out[f"{st}/{r['label']}/{metric}"] = value
    if srs:
        out["detection_rate_mean_attacked"] = sum(srs) / len(srs)
    if fprs:
        out["fpr"] = max(fprs)
    if twins:
        out["fpr_clean_twins"] = max(twins)
    return out


__all__ = ["ABLATIONS", "CONVERGED_GAIN_DB", "ROW_COLUMNS", "STAGES", "TASK_MARGIN_DB",
           "TWIN_PREFIX", "ablation_rows",
           "attack_pairs", "attacker_quality_rows",
           "baseline_attack_pairs", "baseline_config", "cell_ladder_outputs", "cell_outputs",
           "cell_rows", "clean_attack_pairs", "twin_source",
           "evaluation_rows",
           "false_positive_rows", "gate_summary", "independent_model_outputs", "matrix_summary",
           "quality_rows", "score_outputs", "theft_bar_rows"]
