"""Check a compiled Kubeflow Pipelines spec against the cluster run config it came from.

``neuralmark.pipelines.kfp_spec`` (in ``.venv-kfp``) compiles the training pipeline to KFP's
IR YAML through ZenML's Kubeflow orchestrator; this module only reads YAML, so it runs in
the main environment too::

    python -m neuralmark.runtime.kfp_check --config configs/k8s/pgd_signer.yaml SPEC.yaml

What is checked (``check_spec``), each against ``load_cluster_config(config)`` and, for
every pipeline, the steps of ZenML's snapshot that ``kfp_spec`` writes beside the spec
(``<name>.steps.json``: step invocation → the invocations it waits for):

- every step invocation of the pipeline is one KFP task (``taskInfo.name``), and no other;
- each task runs its own ZenML step (``--step_name <step>`` in its executor's arguments);
- the DAG is the snapshot's: each task waits for exactly the steps ZenML wires before it
  (without the steps file, the training pipeline's: each task depends only on earlier
  steps); and the pipeline's chain holds (``ClusterPipeline.chain``: for the training
  pipeline data → validation → training → signing → evaluation → gate → registry; for
  every pipeline that registers, the gate before the registry step);
- every executor runs the configured image (``settings.docker.parent_image``);
- GPU steps request the configured number of accelerators of the configured type
  (``resources.gpu_count``, ``orchestrator.nm_kubeflow`` ``accelerator``), CPU-only steps
  (data, validation, gate, registry) request none;
- each task's pod gets the tolerations and node selectors of the step's Kubernetes pod
  settings (the platform spec's ``kubernetes`` executors, written by kfp-kubernetes through
  the ``nm_kubeflow`` orchestrator), and a step without them gets none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.k8s_runs import (
    STEP_GPUS,
    ClusterRunConfig,
    load_cluster_config,
    normal_tolerations,
    pod_scheduling,
)

#: the training pipeline's steps in data-flow order (STEP_GPUS lists them so)
TRAINING_ORDER = tuple(STEP_GPUS)


def read_spec(path: str | Path) -> dict[str, Any]:
    """The ``PipelineSpec`` (first YAML document) of a compiled KFP spec file, with the
    platform spec's ``platforms`` (the second document, where kfp-kubernetes writes
    tolerations and node selectors) added under ``platforms`` when there is one.

    Raises:
        InputError: a missing file, YAML that does not parse, or no pipeline spec in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"KFP spec {path} does not exist")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise InputError(f"KFP spec {path} is not valid YAML: {err}") from None
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise InputError(f"KFP spec {path} holds no pipeline spec (no `root` DAG)")
    spec = dict(docs[0])
    for doc in docs[1:]:
        if isinstance(doc, dict) and "platforms" in doc:
            spec["platforms"] = doc["platforms"]
    return spec


def steps_path(spec_path: str | Path) -> Path:
    """Where ``kfp_spec`` writes the snapshot's steps beside a spec: ``<name>.steps.json``."""
    spec_path = Path(spec_path)
    return spec_path.with_name(f"{spec_path.stem}.steps.json")


def read_steps(spec_path: str | Path) -> dict[str, list[str]] | None:
    """The step invocations → upstream invocations written beside ``spec_path`` (``None``
    when there is no such file: the training pipeline's fixed steps are checked).

    Raises:
        InputError: the file is not a JSON object of lists of step names.
    """
    path = steps_path(spec_path)
    if not path.is_file():
        return None
    try:
        steps = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(steps, dict) or not all(
            isinstance(v, list) and all(isinstance(u, str) for u in v) for v in steps.values()):
        raise InputError(f"{path}: expected {{step: [upstream steps]}}")
    return steps


def _accelerator(resources: dict[str, Any]) -> tuple[int, str | None]:
    """(count, type) of a KFP container's accelerator request (0, None if none).

    KFP writes ``accelerator: {resourceCount: '1', resourceType: ...}`` (older SDKs:
    ``count`` / ``type``).
    """
    acc = (resources or {}).get("accelerator") or {}
    count = acc.get("resourceCount", acc.get("count", 0))
    return int(count or 0), acc.get("resourceType", acc.get("type"))


def _ancestors(deps: dict[str, list[str]], task: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(task, []))
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo += deps.get(t, [])
    return seen


