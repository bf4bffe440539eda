"""The output_mark pipeline (seed 001, issue #6): protect a model, attack it, gate, register.

::

    data → pairs (A, B) [+ varied clean images, config.clean_variety]
         → stage 1 (M, H, R, D) → stage 2 (SM + fine-tune R)
         → one surrogate per matrix cell (deep mark and spread-spectrum baseline)
         → ablations, an independent model → evaluation (Tables 1–3, FP, heatmap)
         → gate → register ``neuralmark-output_mark``

Run it with the CLI (``neuralmark protect --task derain``), from Python
(:func:`run_output_mark`), or with ZenML once the stack exists
(``python -m neuralmark.runtime.stack``)::

    zenml pipeline run neuralmark.pipelines.output_mark.output_mark_pipeline \
        -c configs/output_mark_pipeline.yaml

Caching: the pipeline itself is not cached, but every matrix cell, ablation and
the independent model are steps with ``enable_cache=True`` (see
``steps/output_mark.py``), so a rerun retrains stage 1 and stage 2 and reuses
every cell whose inputs came out byte-identical. The run config must not set a
top-level ``enable_cache`` (it would override every step), unlike the generic
training pipeline's ``configs/<method>.yaml``; ``run_output_mark`` refuses one.
output_mark is trained only here: the generic training pipeline refuses it
(``OutputMark.own_pipeline``), since it needs (A, B) pairs and its own stages.

Parameters (JSON, so they can come from the YAML): ``task``, ``profile``, the
overrides ``config`` / ``data`` / ``evaluation`` / ``policy`` (merged over the
profile's ``output_mark`` section by ``neuralmark.runtime.settings.resolve``) and
``matrix`` (:class:`MatrixSettings`).

Measured runs (wall time, Table 1, the matrix per task and variant):
``components/methods/output_mark/MODEL_CARD.md``.

The gate reads ``psnr`` (Table 1, B′ vs B), ``detection_rate_mean_attacked``
(mean success rate over the matrix cells, with stage 2) and ``fpr`` (share of an
independent model's outputs, or of clean B, flagged; with ``matrix.twins_in_gate`` also
of each cell's clean twin's outputs): a policy such as
``{min_psnr: 30, min_bit_accuracy: {}, min_detection_rate: {mean_attacked: 0.9},
max_fpr: 0.01, primary_metric: detection_rate_mean_attacked}``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from zenml import pipeline
from zenml.enums import ExecutionMode

from neuralmark.components.attacks.surrogate import SurrogateSettings, cell_name, matrix_cells
from neuralmark.components.data.pairs import check_task
from neuralmark.components.errors import InputError, describe_validation_error
from neuralmark.components.gate import MEAN_ATTACKED
from neuralmark.components.methods.output_mark.logo import load_logo
from neuralmark.components.methods.output_mark.matrix import ABLATIONS
from neuralmark.components.methods.output_mark.seeds import attacker_settings
from neuralmark.components.methods.registry import make_config as build_config
from neuralmark.integrations.tracking import record_environment
from neuralmark.runtime.settings import CODE_ROOT, CONFIGS_DIR, deep_merge, model_name, resolve

PIPELINE_NAME = "output_mark_pipeline"
METHOD = "output_mark"
DEFAULT_CONFIG = CONFIGS_DIR / "output_mark_pipeline.yaml"
PARAMETERS = ("task", "profile", "config", "data", "evaluation", "policy", "matrix")


class MatrixSettings(BaseModel):
    """What the pipeline runs besides stage 1 and 2.

    Attributes:
        cells: ``[arch, loss]`` pairs (``None``: the seed's nine, Tables 2–3).
        baseline: run the spread-spectrum baseline's cells too.
        baseline_config: ``spread_spectrum`` config overrides (its working size
            follows output_mark's, at least 32).
        ablations: names of ``output_mark.matrix.ABLATIONS`` to run.
        false_positives: train an independent model (another seed) and report
            how often its outputs are flagged.
        pair_seed: salt of the per-image rain seeds.
        test_splits: dataset splits pooled into the test pairs.
        prepared: a prepared paired dataset's ``manifest.csv`` (``voc_derain``
            or ``chestxray8``) to use instead of synthesising pairs from the
            sample dataset.
        surrogate: overrides of ``config.surrogate`` for the matrix cells (the
            stage-2 surrogate keeps the profile's), e.g. fewer steps for a quick
            look; arch and loss always come from the cell. The cells' seed is the
            stage-2 surrogate's + ``seeds.ATTACKER_SEED_OFFSET`` unless set here, so
            no cell is the very surrogate R was fine-tuned on.
        seeds: seeds of the seed spread (empty: no spread).
        clean_twins: train each cell's clean twin, the same attacker (arch, loss, seed,
            budget) on the unmarked M's outputs, and report how often its outputs are
            flagged (``clean_twin_<cell>/false_positive_rate``, ``fpr_clean_twins``; never
            in the success mean): false positives on innocent copies.
        twins_in_gate: count the clean twins' flag rates in the gate's ``fpr``, so the
            policy's ``max_fpr`` refuses a candidate that flags innocent copies (off:
            ``fpr`` keeps its meaning, independent model and clean B). Needs
            ``clean_twins``.
        ablation_config: overrides of the output_mark config for the ablation
            runs (each retrains stage 1), e.g. ``{steps: 150}``.
        min_success_rate: profile → floor on the mean success rate over the
            matrix (with stage 2), added to the policy as
            ``min_detection_rate.mean_attacked`` unless the policy sets one. Kept
            here rather than in the profile because the generic training
            pipeline's ``detection_rate_mean_attacked`` means image attacks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cells: list[list[str]] | None = None
    baseline: bool = True
    baseline_config: dict[str, Any] = Field(default_factory=dict)
    ablations: list[str] = Field(default_factory=lambda: list(ABLATIONS))
    false_positives: bool = True
    pair_seed: int = 0
    test_splits: list[str] = Field(default_factory=lambda: ["val", "test"])
    prepared: str | None = None
    surrogate: dict[str, Any] = Field(default_factory=dict)
    ablation_config: dict[str, Any] = Field(default_factory=dict)
    #: seeds of the seed spread (``output_mark.seeds``): the whole sequence and the matrix
    #: retrained once per seed, reported as mean ± 95% t-interval per cell; empty: none
    seeds: list[int] = Field(default_factory=list)
    clean_twins: bool = False
    twins_in_gate: bool = False
    #: tiny: below the tiny derain run's measured mean (MODEL_CARD.md); full: the seed's
    #: D-* cells are 86-100%
    min_success_rate: dict[str, float] = Field(
        default_factory=lambda: {"tiny": 0.5, "full": 0.9})

    @field_validator("ablations")
    @classmethod
    def _known_ablations(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; expected {list(ABLATIONS)}")
        return names

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, values: list[int]) -> list[int]:
        if values and (len(values) < 2 or len(set(values)) != len(values)):
            raise ValueError(f"a seed spread needs at least two distinct seeds (three or "
                             f"more for a useful interval), got {values}")
        return values

    @field_validator("cells")
    @classmethod
    def _known_cells(cls, cells: list[list[str]] | None) -> list[list[str]] | None:
        try:
            matrix_cells(cells)
        except InputError as err:
            raise ValueError(str(err)) from None
        return cells

    @field_validator("surrogate")
    @classmethod
    def _surrogate_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        try:
            SurrogateSettings.model_validate(values)
        except ValidationError as err:
            raise ValueError(describe_validation_error(err)) from None
        return values

    @model_validator(mode="after")
    def _twins_for_the_gate(self) -> MatrixSettings:
        if self.twins_in_gate and not self.clean_twins:
            raise ValueError("twins_in_gate needs clean_twins: true (no twin is trained "
                             "otherwise)")
        return self

    def cell_list(self) -> list[tuple[str, str]]:
        """The validated cells."""
        return matrix_cells(self.cells)


