"""The trigger_key pipeline (seed 002, issue #13): train a host, mark it, attack it, gate, register.

::

    data → host (unmarked) → independent host → embed (owner key) + η + visualizer
         → Base-1, Base-2 in the same host
         → one cached step per method × attack (pruning curve, fine-tuning on original
           and new data, distillation, overwriting; each with the host's task PSNR)
         → uniqueness (hosts × keys), capacity (trigger sizes)
         → evaluation report (fidelity, FPR with CI, attack tables, heatmap, capacity)
         → gate → register ``neuralmark-trigger_key-<arch>-<task>``

Run it with the CLI (``neuralmark mark-model``), from Python (:func:`run_trigger_key`), or
with ZenML once the stack exists (``python -m neuralmark.runtime.stack``)::

    zenml pipeline run neuralmark.pipelines.trigger_key.trigger_key_pipeline \
        -c configs/trigger_key.yaml

Each host/task is its own registered model (``configs/trigger_key.yaml`` DnCNN denoise,
``trigger_key_red.yaml`` RED denoise, ``trigger_key_sr.yaml`` VDSR ×2), so each has its
own champion. The pipeline is uncached; the expensive independent pieces are cached steps
(``steps/trigger_key.py``), so the run config must not set a top-level ``enable_cache``.

Parameters: ``profile``, the overrides ``config`` / ``data`` / ``evaluation`` /
``policy`` (merged over the profile's ``trigger_key`` section; ``evaluation.key_secret``
is the owner's key) and ``study`` (:class:`StudySettings`).

The gate reads ``study.gate_summary``'s keys through the generic policy: ``min_psnr`` on
the marked host's task PSNR, ``max_fpr`` on the held-out FPR, and ``min_metric`` /
``max_metric`` for the rest, e.g. ``{"detected/none": 1, "detected/fine_tune_original_1":
1, prune_survived_max: 0.1}`` and ``{fidelity_cost_db: 1.0, uniqueness_false_matches: 0}``;
``max_removal_psnr_drop`` (the profiles: their fidelity ceiling) is the gate's removal policy:
a failed ``detected/<label>`` counts only when the attacked host's ``psnr/<label>`` stayed
within it of the marked host's (``components/gate.py``; the raw failure stays in the notes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from zenml import pipeline
from zenml.enums import ExecutionMode

from neuralmark.components.attacks.model_registry import (
    MODEL_ATTACK_SUITE,
    ModelAttackSettings,
    get_model_attack,
)
from neuralmark.components.errors import InputError, describe_validation_error
from neuralmark.components.methods.trigger_key.analysis import (
    CAPACITY_SIZES_FULL,
    CAPACITY_SIZES_TINY,
)
from neuralmark.components.methods.trigger_key.study import (
    BASELINES,
    check_calibration_sizes,
    check_policy_labels,
)
from neuralmark.components.nets.restoration import HOST_DEFAULTS
from neuralmark.integrations.tracking import record_environment
from neuralmark.pipelines.output_mark import components_digest
from neuralmark.runtime.settings import (
    CODE_ROOT,
    CONFIGS_DIR,
    load_profile,
    model_name,
    resolve,
)

PIPELINE_NAME = "trigger_key_pipeline"
METHOD = "trigger_key"
DEFAULT_CONFIG = CONFIGS_DIR / "trigger_key.yaml"
PARAMETERS = ("profile", "config", "data", "evaluation", "policy", "study")
#: the tiny suite: the seed's attacks at a CPU's budget (pruning curve up to 90%), and the
#: keyless noise fine-tuning at the same one epoch (reported, no gate floor; tk11, MODEL_CARD)
TINY_SUITE: list[tuple[str, list[float | None]]] = [
    ("prune", [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]), ("fine_tune_original", [1]),
    ("fine_tune_new", [1]), ("distill", [1]), ("overwrite", [None]),
    ("fine_tune_noise", [1])]


class StudySettings(BaseModel):
    """What the pipeline runs besides the host and the owner's mark.

    Attributes:
        suite: ``[[attack, [strength, ...]], ...]`` of the shared model attacks
            (``attacks/model_registry``); ``None``: :data:`TINY_SUITE` on ``tiny``, the
            seed's ``MODEL_ATTACK_SUITE`` on any other profile.
        attack_settings: the attacker's schedule (``ModelAttackSettings``).
        baselines: also mark and attack Base-1 and Base-2.
        other_keys: hosts marked with this many other keys for the uniqueness table.
        capacity_sizes: trigger sides of the capacity study (``[]``: skip it; ``None``:
            ``CAPACITY_SIZES_TINY`` on ``tiny``, the seed's 20² … 600² otherwise).
        capacity_keys: random keys of each capacity size's calibration.
        uniqueness_keys: random keys of each other key's calibration (``None``: config's).
        independent_seed: init/batch seed of the independently trained host.
        test_splits: manifest splits pooled into the test pairs.
        prepared: a prepared dataset's ``manifest.csv`` (or folder) with the seed's images
            (e.g. BSD / DIV2K via ``neuralmark data prepare``) instead of the sample set.
        new_data: a prepared texture / photo set for fine-tuning on new data (KTH-TIPS
            layout for denoising, DIV2K for SR); ``None``: procedural textures.
        arch_depth: profile → arch → host depth, applied unless ``config.depth`` is set
            (full: the seed's DnCNN 17, RED 30, VDSR 20; tiny: RED needs an even depth).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: list[tuple[str, list[float | None]]] | None = None
    attack_settings: dict[str, Any] = Field(default_factory=dict)
    baselines: bool = True
    other_keys: int = Field(2, ge=0, le=16)
    capacity_sizes: list[int] | None = None
    #: 40 keys left η unreachable at alpha 0.01 (p ≥ 1/(n+1)): nothing detected, η nan;
    #: since tk16 such a count (here, uniqueness_keys or the config's calibration_keys) is
    #: refused when the settings are resolved, before training (``check_calibration_sizes``)
    capacity_keys: int = Field(100, ge=2)
    uniqueness_keys: int | None = Field(None, ge=2)
    independent_seed: int = 1000
    test_splits: list[str] = Field(default_factory=lambda: ["val", "test"])
    prepared: str | None = None
    new_data: str | None = None
    arch_depth: dict[str, dict[str, int]] = Field(default_factory=lambda: {
        "tiny": {"dncnn": 5, "red": 6, "vdsr": 5},
        "full": {arch: depth for arch, (depth, _) in HOST_DEFAULTS.items()}})

    @field_validator("suite")
    @classmethod
    def _known_attacks(cls, suite: list[tuple[str, list[float | None]]] | None
                       ) -> list[tuple[str, list[float | None]]] | None:
        try:
            for name, strengths in suite or []:
                attack = get_model_attack(name)
                for s in strengths:
                    attack.label(s)
        except InputError as err:
            raise ValueError(str(err)) from None
        return suite

    def suite_for(self, profile: str) -> list[tuple[str, list[float | None]]]:
        """The suite this profile runs (see ``suite``)."""
        if self.suite is not None:
            return [(a, list(st)) for a, st in self.suite]
        return [(a, list(st)) for a, st in (TINY_SUITE if profile == "tiny"
                                            else MODEL_ATTACK_SUITE)]

    def capacity_for(self, profile: str) -> list[int]:
        """The trigger sides this profile's capacity study embeds (see ``capacity_sizes``)."""
        if self.capacity_sizes is not None:
            return list(self.capacity_sizes)
        return list(CAPACITY_SIZES_TINY if profile == "tiny" else CAPACITY_SIZES_FULL)

    @field_validator("attack_settings")
    @classmethod
    def _attack_settings(cls, values: dict[str, Any]) -> dict[str, Any]:
        try:
            ModelAttackSettings.model_validate(values)
        except ValidationError as err:
            raise ValueError(describe_validation_error(err)) from None
        return values


def study_settings(values: Mapping[str, Any] | None) -> StudySettings:
    """Validate the ``study`` parameter; a typo is an ``InputError`` naming the field."""
    try:
        return StudySettings.model_validate(dict(values or {}))
    except ValidationError as err:
        raise InputError(f"invalid study config: "
                         f"{describe_validation_error(err, 'study.')}") from None


def host_model_name(arch: str, task: str, scale: int) -> str:
    """``neuralmark-trigger_key-<arch>-denoise`` or ``…-<arch>-sr<scale>``."""
    return model_name(METHOD, f"{arch}-{task}" if task == "denoise" else f"{arch}-sr{scale}")


def resolve_trigger_key(profile: str, config: Mapping[str, Any] | None = None,
                        data: Mapping[str, Any] | None = None,
                        evaluation: Mapping[str, Any] | None = None,
                        policy: Mapping[str, Any] | None = None,
                        study: Mapping[str, Any] | None = None,
                        profiles_dir: Path | None = None) -> tuple[Any, StudySettings, str]:
    """``resolve`` over the profile's ``trigger_key`` section, the study, the model name.

    The host depth comes from ``study.arch_depth[profile][arch]`` unless ``config.depth``
    is given; the policy's ``detected/<label>`` keys must name attacks of the suite, and
    every calibration the run will make must reach alpha
    (``study.check_calibration_sizes``): both refused here, before any step trains.
    ``profiles_dir``: where ``<profile>.yaml`` lives (default ``configs/profiles``).

    Returns:
        ``(settings, study settings, registered model name)``.
    """
    s = study_settings(study)
    cfg = dict(config or {})
    section = load_profile(profile, profiles_dir).get(METHOD, {}).get("method", {})
    arch = str(cfg.get("arch", section.get("arch", "dncnn")))
    depth = s.arch_depth.get(profile, {}).get(arch)
    if "depth" not in cfg and depth is not None:
        cfg["depth"] = depth
    settings = resolve(METHOD, profile, config=cfg, data=data, evaluation=evaluation,
                       policy=policy, profiles_dir=profiles_dir)
    pol = settings.policy
    check_policy_labels([*pol.min_metric, *pol.max_metric], s.suite_for(profile))
    c = settings.config
    check_calibration_sizes(c, s.other_keys, s.uniqueness_keys, s.capacity_for(profile),
                            s.capacity_keys)
    return settings, s, host_model_name(c.arch, c.task, c.scale)


@pipeline(name=PIPELINE_NAME, enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST,
          on_start=record_environment)
def trigger_key_pipeline(profile: str = "tiny", config: dict[str, Any] | None = None,
                         data: dict[str, Any] | None = None,
                         evaluation: dict[str, Any] | None = None,
                         policy: dict[str, Any] | None = None,
                         study: dict[str, Any] | None = None) -> None:
    """Train a host, mark it with the owner's key, attack it and the baselines, gate, register.

    Args:
        profile: ``configs/profiles/<profile>.yaml`` section ``trigger_key`` to start from.
        config: overrides of the trigger_key config (``task``, ``arch``, ``lam``, …).
        data: overrides of the data settings (the sample set the pairs are cut from).
        evaluation: overrides of the evaluation settings (``key_secret``: the owner's key).
        policy: overrides of the gate policy.
        study: :class:`StudySettings` fields.
    """
    from neuralmark.steps.data import build_dataset, validate_dataset
    from neuralmark.steps.promotion import gate, register_and_promote
    from neuralmark.steps.trigger_key import (
        attack_host,
        capacity,
        embed_baseline,
        embed_owner_mark,
        evaluate_trigger_key,
        train_host,
        train_independent_host,
        uniqueness,
    )

    settings, s, name = resolve_trigger_key(profile, config, data, evaluation, policy, study)
    params = settings.step_parameters()
    cfg, secret = params["config"], params["evaluation"]["key_secret"]
    splits, digest = list(s.test_splits), components_digest()
    if s.prepared is None:
        manifest = build_dataset(params["data"])
        manifest = validate_dataset(manifest, min_size=settings.config.patch_size)
    else:
        manifest = s.prepared
    unmarked = train_host(manifest, config=cfg, test_splits=splits)
    independent = train_independent_host(unmarked, manifest, test_splits=splits,
                                         seed=s.independent_seed, code_digest=digest)
    marked, pool = embed_owner_mark(unmarked, independent, manifest, test_splits=splits,
                                    key_secret=secret)
    methods = [(METHOD, marked)]
    if s.baselines:
        methods += [(b, embed_baseline(unmarked, manifest, test_splits=splits, name=b,
                                       key_secret=secret, code_digest=digest, id=f"embed_{b}"))
                    for b in BASELINES]
    attack_settings = ModelAttackSettings(**s.attack_settings).model_dump(mode="json")
    rows = [attack_host(method, manifest, test_splits=splits, name=label, attack=attack,
                        strengths=list(strengths), key_secret=secret,
                        settings=attack_settings, new_manifest=s.new_data, code_digest=digest,
                        id=f"attack_{label}_{attack}")
            for label, method in methods for attack, strengths in s.suite_for(profile)]
    others = [f"{secret}/other-{i + 1}" for i in range(s.other_keys)]
    unique = uniqueness(marked, independent, manifest, test_splits=splits, key_secret=secret,
                        other_secrets=others, n_keys=s.uniqueness_keys, marked_pool=pool,
                        code_digest=digest)
    cap = capacity(marked, manifest, test_splits=splits, key_secret=secret,
                   sizes=s.capacity_for(profile), n_keys=s.capacity_keys, code_digest=digest)
    report = evaluate_trigger_key(marked, manifest, test_splits=splits, attack_rows=rows,
                                  uniqueness_rows=unique, capacity_rows=cap, title=name)
    decision = gate(report, model_name=name, policy=params["policy"])
    register_and_promote(marked, report, decision, model_name=name)


# -- running it ---------------------------------------------------------------------------------


def _run_config(profile: str, config_path: str | os.PathLike | None,
                overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ZenML run config: the YAML (default ``configs/trigger_key.yaml``) + overrides.

    A top-level ``enable_cache`` is refused (it would override the cached steps).
    """
    from neuralmark.pipelines.harness import build_run_config

    path = Path(config_path) if config_path else DEFAULT_CONFIG
    run_config = build_run_config(path, True, {"profile": profile},
                                  [p for p in PARAMETERS if p != "profile"], overrides)
    if run_config.get("enable_cache") is not None:
        raise InputError(f"{path} sets enable_cache at the top level, which overrides every "
                         "step and reruns every attack; remove it (the pipeline is uncached, "
                         "its attacks and baselines are cached)")
    return run_config


def run_trigger_key(profile: str = "tiny", config_path: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None,
                    callbacks: Sequence[Any] | None = None, *,
                    project_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run :func:`trigger_key_pipeline` on the project's local stack.

    Args:
        profile: profile name.
        config_path: a ZenML run config (default ``configs/trigger_key.yaml``).
        overrides: ``{"config"|"data"|"evaluation"|"policy"|"study": {...}}`` merged over
            the YAML's parameters.
        callbacks: extra training callbacks (the CLI's progress bar).
        project_root: where ``.zen/``, ``mlflow.db``, ``data/`` and ``reports/`` live.

    Returns:
        ``run``, ``status``, ``model_name``, ``summary``, ``tables`` (Markdown),
        ``cached_steps``, ``decision``, ``registered_version``, ``champion_version``,
        ``promoted``, ``mlflow_run_id``, ``reports_dir``, ``mlflow_ui``.

    Raises:
        InputError: a bad config (before anything runs) or invalid data.
        RuntimeError: any other failed run.
    """
    from neuralmark.pipelines.harness import executed, name_model, registration_outcome

    root = Path(project_root or CODE_ROOT).resolve()
    run_config = _run_config(profile, config_path, overrides)
    params = run_config["parameters"]
    _, _, name = resolve_trigger_key(profile, *(params.get(k) for k in
                                                ("config", "data", "evaluation", "policy",
                                                 "study")))
    model = run_config.get("model") or {}
    if str(model.get("name", "")).startswith(model_name(METHOD)):
        model["name"] = name  # a YAML's host model, retargeted by --arch / --task overrides
    name_model(run_config, name, str(config_path or DEFAULT_CONFIG))
    with executed(trigger_key_pipeline, PIPELINE_NAME, run_config, root, callbacks) as run:
        outcome = registration_outcome(run, "evaluate_trigger_key", "train_host", root)
        cached = sorted(n for n, st in run.steps.items() if str(st.status) == "cached")
    report = outcome.pop("report")
    return {"model_name": name, "summary": {k: float(v) for k, v in report.summary.items()},
            "tables": report.extra.get("tables", ""), "cached_steps": cached, **outcome}