def spec_problems(spec: dict[str, Any], config: ClusterRunConfig,
                  steps: dict[str, list[str]] | None = None) -> list[str]:
    """Everything in ``spec`` that does not match ``config`` (empty: it matches).

    Args:
        spec: the compiled ``PipelineSpec``.
        config: the cluster run config it was compiled from.
        steps: the pipeline's step invocations → the invocations each waits for, as ZenML's
            snapshot has them (``kfp_spec`` writes them beside the spec as
            ``<name>.steps.json``). Without it, the training pipeline's fixed steps.
    """
    problems: list[str] = []
    tasks = (spec.get("root") or {}).get("dag", {}).get("tasks") or {}
    components = spec.get("components") or {}
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    step_of = {key: (task.get("taskInfo") or {}).get("name", key) for key, task in tasks.items()}
    key_of = {step: key for key, step in step_of.items()}
    expected = list(steps) if steps is not None else list(TRAINING_ORDER)
    missing = [s for s in expected if s not in key_of]
    extra = sorted(set(key_of) - set(expected))
    if missing:
        problems.append(f"steps with no KFP task: {', '.join(missing)}")
    if extra:
        problems.append(f"KFP tasks that are no step of the {config.name} pipeline: "
                        f"{', '.join(extra)}")
    deps = {step_of[k]: [step_of.get(d, d) for d in (t.get("dependentTasks") or [])]
            for k, t in tasks.items()}
    if steps is None:
        rank = {s: i for i, s in enumerate(TRAINING_ORDER)}
        for step in TRAINING_ORDER:
            if step not in key_of:
                continue
            later = [d for d in deps[step] if rank.get(d, len(rank)) >= rank[step]]
            if later:
                problems.append(f"{step} runs after {', '.join(later)}, which come(s) later "
                                "in the pipeline (or are not its steps)")
    else:
        for step, upstream in steps.items():
            if step in key_of and sorted(deps[step]) != sorted(upstream):
                problems.append(f"{step} waits for {sorted(deps[step])}, the pipeline's "
                                f"snapshot for {sorted(upstream)}")
    chain = [s for s in config.spec.chain if s in expected]
    for before, after in zip(chain, chain[1:], strict=False):
        if before in key_of and after in key_of and before not in _ancestors(deps, after):
            problems.append(f"{after} does not wait for {before} (no path {before} → {after} "
                            "in the DAG)")
    image = config.docker.parent_image
    for step in expected:
        if config.spec.most_gpus(step) is None:
            # a step the pipeline gained after PIPELINES was written would run on whatever
            # the pipeline-level settings give (a GPU step silently on a CPU pod)
            problems.append(f"{step}: not a step of PIPELINES[{config.name!r}] "
                            "(runtime/k8s_runs.py): say what it may use, and give it settings "
                            f"in {config.path}")
        if step not in key_of:
            continue
        task = tasks[key_of[step]]
        ref = (task.get("componentRef") or {}).get("name")
        label = (components.get(ref) or {}).get("executorLabel")
        container = (executors.get(label) or {}).get("container")
        if container is None:
            problems.append(f"{step}: task has no container executor (component {ref!r})")
            continue
        if container.get("image") != image:
            problems.append(f"{step}: image {container.get('image')!r}, configured {image!r}")
        args = [str(a) for a in container.get("args") or []]
        if "--step_name" not in args or args[args.index("--step_name") + 1:][:1] != [step]:
            problems.append(f"{step}: the container does not run ZenML step {step!r} "
                            f"(args {args})")
        platform = (((spec.get("platforms") or {}).get("kubernetes") or {})
                    .get("deploymentSpec", {}).get("executors", {}).get(label) or {})
        tolerations = normal_tolerations(platform.get("tolerations"))
        selectors = {k: str(v) for k, v in
                     ((platform.get("nodeSelector") or {}).get("labels") or {}).items()}
        want_tolerations, want_selectors = pod_scheduling(config.settings_of(step).pod_settings)
        if tolerations != want_tolerations:
            problems.append(f"{step}: tolerations {tolerations}, configured {want_tolerations}")
        if selectors != want_selectors:
            problems.append(f"{step}: node selectors {selectors}, configured {want_selectors}")
        count, kind = _accelerator(container.get("resources") or {})
        want = config.gpus_of(step)
        if want == 0 and count:
            problems.append(f"{step}: a CPU-only step requests {count} accelerator(s) {kind}")
        elif want and (count != want or kind != config.accelerator):
            problems.append(f"{step}: requests {count} accelerator(s) of type {kind!r}, "
                            f"configured {want} of type {config.accelerator!r}")
    return problems


def check_spec(spec: dict[str, Any], config: ClusterRunConfig,
               steps: dict[str, list[str]] | None = None) -> None:
    """Raise unless ``spec`` matches ``config`` (see the module docstring and
    ``spec_problems``).

    Raises:
        InputError: listing every mismatch.
    """
    problems = spec_problems(spec, config, steps)
    if problems:
        raise InputError(f"KFP spec does not match {config.path}:\n- " + "\n- ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuralmark.runtime.kfp_check",
        description="Check a compiled KFP pipeline spec against its cluster run config.")
    parser.add_argument("--config", required=True, type=Path,
                        help="the cluster run config it was compiled from")
    parser.add_argument("spec", type=Path, help="the KFP IR YAML")
    args = parser.parse_args(argv)
    try:
        config = load_cluster_config(args.config)
        steps = read_steps(args.spec)
        check_spec(read_spec(args.spec), config, steps)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = ", ".join(f"{s}: {n}" for s, n in config.gpus.items() if n)
    print(f"{args.spec}: {len(steps or TRAINING_ORDER)} steps in order, image "
          f"{config.docker.parent_image}, accelerators {gpu or 'none'} "
          f"({config.accelerator})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
