"""The training pipeline compiled to a KFP spec offline, through ZenML's Kubeflow orchestrator,
and the spec checked: steps, DAG order, images, GPUs.

The compile runs in the Kubeflow environment (``.venv-kfp``, built by ``make kfp-venv``,
which ``make test`` builds first): kfp 2.x cannot be installed beside the main pins. The
check only reads YAML and runs here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.k8s_runs import GPU, K8S_CONFIGS_DIR, load_cluster_config
from neuralmark.runtime.kfp_check import TRAINING_ORDER, check_spec, read_spec, spec_problems

ROOT = Path(__file__).resolve().parents[1]
KFP_PYTHON = ROOT / ".venv-kfp" / "bin" / "python"
CONFIGS = ("pgd_signer", "anti_forward")
IMAGE = "registry.example.com/neuralmark:0.1.0"
GPU_STEPS = {"train_model", "sign_heldout", "evaluate_robustness"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    """``name -> spec path`` for each config, compiled in one ``.venv-kfp`` process."""
    if not KFP_PYTHON.is_file():
        pytest.fail(f"{KFP_PYTHON} is missing: run `make kfp-venv` (make test builds it)")
    out = tmp_path_factory.mktemp("kfp")
    args = [str(KFP_PYTHON), "-m", "neuralmark.pipelines.kfp_spec", "--out", str(out)]
    for name in CONFIGS:
        args += ["--config", str(K8S_CONFIGS_DIR / f"{name}.yaml")]
    env = {**os.environ, "ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DVC_NO_ANALYTICS": "1", "ZENML_LOGGING_VERBOSITY": "WARN"}
    env.pop("ZENML_CONFIG_PATH", None)
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["config"]).stem for r in rows] == list(CONFIGS)
    return {Path(r["config"]).stem: Path(r["spec"]) for r in rows}


@pytest.mark.parametrize("name", CONFIGS)
def test_compiled_spec_matches_its_config(compiled, name):
    config = load_cluster_config(K8S_CONFIGS_DIR / f"{name}.yaml")
    spec = read_spec(compiled[name])
    check_spec(spec, config)  # raises on any mismatch
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == sorted(TRAINING_ORDER)
    executors = spec["deploymentSpec"]["executors"]
    for task in tasks.values():
        step = task["taskInfo"]["name"]
        container = executors[spec["components"][task["componentRef"]["name"]][
            "executorLabel"]]["container"]
        assert container["image"] == IMAGE
        assert container["command"] == ["python", "-m", "zenml.entrypoints.entrypoint"]
        accelerator = (container.get("resources") or {}).get("accelerator")
        if step in GPU_STEPS:
            assert accelerator["resourceCount"] == "1", step
            assert accelerator["resourceType"] == GPU, step
        else:
            assert accelerator is None, f"{step} holds a GPU"
    # the chain the gate relies on: the registry step waits for the gate
    assert "gate" in tasks["register-and-promote"]["dependentTasks"]


@pytest.fixture
def pgd_spec(compiled):
    return read_spec(compiled["pgd_signer"]), load_cluster_config(
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


@pytest.mark.parametrize("breaks, message", [
    (_drop_task, r"steps with no KFP task: sign_heldout"),
    (_other_image, r"gate: image 'registry\.example\.com/neuralmark:latest', configured"),
    (_no_gpu_for_training, r"train_model: requests 0 accelerator\(s\) of type None, "
                           r"configured 1 of type 'nvidia\.com/gpu'"),
    (_gpu_for_the_gate, r"gate: a CPU-only step requests 1 accelerator"),
    (_gate_does_not_wait, r"gate does not wait for evaluate_robustness"),
    (_backwards_edge, r"validate_dataset runs after gate, which come\(s\) later"),
    (_wrong_step_in_container, r"gate: the container does not run ZenML step 'gate'"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_check_rejects_a_broken_spec(pgd_spec, breaks, message):
    spec, config = pgd_spec
    assert spec_problems(spec, config) == []
    broken = copy.deepcopy(spec)
    breaks(broken)
    with pytest.raises(InputError, match=message):
        check_spec(broken, config)


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
