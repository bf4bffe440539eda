"""Run configs for the cluster (``configs/k8s/<method>.yaml``): per-step GPUs, schedules, CronJobs.

A cluster run config is a ZenML run config (``parameters:`` like ``configs/<method>.yaml``)
plus ``settings`` and ``steps.<step>.settings`` holding ``orchestrator.kubernetes``
(``KubernetesOrchestratorSettings``: ``pod_settings`` with resources, tolerations, node
selectors) and ``docker`` (``DockerSettings``), and optionally ``schedule``
(``Schedule(cron_expression=...)``). The same file runs on the Kubeflow stack: there a GPU
step's ``resources`` (``ResourceSettings.gpu_count``) and the pipeline's
``orchestrator.nm_kubeflow`` ``pod_settings.node_selectors.accelerator`` (the accelerator type,
the only pod setting ZenML's Kubeflow orchestrator applies with KFP 2.x) give the GPUs.
``load_cluster_config`` validates all of it with ZenML's own classes and checks each step's
``nvidia.com/gpu`` against what the step can use (``PIPELINES``: ``configs/k8s/<method>.yaml``
runs the training pipeline, ``configs/k8s/<name>_pipeline.yaml`` the pipeline ``name``), and
that both orchestrators would give each step the same GPUs, tolerations and node
selectors, before anything is submitted;
``step_pod`` and ``cron_job`` build, offline and with ZenML's own manifest builders, the
step pod and the CronJob the Kubernetes orchestrator would create.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from neuralmark.components.errors import describe_validation_error
from neuralmark.components.methods.base import InputError

K8S_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs" / "k8s"
GPU = "nvidia.com/gpu"
SETTINGS_KEY = "orchestrator.kubernetes"
KUBEFLOW_KEY = "orchestrator.nm_kubeflow"
#: the node selector ZenML's Kubeflow orchestrator reads as the KFP accelerator type
ACCELERATOR = "accelerator"
#: the most GPUs each step of the training pipeline can use (``None``: any number on one
#: node). Data, validation, gate and registry are CPU-only; signing and evaluation run one
#: model on one device; training runs one data-parallel process per GPU its pod is given
#: (``neuralmark.runtime.ddp``), so it takes what its node has, for a method whose ``fit``
#: is data-parallel (``WatermarkMethod.data_parallel``), else 1.
STEP_GPUS: dict[str, int | None] = {
    "build_dataset": 0, "validate_dataset": 0, "train_model": None, "sign_heldout": 1,
    "evaluate_robustness": 1, "gate": 0, "register_and_promote": 0}


@dataclass(frozen=True)
class ClusterPipeline:
    """What a cluster run config may ask of one pipeline's steps.

    Attributes:
        source: import path of the ZenML pipeline (what ``zenml pipeline run`` takes).
        gpus: step invocation id (or an ``fnmatch`` pattern of ids: a pipeline that calls
            one step several times names each call) → the most GPUs it can use; ``None``:
            any number on one node (a data-parallel training step, ``neuralmark.runtime.ddp``).
        chain: invocation ids that must run in this order (each waits for the one before):
            for pipelines that register, the gate before the registry step.
        method: the method a ``None`` step trains (``None``: the run's ``parameters.method``).
    """

    source: str
    gpus: dict[str, int | None]
    chain: tuple[str, ...]
    method: str | None = None

    def most_gpus(self, step: str) -> tuple[str, int | None] | None:
        """``(pattern, most GPUs)`` of the first entry matching ``step``; ``None``: no step."""
        for pattern, most in self.gpus.items():
            if fnmatch.fnmatchcase(step, pattern):
                return pattern, most
        return None


_DATA = {"build_dataset": 0, "validate_dataset": 0}
_REGISTRY = {"gate": 0, "register_and_promote": 0}
#: every ZenML pipeline of the project, by the name its cluster run config carries
#: (``configs/k8s/<name>_pipeline.yaml``; any other file there runs the training pipeline).
#: CPU-only: data, validation, pair making, reports, gate, registry. One GPU: a step that
#: trains or runs one model on one device. Any number: the training steps whose library
#: function is data-parallel (launched as in ``train_model``).
PIPELINES: dict[str, ClusterPipeline] = {
    "training": ClusterPipeline("neuralmark.pipelines.training.training_pipeline", STEP_GPUS,
                                tuple(STEP_GPUS)),
    "output_mark": ClusterPipeline(
        "neuralmark.pipelines.output_mark.output_mark_pipeline",
        {**_DATA, "make_pairs": 0, "train_marking": None, "finetune_stage2": None,
         "attacker_data": 1, "baseline_data": 1, "surrogate_*": 1, "baseline_*": 1,
         "ablation_*": 1, "train_independent_model": 1, "evaluate_output_mark": 1, **_REGISTRY},
        ("train_marking", "finetune_stage2", "evaluate_output_mark", "gate",
         "register_and_promote"), method="output_mark"),
    "trigger_key": ClusterPipeline(
        "neuralmark.pipelines.trigger_key.trigger_key_pipeline",
        {**_DATA, "train_host": None, "train_independent_host": None, "embed_owner_mark": None,
         "embed_trigger_key_*": None, "attack_*": 1, "uniqueness": 1, "capacity": 1,
         "evaluate_trigger_key": 1, **_REGISTRY},
        ("train_host", "embed_owner_mark", "evaluate_trigger_key", "gate",
         "register_and_promote"), method="trigger_key"),
    "benchmark": ClusterPipeline("neuralmark.pipelines.benchmark.benchmark_pipeline",
                                 {"benchmark_photos": 0, "benchmark_entrants": 1},
                                 ("benchmark_photos", "benchmark_entrants")),
    "data_preparation": ClusterPipeline(
        "neuralmark.pipelines.data_preparation.data_preparation_pipeline",
        {"prepare": 0, "validate": 0, "version": 0}, ("prepare", "validate", "version")),
}


def pipeline_of(path: str | Path) -> str:
    """Which pipeline a cluster run config runs: ``<name>_pipeline.yaml`` → ``name`` when
    that is one of ``PIPELINES``, else ``training`` (``configs/k8s/<method>.yaml``)."""
    stem = Path(path).stem
    name = stem.removesuffix("_pipeline")
    return name if stem.endswith("_pipeline") and name in PIPELINES else "training"
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                "@hourly"}
#: (lowest, highest, names) of the five fields of a Kubernetes CronJob schedule
_CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
                ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                  "sep", "oct", "nov", "dec")),
                ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))


def check_cron(expression: str) -> str:
    """Return ``expression`` if it is a schedule Kubernetes' CronJob accepts.

    Our own parser (croniter is not in the pinned stack, and neither ZenML's ``Schedule``
    nor kubernetes-validate look inside the string): five fields of ``*``, numbers, ranges
    ``a-b``, steps ``/n`` and lists, month and weekday names, or one of the ``@`` macros.

    Raises:
        InputError: naming the bad field and why.
    """
    expr = str(expression).strip()
    if expr.lower() in _CRON_MACROS:
        return expr
    fields = expr.split()
    if len(fields) != 5:
        raise InputError(f"cron expression {expression!r} is not one: it needs 5 fields "
                         f"(minute hour day-of-month month day-of-week), got {len(fields)}")
    for text, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            m = re.fullmatch(r"(\*|[0-9a-zA-Z]+(?:-[0-9a-zA-Z]+)?)(?:/([0-9]+))?", part)
            if m is None or (m.group(2) is not None and int(m.group(2)) == 0):
                raise InputError(f"cron expression {expression!r}: {name} field {text!r} is "
                                 "not a value, range, list or step")
            if m.group(1) == "*":
                continue
            for value in m.group(1).split("-"):
                number = (names.index(value.lower()) + lo if value.lower() in names
                          else int(value) if value.isdigit() else None)
                if number is None or not lo <= number <= hi:
                    raise InputError(f"cron expression {expression!r}: {name} {value!r} is "
                                     f"outside {lo}-{hi}")
    return expr


@dataclass(frozen=True)
class ClusterRunConfig:
    """A validated cluster run config.

    Attributes:
        path: where it was read.
        raw: the YAML as a dict (what ``zenml pipeline run -c`` reads).
        pipeline: the Kubernetes settings of the whole pipeline.
        steps: step name → its Kubernetes settings (the pipeline's merged with the step's).
        gpus: step name → ``nvidia.com/gpu`` it asks for.
        docker: the ``DockerSettings``.
        schedule: the ZenML ``Schedule`` or ``None``.
        accelerator: the KFP accelerator type GPU steps get on the Kubeflow stack
            (``None`` when no step asks for a GPU).
        name: the pipeline it runs (a key of ``PIPELINES``).
    """

    path: Path
    raw: dict[str, Any]
    pipeline: Any
    steps: dict[str, Any]
    gpus: dict[str, int]
    docker: Any
    schedule: Any
    accelerator: str | None = None
    name: str = "training"

    @property
    def spec(self) -> ClusterPipeline:
        """What the pipeline's steps may ask (``PIPELINES[name]``)."""
        return PIPELINES[self.name]

    def settings_of(self, step: str) -> Any:
        """The Kubernetes settings of the step invocation ``step`` (its own merged over the
        pipeline's, else the pipeline's)."""
        return self.steps.get(step, self.pipeline)

    def gpus_of(self, step: str) -> int:
        """``nvidia.com/gpu`` the step invocation ``step`` asks for (its own settings, else
        the pipeline's)."""
        if step in self.gpus:
            return self.gpus[step]
        return _gpu_count(self.pipeline, f"{self.path}: settings")


def _data_parallel(method: Any) -> bool:
    """Whether ``method`` (a registry key, or missing) trains data-parallel."""
    from neuralmark.components.methods.registry import method_class

    if not isinstance(method, str):
        return False
    try:
        return method_class(method).data_parallel
    except InputError:
        return False  # an unknown method is the pipeline's error to name, not this one's


def _gpu_count(settings: Any, where: str) -> int:
    pod = settings.pod_settings
    if pod is None:
        return 0
    limits = (pod.resources.get("limits") or {}).get(GPU)
    requests = (pod.resources.get("requests") or {}).get(GPU)
    if requests is not None and limits is not None and str(requests) != str(limits):
        raise InputError(f"{where}: {GPU} request {requests} differs from its limit {limits} "
                         "(Kubernetes needs them equal)")
    value = limits if limits is not None else requests
    if value is None:
        return 0
    if not str(value).isdigit():
        raise InputError(f"{where}: {GPU} must be a whole number, got {value!r}")
    return int(value)


def _no_unknown_keys(values: dict[str, Any], model: Any, where: str) -> None:
    """ZenML's settings classes ignore unknown keys; a typo here must be an error instead."""
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    for key, value in values.items():
        if key not in model.model_fields:
            raise InputError(f"{where}.{key}: not a field of {model.__name__}")
        if key in ("pod_settings", "orchestrator_pod_settings") and isinstance(value, dict):
            _no_unknown_keys(value, KubernetesPodSettings, f"{where}.{key}")


def load_cluster_config(path: str | Path) -> ClusterRunConfig:
    """Read and validate a cluster run config with ZenML's settings classes.

    Raises:
        InputError: a missing file, a bad field (named), a step that is not in the
            training pipeline, a step asking more GPUs than it can use, or a cron
            expression that is not one.
    """
    from zenml.config import DockerSettings
    from zenml.config.schedule import Schedule
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings

    path = Path(path)
    if not path.is_file():
        raise InputError(f"cluster run config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}

    def settings_of(block: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
        values = (block.get("settings") or {}).get(SETTINGS_KEY) or {}
        _no_unknown_keys(values, KubernetesOrchestratorSettings, f"{path}: {where}: "
                         f"{SETTINGS_KEY}")
        try:
            return KubernetesOrchestratorSettings(**values), values
        except ValidationError as err:
            raise InputError(f"{path}: {where}: "
                             f"{describe_validation_error(err, f'{SETTINGS_KEY}.')}") from None

    pipeline, pipeline_values = settings_of(raw, "settings")
    try:
        docker = DockerSettings(**((raw.get("settings") or {}).get("docker") or {}))
    except ValidationError as err:
        raise InputError(f"{path}: settings: "
                         f"{describe_validation_error(err, 'docker.')}") from None
    steps: dict[str, Any] = {}
    gpus: dict[str, int] = {}
    name = pipeline_of(path)
    spec = PIPELINES[name]
    for step in (raw.get("steps") or {}):
        if spec.most_gpus(step) is None:
            raise InputError(f"{path}: steps.{step}: not a step of the {name} pipeline; "
                             f"steps: {', '.join(spec.gpus)}")
    method = spec.method or (raw.get("parameters") or {}).get("method")
    pipeline_gpus = _gpu_count(pipeline, f"{path}: settings")
    if pipeline_gpus and any(most == 0 for most in spec.gpus.values()):
        raise InputError(f"{path}: settings.{SETTINGS_KEY} asks every step of the {name} "
                         f"pipeline for {pipeline_gpus} {GPU}, CPU-only steps included: ask "
                         "for GPUs under steps.<step>.settings")
    named = [s for s in spec.gpus if not any(c in s for c in "*?[")]
    for step in dict.fromkeys([*named, *(raw.get("steps") or {})]):
        _, most = spec.most_gpus(step) or (step, 0)
        if most is None and not _data_parallel(method):
            most = 1
        block = (raw.get("steps") or {}).get(step) or {}
        _, values = settings_of(block, f"steps.{step}.settings")
        # ZenML merges step settings over the pipeline's, key by key
        steps[step] = (KubernetesOrchestratorSettings(**{**pipeline_values, **values})
                       if values else pipeline)
        asked = _gpu_count(steps[step], f"{path}: steps.{step}")
        if most is not None and asked > most:
            can = ("is a CPU-only step (it can use 0)" if most == 0 else
                   f"can use at most {most}" + ("" if (spec.most_gpus(step) or ("", 0))[1]
                                                is not None else
                                                f" for {method}, whose fit is not "
                                                "data-parallel"))
            raise InputError(f"{path}: steps.{step} asks for {asked} {GPU}, but {step} {can}")
        gpus[step] = asked
    accelerator = _kubeflow_gpus(raw, path, gpus, steps)
    schedule = None
    if raw.get("schedule"):
        cron = (raw["schedule"] or {}).get("cron_expression")
        if not cron:
            raise InputError(f"{path}: schedule.cron_expression: missing (the Kubernetes "
                             "orchestrator schedules with CronJobs only)")
        check_cron(cron)
        try:
            schedule = Schedule(**raw["schedule"])
        except ValidationError as err:
            raise InputError(f"{path}: {describe_validation_error(err, 'schedule.')}") from None
    return ClusterRunConfig(path=path, raw=raw, pipeline=pipeline, steps=steps, gpus=gpus,
                            docker=docker, schedule=schedule, accelerator=accelerator, name=name)


def pod_scheduling(pod_settings: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``(tolerations, node selectors)`` of pod settings, comparable across both stacks and
    the compiled KFP spec: tolerations with the API's camelCase keys and no empty fields,
    sorted; node selectors without ``accelerator`` (ZenML's Kubeflow accelerator type)."""
    if pod_settings is None:
        return [], {}
    return (normal_tolerations(pod_settings.tolerations),
            {k: str(v) for k, v in pod_settings.node_selectors.items() if k != ACCELERATOR})


def normal_tolerations(tolerations: Any) -> list[dict[str, Any]]:
    """Tolerations (snake_case or camelCase keys) with camelCase keys, no empty fields,
    sorted by key/effect."""
    out = []
    for t in tolerations or []:
        t = {("tolerationSeconds" if k == "toleration_seconds" else k): v
             for k, v in dict(t).items()}
        out.append({k: v for k, v in t.items() if v not in (None, "")})
    return sorted(out, key=lambda t: (str(t.get("key")), str(t.get("effect"))))


def _kubeflow_gpus(raw: dict[str, Any], path: Path, gpus: dict[str, int],
                   kubernetes: dict[str, Any] | None = None) -> str | None:
    """Check the Kubeflow side of a cluster run config; return the accelerator type.

    ZenML's Kubeflow orchestrator (0.98, KFP 2.x) requests GPUs for a step from its
    ``resources.gpu_count``, and only when a step's ``orchestrator.nm_kubeflow`` pod settings
    name an ``accelerator`` node selector; it keeps one accelerator type for the whole
    pipeline. So: each step's ``gpu_count`` must equal its ``nvidia.com/gpu``, and GPU steps
    need the accelerator, set once at the pipeline level. Tolerations and node selectors
    (applied by the ``nm_kubeflow`` orchestrator with kfp-kubernetes) must be the ones the
    step's ``orchestrator.kubernetes`` pod settings give (``kubernetes``: step → settings),
    so both stacks schedule each step alike.

    Raises:
        InputError: naming the step and field.
    """
    from zenml.config import ResourceSettings

    from neuralmark.integrations.kubeflow_flavor import (
        NeuralmarkKubeflowOrchestratorSettings as KubeflowOrchestratorSettings,
    )

    def validated(model: Any, values: dict[str, Any], where: str) -> Any:
        _no_unknown_keys(values, model, where)
        try:
            return model(**values)
        except ValidationError as err:
            raise InputError(f"{where}: {describe_validation_error(err)}") from None

    settings = raw.get("settings") or {}
    kubeflow = validated(KubeflowOrchestratorSettings, settings.get(KUBEFLOW_KEY) or {},
                         f"{path}: settings.{KUBEFLOW_KEY}")
    accelerator = (kubeflow.pod_settings.node_selectors.get(ACCELERATOR)
                   if kubeflow.pod_settings else None)
    if any(gpus.values()) and not accelerator:
        raise InputError(f"{path}: settings.{KUBEFLOW_KEY}.pod_settings.node_selectors."
                         f"{ACCELERATOR} is missing: without it ZenML's Kubeflow orchestrator "
                         f"requests no GPU for the GPU steps (e.g. {ACCELERATOR}: {GPU})")
    pipeline_resources = settings.get("resources") or {}
    for step in gpus:
        block = ((raw.get("steps") or {}).get(step) or {}).get("settings") or {}
        where = f"{path}: steps.{step}.settings"
        own = kubeflow
        if block.get(KUBEFLOW_KEY):
            own = validated(KubeflowOrchestratorSettings, block[KUBEFLOW_KEY],
                            f"{where}.{KUBEFLOW_KEY}")
            if own.pod_settings and own.pod_settings.node_selectors.get(ACCELERATOR,
                                                                        accelerator) \
                    != accelerator:
                raise InputError(f"{where}.{KUBEFLOW_KEY}: ZenML's Kubeflow orchestrator "
                                 "uses one accelerator type for the whole pipeline; a step's "
                                 f"pod_settings.node_selectors.{ACCELERATOR} must be "
                                 f"settings.{KUBEFLOW_KEY}'s ({accelerator!r})")
        if kubernetes is not None:
            on_kubeflow = pod_scheduling(own.pod_settings)
            on_kubernetes = pod_scheduling(kubernetes[step].pod_settings)
            for i, what in enumerate(("tolerations", "node_selectors")):
                if on_kubeflow[i] != on_kubernetes[i]:
                    raise InputError(
                        f"{where}: {KUBEFLOW_KEY} pod_settings.{what} {on_kubeflow[i]} differ "
                        f"from {SETTINGS_KEY}'s {on_kubernetes[i]}: the Kubeflow and "
                        "Kubernetes stacks would schedule the step on different nodes")
        resources = validated(ResourceSettings, {**pipeline_resources,
                                                 **(block.get("resources") or {})},
                              f"{where}.resources")
        count = resources.gpu_count or 0
        if count != gpus[step]:
            raise InputError(f"{where}.resources.gpu_count is {count} but the step asks for "
                             f"{gpus[step]} {GPU} (orchestrator.kubernetes): the Kubeflow and "
                             "Kubernetes stacks would give it different GPUs")
    return accelerator


def step_pod(config: ClusterRunConfig, step: str, image: str) -> dict[str, Any]:
    """The pod ZenML's Kubernetes orchestrator would start for ``step`` (as a dict).

    Built with ``zenml.integrations.kubernetes.manifest_utils.build_pod_manifest``, the
    function the orchestrator's entrypoint calls, with the step's settings.
    """
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    settings = config.steps[step]
    pod = build_pod_manifest(
        pod_name=f"{step.replace('_', '-')}-pod", image_name=image,
        command=["python", "-m", "zenml.entrypoints.entrypoint"], args=["--step_name", step],
        privileged=settings.privileged, pod_settings=settings.pod_settings,
        service_account_name=settings.step_pod_service_account_name
        or settings.service_account_name)
    out = ApiClient().sanitize_for_serialization(pod)
    return {"apiVersion": "v1", "kind": "Pod", **out}


def cron_job(config: ClusterRunConfig, image: str, name: str = "neuralmark-retraining"
             ) -> dict[str, Any]:
    """The CronJob ZenML's Kubernetes orchestrator would create for a scheduled run (dict).

    The same sequence as ``KubernetesOrchestrator._submit_orchestrator_job``: the
    orchestrator pod (``build_pod_manifest``) in a Job (``build_job_manifest``) whose
    template becomes the CronJob (``build_cron_job_manifest``), with the schedule's cron
    expression and the pipeline's CronJob settings.

    Raises:
        InputError: the config has no schedule.
    """
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import (
        build_cron_job_manifest,
        build_job_manifest,
        build_pod_manifest,
        job_template_manifest_from_job,
        pod_template_manifest_from_pod,
    )

    if config.schedule is None:
        raise InputError(f"{config.path} has no schedule: add schedule.cron_expression")
    settings = config.pipeline
    pod = build_pod_manifest(
        pod_name=None, image_name=image,
        command=["python", "-m", "zenml.entrypoints.entrypoint"], args=[], privileged=False,
        pod_settings=settings.orchestrator_pod_settings,
        service_account_name=settings.service_account_name,
        termination_grace_period_seconds=settings.pod_stop_grace_period)
    job = build_job_manifest(job_name=name, pod_template=pod_template_manifest_from_pod(pod),
                             backoff_limit=settings.orchestrator_job_backoff_limit,
                             ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
                             active_deadline_seconds=settings.active_deadline_seconds,
                             labels={"pipeline": f"{config.name}_pipeline"})
    cron = build_cron_job_manifest(
        cron_expression=check_cron(config.schedule.cron_expression),
        job_template=job_template_manifest_from_job(job),
        successful_jobs_history_limit=settings.successful_jobs_history_limit,
        failed_jobs_history_limit=settings.failed_jobs_history_limit,
        concurrency_policy=settings.concurrency_policy,
        starting_deadline_seconds=settings.starting_deadline_seconds)
    return ApiClient().sanitize_for_serialization(cron)
