"""Every pipeline compiled to a KFP spec offline, through ZenML's Kubeflow orchestrator, and
the spec checked: steps, DAG, images, GPUs, tolerations and node selectors.

The compile runs in the Kubeflow environment (``.venv-kfp``, built by ``make kfp-venv``,
which ``make test`` builds first): kfp 2.x cannot be installed beside the main pins. The
check only reads YAML and runs here.

The compile imports this checkout's code, whichever checkout built ``.venv-kfp``
(``tests.kfp_env``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime import k8s_runs
from neuralmark.runtime.k8s_runs import GPU, K8S_CONFIGS_DIR, load_cluster_config
from neuralmark.runtime.kfp_check import (
    TRAINING_ORDER,
    check_spec,
    read_spec,
    read_steps,
    spec_problems,
)
from tests.kfp_env import run_module

ROOT = Path(__file__).resolve().parents[1]
#: every pipeline: two training configs, then one config per other pipeline
CONFIGS = ("pgd_signer", "anti_forward", "output_mark_pipeline", "trigger_key_pipeline",
           "benchmark_pipeline", "data_preparation_pipeline")
IMAGE = "registry.example.com/neuralmark:0.1.0"
GPU_STEPS = {"train_model", "sign_heldout", "evaluate_robustness"}
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


def _config_path(name: str, folder: Path) -> Path:
    """The cluster run config ``name``; data preparation's with its ``source`` pointed at a
    folder that exists (the pipeline fingerprints it when it is compiled)."""
    path = K8S_CONFIGS_DIR / f"{name}.yaml"
    if name != "data_preparation_pipeline":
        return path
    raw = yaml.safe_load(path.read_text())
    (folder / "photos").mkdir()
    raw["parameters"].update(source=str(folder / "photos"), out=str(folder / "prepared"))
    out = folder / path.name
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``name -> (spec path, config path)`` for each config, compiled in one ``.venv-kfp``
    process from this checkout's code (``tests.kfp_env``)."""
    out = tmp_path_factory.mktemp("kfp")
    configs = {name: _config_path(name, tmp_path_factory.mktemp(name)) for name in CONFIGS}
    args = ["--out", str(out)]
    for path in configs.values():
        args += ["--config", str(path)]
    proc = run_module("neuralmark.pipelines.kfp_spec", args,
                      tmp_path_factory.mktemp("pythonpath"))
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["config"]).stem for r in rows] == list(CONFIGS)
    return {Path(r["config"]).stem: (Path(r["spec"]), Path(r["config"])) for r in rows}


def _executor(spec, task):
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


@pytest.mark.parametrize("name", CONFIGS)
def test_compiled_spec_matches_its_config(compiled, name):
    spec_path, config_path = compiled[name]
    config = load_cluster_config(config_path)
    spec, steps = read_spec(spec_path), read_steps(spec_path)
    check_spec(spec, config, steps)  # raises on any mismatch
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == sorted(steps)
    if config.name == "training":
        assert sorted(steps) == sorted(TRAINING_ORDER)
    gpu_steps = {s for s in steps if config.gpus_of(s)}
    assert gpu_steps == (GPU_STEPS if config.name == "training" else
                         {s for s, n in config.gpus.items() if n})
    assert bool(gpu_steps) == (config.name != "data_preparation")
    executors = spec["deploymentSpec"]["executors"]
    platform = spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get(
        "executors", {})
    for task in tasks.values():
        step = task["taskInfo"]["name"]
        label = _executor(spec, task)
        container = executors[label]["container"]
        assert container["image"] == IMAGE
        assert container["command"] == ["python", "-m", "zenml.entrypoints.entrypoint"]
        accelerator = (container.get("resources") or {}).get("accelerator")
        if step in gpu_steps:
            assert accelerator["resourceCount"] == "1", step
            assert accelerator["resourceType"] == GPU, step
            # kfp-kubernetes, through the nm_kubeflow orchestrator: the GPU nodes' taint
            # and label (ZenML's own orchestrator drops them)
            assert platform[label]["tolerations"] == [GPU_TOLERATION], step
            assert platform[label]["nodeSelector"]["labels"] == {
                "nvidia.com/gpu.present": "true"}, step
        else:
            assert accelerator is None, f"{step} holds a GPU"
            assert label not in platform, f"{step} is scheduled like a GPU step"
    if "register_and_promote" in steps:
        # the chain the gate relies on: the registry step waits for the gate
        assert "gate" in tasks["register-and-promote"]["dependentTasks"]