def components_digest() -> str:
    """SHA-256 of every ``components/**/*.py`` (path and bytes), in path order.

    Passed to the cached steps as ``code_digest``: ZenML's cache key covers a
    step's own source and its inputs, not the library code it calls, so without
    it a change in ``components/`` (e.g. the ablation's training loop) left
    cached cells returning results of the old code (seen on debone).
    """
    root = Path(__file__).resolve().parents[1] / "components"
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def matrix_settings(values: Mapping[str, Any] | None) -> MatrixSettings:
    """Validate the ``matrix`` parameter; a typo is an ``InputError`` naming the field."""
    try:
        return MatrixSettings.model_validate(dict(values or {}))
    except ValidationError as err:
        raise InputError(f"invalid matrix config: "
                         f"{describe_validation_error(err, 'matrix.')}") from None


def resolve_output_mark(task: str, profile: str, config: Mapping[str, Any] | None = None,
                        data: Mapping[str, Any] | None = None,
                        evaluation: Mapping[str, Any] | None = None,
                        policy: Mapping[str, Any] | None = None,
                        matrix: Mapping[str, Any] | None = None) -> Any:
    """``neuralmark.runtime.settings.resolve`` for output_mark with ``config.task`` set to ``task``.

    Adds the matrix floor of ``matrix.min_success_rate[profile]`` to the
    policy (an explicit ``policy.min_detection_rate.mean_attacked`` wins). Also
    loads a ``config.logo`` file, so a logo that is not an image (or too
    close to the blank) is an ``InputError`` before anything runs, and refuses
    ``config.clean_variety`` with ``matrix.prepared`` (no sample photos to crop).
    """
    check_task(task)
    floor = matrix_settings(matrix).min_success_rate.get(profile)
    if floor is not None:
        policy = deep_merge({"min_detection_rate": {MEAN_ATTACKED: floor}}, policy)
    settings = resolve(METHOD, profile, config={**dict(config or {}), "task": task}, data=data,
                       evaluation=evaluation, policy=policy)
    c = settings.config
    if c.clean_variety and matrix_settings(matrix).prepared:
        raise InputError("config.clean_variety crops the sample dataset's training photos; "
                         "matrix.prepared reads a prepared dataset that has none: turn one off")
    if c.logo != "key":  # a logo that is not an image fails here, before any step runs
        load_logo(c.logo, c.working_size, c.threshold, c.logo_secret, c.logo_block)
    return settings


