"""Check a compiled Kubeflow Pipelines spec against the cluster run config it came from.

``neuralmark.pipelines.kfp_spec`` (in ``.venv-kfp``) compiles the training pipeline to KFP's
IR YAML through ZenML's Kubeflow orchestrator; this module only reads YAML, so it runs in
the main environment too::

    python -m neuralmark.runtime.kfp_check --config configs/k8s/pgd_signer.yaml SPEC.yaml

What is checked (``check_spec``), each against ``load_cluster_config(config)``:

- every step of the training pipeline is one KFP task (``taskInfo.name``), and no other;
- each task runs its own ZenML step (``--step_name <step>`` in its executor's arguments);
- the DAG keeps the pipeline's order: each task depends only on earlier steps, and each
  step is downstream of the one before it (data → validation → training → signing →
  evaluation → gate → registry);
- every executor runs the configured image (``settings.docker.parent_image``);
- GPU steps request the configured number of accelerators of the configured type
  (``resources.gpu_count``, ``orchestrator.nm_kubeflow`` ``accelerator``), CPU-only steps
  (data, validation, gate, registry) request none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.k8s_runs import STEP_GPUS, ClusterRunConfig, load_cluster_config

#: the training pipeline's steps in data-flow order (STEP_GPUS lists them so)
TRAINING_ORDER = tuple(STEP_GPUS)


def read_spec(path: str | Path) -> dict[str, Any]:
    """The ``PipelineSpec`` (first YAML document) of a compiled KFP spec file.

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
    return docs[0]


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


def spec_problems(spec: dict[str, Any], config: ClusterRunConfig) -> list[str]:
    """Everything in ``spec`` that does not match ``config`` (empty: it matches)."""
    problems: list[str] = []
    tasks = (spec.get("root") or {}).get("dag", {}).get("tasks") or {}
    components = spec.get("components") or {}
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    step_of = {key: (task.get("taskInfo") or {}).get("name", key) for key, task in tasks.items()}
    key_of = {step: key for key, step in step_of.items()}
    missing = [s for s in TRAINING_ORDER if s not in key_of]
    extra = sorted(set(key_of) - set(TRAINING_ORDER))
    if missing:
        problems.append(f"steps with no KFP task: {', '.join(missing)}")
    if extra:
        problems.append(f"KFP tasks that are no step of the training pipeline: "
                        f"{', '.join(extra)}")
    deps = {step_of[k]: [step_of.get(d, d) for d in (t.get("dependentTasks") or [])]
            for k, t in tasks.items()}
    rank = {s: i for i, s in enumerate(TRAINING_ORDER)}
    for step in TRAINING_ORDER:
        if step not in key_of:
            continue
        later = [d for d in deps[step] if rank.get(d, len(rank)) >= rank[step]]
        if later:
            problems.append(f"{step} runs after {', '.join(later)}, which come(s) later in "
                            "the pipeline (or are not its steps)")
    for before, after in zip(TRAINING_ORDER, TRAINING_ORDER[1:], strict=False):
        if before in key_of and after in key_of and before not in _ancestors(deps, after):
            problems.append(f"{after} does not wait for {before} (no path {before} → {after} "
                            "in the DAG)")
    image = config.docker.parent_image
    for step in TRAINING_ORDER:
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
        count, kind = _accelerator(container.get("resources") or {})
        want = config.gpus[step]
        if want == 0 and count:
            problems.append(f"{step}: a CPU-only step requests {count} accelerator(s) {kind}")
        elif want and (count != want or kind != config.accelerator):
            problems.append(f"{step}: requests {count} accelerator(s) of type {kind!r}, "
                            f"configured {want} of type {config.accelerator!r}")
    return problems


def check_spec(spec: dict[str, Any], config: ClusterRunConfig) -> None:
    """Raise unless ``spec`` matches ``config`` (see the module docstring).

    Raises:
        InputError: listing every mismatch.
    """
    problems = spec_problems(spec, config)
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
        check_spec(read_spec(args.spec), config)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = ", ".join(f"{s}: {n}" for s, n in config.gpus.items() if n)
    print(f"{args.spec}: {len(TRAINING_ORDER)} steps in order, image "
          f"{config.docker.parent_image}, accelerators {gpu or 'none'} "
          f"({config.accelerator})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