@pytest.fixture
def pgd_spec(compiled):
    return read_spec(compiled["pgd_signer"][0]), load_cluster_config(
        K8S_CONFIGS_DIR / "pgd_signer.yaml")


def _container(spec, task):
    label = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]][
        "executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def _drop_task(spec):
    del spec["root"]["dag"]["tasks"]["sign-heldout"]


def _other_image(spec):
    _container(spec, "gate")["image"] = "registry.example.com/neuralmark:latest"


def _no_gpu_for_training(spec):
    del _container(spec, "train-model")["resources"]


def _gpu_for_the_gate(spec):
    _container(spec, "gate")["resources"] = {"accelerator": {"resourceCount": "1",
                                                             "resourceType": GPU}}


def _gate_does_not_wait(spec):
    spec["root"]["dag"]["tasks"]["gate"]["dependentTasks"] = []


def _backwards_edge(spec):
    spec["root"]["dag"]["tasks"]["validate-dataset"]["dependentTasks"].append("gate")


def _wrong_step_in_container(spec):
    args = _container(spec, "gate")["args"]
    args[args.index("--step_name") + 1] = "register_and_promote"


def _platform(spec, task):
    label = _executor(spec, spec["root"]["dag"]["tasks"][task])
    return spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"].setdefault(label, {})


def _no_toleration_for_training(spec):
    del _platform(spec, "train-model")["tolerations"]


def _gpu_node_for_the_gate(spec):
    _platform(spec, "gate")["nodeSelector"] = {"labels": {"nvidia.com/gpu.present": "true"}}


@pytest.mark.parametrize("breaks, message", [
    (_drop_task, r"steps with no KFP task: sign_heldout"),
    (_other_image, r"gate: image 'registry\.example\.com/neuralmark:latest', configured"),
    (_no_gpu_for_training, r"train_model: requests 0 accelerator\(s\) of type None, "
                           r"configured 1 of type 'nvidia\.com/gpu'"),
    (_gpu_for_the_gate, r"gate: a CPU-only step requests 1 accelerator"),
    (_gate_does_not_wait, r"gate does not wait for evaluate_robustness"),
    (_backwards_edge, r"validate_dataset runs after gate, which come\(s\) later"),
    (_wrong_step_in_container, r"gate: the container does not run ZenML step 'gate'"),
    (_no_toleration_for_training, r"train_model: tolerations \[\], configured \[\{'key': "
                                  r"'nvidia\.com/gpu'"),
    (_gpu_node_for_the_gate, r"gate: node selectors \{'nvidia\.com/gpu\.present': 'true'\}, "
                             r"configured \{\}"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_check_rejects_a_broken_spec(pgd_spec, breaks, message):
    spec, config = pgd_spec
    assert spec_problems(spec, config) == []
    broken = copy.deepcopy(spec)
    breaks(broken)
    with pytest.raises(InputError, match=message):
        check_spec(broken, config)


def test_check_follows_the_snapshot_of_every_pipeline(compiled, monkeypatch):
    """Another pipeline's DAG is checked against ZenML's snapshot: a lost edge, a task more,
    and the gate → registry chain."""
    spec_path, config_path = compiled["output_mark_pipeline"]
    spec, steps = read_spec(spec_path), read_steps(spec_path)
    config = load_cluster_config(config_path)
    assert spec_problems(spec, config, steps) == []
    assert steps["gate"] == ["evaluate_output_mark"] and "gate" in steps["register_and_promote"]
    lost = copy.deepcopy(spec)
    lost["root"]["dag"]["tasks"]["finetune-stage2"]["dependentTasks"].remove("train-marking")
    with pytest.raises(InputError, match=r"finetune_stage2 waits for \[.*\], the pipeline's "
                                         r"snapshot for \[.*'train_marking'"):
        check_spec(lost, config, steps)
    ungated = copy.deepcopy(steps)
    ungated["register_and_promote"].remove("gate")
    broken = copy.deepcopy(spec)
    broken["root"]["dag"]["tasks"]["register-and-promote"]["dependentTasks"].remove("gate")
    with pytest.raises(InputError, match=r"register_and_promote does not wait for gate"):
        check_spec(broken, config, ungated)
    fewer = {k: v for k, v in steps.items() if k != "surrogate_unet_l2"}
    with pytest.raises(InputError, match=r"KFP tasks that are no step of the output_mark "
                                         r"pipeline: surrogate_unet_l2"):
        check_spec(spec, config, fewer)
    # a step the pipeline gained but PIPELINES does not list would run on the pipeline-level
    # pod settings (a GPU step silently on a CPU pod): named
    spec_of = k8s_runs.PIPELINES["output_mark"]
    monkeypatch.setitem(k8s_runs.PIPELINES, "output_mark", dataclasses.replace(
        spec_of, gpus={k: v for k, v in spec_of.gpus.items() if k != "surrogate_*"}))
    with pytest.raises(InputError, match=r"surrogate_unet_l2: not a step of "
                                         r"PIPELINES\['output_mark'\]"):
        check_spec(spec, config, steps)


def test_not_a_spec_is_named(tmp_path):
    with pytest.raises(InputError, match=r"does not exist"):
        read_spec(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("root: [unclosed\n")
    with pytest.raises(InputError, match=r"is not valid YAML"):
        read_spec(tmp_path / "bad.yaml")
    (tmp_path / "other.yaml").write_text("apiVersion: v1\nkind: Pod\n")
    with pytest.raises(InputError, match=r"holds no pipeline spec"):
        read_spec(tmp_path / "other.yaml")


def test_kubeflow_environment_pins_what_pyproject_pins():
    """The shared packages of requirements/kubeflow.in and its lock equal pyproject's pins;
    kfp stays below 2.17 (its .after() refuses what ZenML 0.98's orchestrator passes)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(m.groups() for d in deps
                if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", d)))
    lock = dict(line.split("==") for line in
                (ROOT / "requirements" / "kubeflow.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    lock = {k.lower(): v for k, v in lock.items()}
    source = (ROOT / "requirements" / "kubeflow.in").read_text()
    for name in ("torch", "torchvision", "zenml", "mlflow", "kornia", "torchattacks", "pillow"):
        assert lock[name] == pins[name], name
        assert re.search(rf"^{name}(\[[^\]]*\])?=={re.escape(pins[name])}$", source, re.M), name
    major, minor = (int(x) for x in lock["kfp"].split(".")[:2])
    assert major == 2 and minor < 17
    assert int(lock["kubernetes"].split(".")[0]) < 31
    assert int(lock["protobuf"].split(".")[0]) < 7


def test_compile_refuses_a_missing_config_and_a_non_kubeflow_stack(tmp_path):
    """Named before any ZenML store is touched (runs here: no kfp needed to refuse)."""
    from neuralmark.pipelines.kfp_spec import compile_specs
    from neuralmark.runtime.settings import CONFIGS_DIR

    with pytest.raises(InputError, match=r"run config .*nope\.yaml does not exist"):
        compile_specs([tmp_path / "nope.yaml"], tmp_path / "out")
    with pytest.raises(InputError, match=r"components\.orchestrator\.flavor must be "
                                         r"'nm_kubeflow' to compile a KFP spec, got 'kubernetes'"):
        compile_specs([K8S_CONFIGS_DIR / "pgd_signer.yaml"], tmp_path / "out",
                      CONFIGS_DIR / "stacks" / "k8s.yaml")
    assert not (tmp_path / "out").exists()