@pipeline(name=PIPELINE_NAME, enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST,
          on_start=record_environment)
def output_mark_pipeline(task: str = "derain", profile: str = "tiny",
                         config: dict[str, Any] | None = None,
                         data: dict[str, Any] | None = None,
                         evaluation: dict[str, Any] | None = None,
                         policy: dict[str, Any] | None = None,
                         matrix: dict[str, Any] | None = None) -> None:
    """Protect a ``task`` model with output_mark, run the surrogate matrix, gate and register.

    Args:
        task: ``derain`` or ``debone``.
        profile: ``configs/profiles/<profile>.yaml`` section ``output_mark`` to start from.
        config: overrides of the output_mark config (``surrogate`` sets every
            cell's schedule; arch and loss come from the cell).
        data: overrides of the data settings (the clean images pairs are made from).
        evaluation: overrides of the evaluation settings (``key_secret``).
        policy: overrides of the gate policy.
        matrix: :class:`MatrixSettings` fields.
    """
    from neuralmark.steps.data import build_dataset, validate_dataset
    from neuralmark.steps.output_mark import (
        attacker_data,
        baseline_data,
        clean_variety,
        evaluate_output_mark,
        finetune_stage2,
        make_pairs,
        seed_spread,
        train_ablation,
        train_independent_model,
        train_marking,
        train_surrogate_cell,
        twin_data,
    )
    from neuralmark.steps.promotion import gate, register_and_promote

    settings = resolve_output_mark(task, profile, config, data, evaluation, policy, matrix)
    m = matrix_settings(matrix)
    cells = m.cell_list()
    params = settings.step_parameters()
    cfg, ev = params["config"], params["evaluation"]
    manifest = ""
    if m.prepared is None:
        manifest = build_dataset(params["data"])
        manifest = validate_dataset(manifest, min_size=16)
    train_a, train_b, test_a, test_b, groups = make_pairs(
        manifest, task=task, size=settings.data.size, seed=m.pair_seed, prepared=m.prepared,
        test_splits=m.test_splits)
    key_secret = ev["key_secret"]
    clean_images = clean_groups = None  # config.clean_variety: extra clean images for R
    if settings.config.clean_variety:
        clean_images, clean_groups = clean_variety(manifest, config=cfg)
    stage1 = train_marking(train_a, train_b, groups, config=cfg, key_secret=key_secret,
                           clean_images=clean_images, clean_groups=clean_groups)
    stage2 = finetune_stage2(stage1, train_a, train_b, clean_images=clean_images,
                             clean_groups=clean_groups)
    att_a, att_b, query = attacker_data(stage1, train_a, train_b, test_a)
    ss, ss_targets = baseline_data(stage1, train_a, train_b, baseline=m.baseline_config,
                                   key_secret=key_secret)
    schedule = attacker_settings(settings.config, m.surrogate).model_dump(mode="json")
    threads = int(cfg["cpu_threads"])
    ablation_cfg = build_config(METHOD, deep_merge(cfg, m.ablation_config)).model_dump(
        mode="json", exclude={"method"})
    digest = components_digest()
    twin_targets = twin_data(stage1, train_a, train_b) if m.clean_twins else None
    deep, base, twins = [], [], []
    for arch, loss in cells:
        label = cell_name(arch, loss)
        deep.append(train_surrogate_cell(att_a, att_b, query, arch=arch, loss=loss,
                                         settings=schedule, code_digest=digest,
                                         cpu_threads=threads, id=label))
        if m.baseline:
            base.append(train_surrogate_cell(att_a, ss_targets, query, arch=arch, loss=loss,
                                             settings=schedule, code_digest=digest,
                                             cpu_threads=threads,
                                             id=label.replace("surrogate_", "baseline_", 1)))
        if twin_targets is not None:
            twins.append(train_surrogate_cell(att_a, twin_targets, query, arch=arch, loss=loss,
                                              settings=schedule, code_digest=digest,
                                              cpu_threads=threads,
                                              id=label.replace("surrogate_", "twin_", 1)))
    ablations = [train_ablation(train_a, train_b, test_a, test_b, groups, name=name,
                                config=ablation_cfg, key_secret=key_secret, code_digest=digest,
                                clean_images=clean_images, clean_groups=clean_groups,
                                id=f"ablation_{name}") for name in m.ablations]
    independent = (train_independent_model(train_a, train_b, query, config=cfg,
                                           code_digest=digest)
                   if m.false_positives else None)
    spread = (seed_spread(train_a, train_b, test_a, test_b, groups, config=cfg,
                          cells=[list(c) for c in cells], seed_list=m.seeds,
                          surrogate=m.surrogate, key_secret=key_secret, code_digest=digest,
                          manifest=manifest, twins=m.clean_twins)
              if m.seeds else None)
    report = evaluate_output_mark(stage1, stage2, ss, test_a, test_b,
                                  cells=[list(c) for c in cells], deep_outputs=deep,
                                  baseline_outputs=base, independent_outputs=independent,
                                  ablations=ablations, twin_outputs=twins, task=task,
                                  key_secret=key_secret, spread_rows=spread,
                                  twins_in_fpr=m.twins_in_gate)
    decision = gate(report, model_name=settings.model_name, policy=params["policy"])
    register_and_promote(stage2, report, decision, model_name=settings.model_name)


# -- running it ---------------------------------------------------------------------------------


def _run_config(task: str, profile: str, config_path: str | os.PathLike | None,
                overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ZenML run config: the YAML (default ``configs/output_mark_pipeline.yaml``) + overrides.

    ``task`` and ``profile`` come from the arguments (a YAML naming others is an
    error); a top-level ``enable_cache`` is refused, since it would override
    the per-cell caching.
    """
    from neuralmark.pipelines.harness import build_run_config

    path = Path(config_path) if config_path else DEFAULT_CONFIG
    run_config = build_run_config(path, True, {"task": task, "profile": profile},
                                  [p for p in PARAMETERS if p not in ("task", "profile")],
                                  overrides)
    if run_config.get("enable_cache") is not None:
        raise InputError(f"{path} sets enable_cache at the top level, which overrides every "
                         "step and retrains every matrix cell; remove it (the pipeline is "
                         "uncached, its cells are cached)")
    return run_config


def run_output_mark(task: str = "derain", profile: str = "tiny",
                    config_path: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    callbacks: Sequence[Any] | None = None, *,
                    project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run :func:`output_mark_pipeline` on the project's local stack.

    Args:
        task: ``derain`` or ``debone``.
        profile: profile name.
        config_path: a ZenML run config (default ``configs/output_mark_pipeline.yaml``).
        overrides: ``{"config"|"data"|"evaluation"|"policy"|"matrix": {...}}``
            merged over the YAML's parameters.
        callbacks: extra training callbacks (the CLI's progress bar); only seen
            when steps run in this process.
        project_root: where ``.zen/``, ``mlflow.db``, ``data/`` and ``reports/``
            live (default: this checkout).

    Returns:
        ``run``, ``status``, ``model_name``, ``summary`` (gate metrics and the
        matrix means), ``tables`` (Markdown), ``cached_steps``, ``decision``,
        ``registered_version``, ``champion_version``, ``promoted``,
        ``mlflow_run_id``, ``reports_dir``, ``mlflow_ui``.

    Raises:
        InputError: a bad config (before anything runs) or invalid data.
        RuntimeError: any other failed run.
    """
    from neuralmark.pipelines.harness import executed, name_model, registration_outcome

    check_task(task)
    root = Path(project_root or CODE_ROOT).resolve()
    run_config = _run_config(task, profile, config_path, overrides)
    params = run_config["parameters"]
    settings = resolve_output_mark(task, profile, *(params.get(k) for k in
                                                    ("config", "data", "evaluation", "policy",
                                                     "matrix")))
    model = run_config.get("model") or {}
    if model.get("name") == model_name(METHOD) and settings.model_name != model_name(METHOD):
        # the YAML names the derain model; debone and the task-specific variant register
        # under their own name (OutputMarkConfig.variant), each with its own champion
        model["name"] = settings.model_name
    name_model(run_config, settings.model_name, str(config_path or DEFAULT_CONFIG))
    with executed(output_mark_pipeline, PIPELINE_NAME, run_config, root, callbacks) as run:
        outcome = registration_outcome(run, "evaluate_output_mark", "train_marking", root)
        cached = sorted(name for name, s in run.steps.items() if str(s.status) == "cached")
    report = outcome.pop("report")
    summary = {k: float(v) for k, v in report.summary.items()
               if k in ("psnr", "ssim", "fpr", "fpr_clean_twins",
                        "detection_rate_mean_attacked")
               or k.startswith(("sr_mean/", "spread/"))}
    return {"model_name": settings.model_name, "summary": summary,
            "tables": report.extra.get("tables", ""), "cached_steps": cached, **outcome}
