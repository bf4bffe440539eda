"""Cluster run configs: ZenML's settings classes, GPUs per step, schedule → CronJob, offline."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.k8s_runs import (
    GPU,
    K8S_CONFIGS_DIR,
    PIPELINES,
    STEP_GPUS,
    check_cron,
    cron_job,
    load_cluster_config,
    pipeline_of,
    step_pod,
)
from neuralmark.runtime.manifests import KUBERNETES_VERSION

CONFIGS = sorted(K8S_CONFIGS_DIR.glob("*.yaml"))
IMAGE = "registry.example.com/neuralmark:0.1.0"
GPU_STEPS = {"train_model", "sign_heldout", "evaluate_robustness"}


def _edited(tmp_path: Path, edit, name: str = "pgd_signer.yaml") -> Path:
    raw = yaml.safe_load((K8S_CONFIGS_DIR / name).read_text())
    edit(raw)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(raw))
    return out


#: the steps of each pipeline that hold a GPU in its cluster run config
PIPELINE_GPU_STEPS = {
    "output_mark": {"train_marking", "finetune_stage2", "attacker_data", "baseline_data",
                    "train_independent_model", "evaluate_output_mark",
                    "ablation_no_clean_loss", "ablation_no_consistency_loss"}
    | {f"{kind}_{cell}" for kind in ("surrogate", "baseline")
       for cell in ("cnet_l2", "res9_l2", "res16_l2", "unet_l2", "unet_l1",
                    "unet_l1_adversarial", "unet_l2_adversarial", "unet_perceptual",
                    "unet_perceptual_adversarial")},
    "trigger_key": {"train_host", "train_independent_host", "embed_owner_mark",
                    "embed_trigger_key_backdoor", "embed_trigger_key_randproj", "uniqueness",
                    "capacity", "evaluate_trigger_key"}
    | {f"attack_{m}_{a}" for m in ("trigger_key", "trigger_key_backdoor", "trigger_key_randproj")
       for a in ("prune", "fine_tune_original", "fine_tune_new", "distill", "overwrite",
                 "fine_tune_noise")},
    "benchmark": {"benchmark_entrants"},
    "data_preparation": set(),
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_step_gets_the_resources_it_needs(path):
    config = load_cluster_config(path)
    assert config.name == pipeline_of(path)
    gpu_steps = GPU_STEPS if config.name == "training" else PIPELINE_GPU_STEPS[config.name]
    if config.name == "training":
        assert set(config.steps) == set(STEP_GPUS)
    assert {s for s, n in config.gpus.items() if n} == gpu_steps
    for step in config.steps:
        pod = step_pod(config, step, IMAGE)
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        container = pod["spec"]["containers"][0]
        limits = container["resources"].get("limits", {})
        if step in gpu_steps:
            assert config.gpus[step] == 1 and limits[GPU] == "1", step
            assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in \
                pod["spec"]["tolerations"]
        else:
            assert config.gpus[step] == 0 and GPU not in limits, f"{step} holds a GPU"
            assert "tolerations" not in pod["spec"] or not pod["spec"]["tolerations"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), step
        assert pod["spec"]["serviceAccountName"] == "zenml-step"
    assert config.docker.parent_image == IMAGE and config.docker.skip_build


def test_same_parameters_as_the_local_configs():
    for path in CONFIGS:
        if pipeline_of(path) != "training":
            continue
        params = yaml.safe_load(path.read_text())["parameters"]
        local = yaml.safe_load((K8S_CONFIGS_DIR.parent / f"{params['method']}.yaml")
                               .read_text())["parameters"]
        assert params["method"] == local["method"]
        assert params.get("config", {}).get("variant") == (local.get("config") or {}).get(
            "variant")


def test_cpu_step_asking_for_a_gpu_is_refused(tmp_path):
    def gate_gpu(raw):
        raw["steps"]["gate"] = {"settings": {"orchestrator.kubernetes": {"pod_settings": {
            "resources": {"limits": {GPU: "1"}}}}}}

    with pytest.raises(InputError, match=r"steps\.gate asks for 1 nvidia\.com/gpu, but gate is "
                                         r"a CPU-only step"):
        load_cluster_config(_edited(tmp_path, gate_gpu))


def test_more_gpus_than_a_step_can_use_is_refused(tmp_path):
    def two(raw):
        res = raw["steps"]["sign_heldout"]["settings"]["orchestrator.kubernetes"][
            "pod_settings"]["resources"]
        res["requests"][GPU] = res["limits"][GPU] = "2"

    with pytest.raises(InputError, match=r"steps\.sign_heldout asks for 2 nvidia\.com/gpu, but "
                                         r"sign_heldout can use at most 1"):
        load_cluster_config(_edited(tmp_path, two))


def test_training_step_may_ask_for_several_gpus(tmp_path):
    """train_model runs one data-parallel process per GPU (neuralmark.runtime.ddp)."""
    def four(raw):
        res = raw["steps"]["train_model"]["settings"]["orchestrator.kubernetes"][
            "pod_settings"]["resources"]
        res["requests"][GPU] = res["limits"][GPU] = "4"
        raw["steps"]["train_model"]["settings"]["resources"]["gpu_count"] = 4  # Kubeflow's

    config = load_cluster_config(_edited(tmp_path, four))
    assert config.gpus["train_model"] == 4 and config.gpus["sign_heldout"] == 1

    def not_data_parallel(raw):
        four(raw)
        raw["parameters"]["method"] = "spread_spectrum"

    with pytest.raises(InputError, match=r"steps\.train_model asks for 4 nvidia\.com/gpu, but "
                                         r"train_model can use at most 1 for spread_spectrum"):
        load_cluster_config(_edited(tmp_path, not_data_parallel))


def test_unknown_step_and_bad_setting_are_named(tmp_path):
    with pytest.raises(InputError, match=r"steps\.train: not a step of the training pipeline"):
        load_cluster_config(_edited(tmp_path, lambda raw: raw["steps"].update(train={})))

    def typo(raw):
        raw["settings"]["orchestrator.kubernetes"]["pod_settings"]["tolerationz"] = []

    with pytest.raises(InputError, match=r"orchestrator\.kubernetes\.pod_settings\.tolerationz"):
        load_cluster_config(_edited(tmp_path, typo))


@pytest.mark.parametrize("expr", ["0 3 * * 1", "*/15 * * * *", "0 0 1,15 * mon-fri",
                                  "5 4 * jan-jun sun", "@weekly"])
def test_cron_expressions_kubernetes_accepts(expr):
    assert check_cron(expr) == expr


@pytest.mark.parametrize("expr, message", [
    ("0 3 * *", r"needs 5 fields"),
    ("61 * * * *", r"minute '61' is outside 0-59"),
    ("0 25 * * *", r"hour '25' is outside 0-23"),
    ("0 3 * * funday", r"day of week 'funday'"),
    ("*/0 * * * *", r"minute field '\*/0'"),
    ("every monday", r"needs 5 fields"),
])
def test_invalid_cron_is_refused_before_submission(tmp_path, expr, message):
    with pytest.raises(InputError, match=message):
        check_cron(expr)
    path = _edited(tmp_path, lambda raw: raw["schedule"].update(cron_expression=expr),
                   "pgd_signer_weekly.yaml")
    with pytest.raises(InputError, match=message):
        load_cluster_config(path)


def test_schedule_becomes_the_cronjob_zenml_would_create():
    config = load_cluster_config(K8S_CONFIGS_DIR / "pgd_signer_weekly.yaml")
    assert config.schedule.cron_expression == "0 3 * * 1"
    cron = cron_job(config, IMAGE)
    kubernetes_validate.validate(cron, KUBERNETES_VERSION, strict=True)
    assert cron["kind"] == "CronJob" and cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["schedule"] == "0 3 * * 1"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "zenml-orchestrator"
    assert pod["containers"][0]["image"] == IMAGE
    assert pod["restartPolicy"] == "Never"


def test_scheduled_config_runs_the_same_gated_pipeline():
    """Same parameters and steps as the unscheduled config: the gate and the registry step
    are in every scheduled run (their behaviour: tests/test_gate.py, test_model_registry.py)."""
    weekly = yaml.safe_load((K8S_CONFIGS_DIR / "pgd_signer_weekly.yaml").read_text())
    plain = yaml.safe_load((K8S_CONFIGS_DIR / "pgd_signer.yaml").read_text())
    assert weekly["parameters"] == plain["parameters"]
    assert weekly["steps"] == plain["steps"]
    import inspect

    from neuralmark.pipelines.training import training_pipeline

    source = inspect.getsource(training_pipeline.entrypoint)
    assert "decision = gate(report" in source
    assert "register_and_promote(trained, report, decision" in source


def test_unscheduled_config_has_no_cronjob():
    config = load_cluster_config(K8S_CONFIGS_DIR / "pgd_signer.yaml")
    with pytest.raises(InputError, match=r"has no schedule"):
        cron_job(config, IMAGE)


def test_kubeflow_gpus_must_match_the_kubernetes_ones(tmp_path):
    """One config serves both stacks: a step gets the same GPUs on either."""
    config = load_cluster_config(K8S_CONFIGS_DIR / "pgd_signer.yaml")
    assert config.accelerator == GPU

    def forgot_kubeflow(raw):
        del raw["steps"]["evaluate_robustness"]["settings"]["resources"]

    with pytest.raises(InputError, match=r"steps\.evaluate_robustness\.settings\.resources\."
                                         r"gpu_count is 0 but the step asks for 1 nvidia"):
        load_cluster_config(_edited(tmp_path, forgot_kubeflow))

    def gate_on_kubeflow_gpu(raw):
        raw["steps"]["gate"] = {"settings": {"resources": {"gpu_count": 1}}}

    with pytest.raises(InputError, match=r"steps\.gate\.settings\.resources\.gpu_count is 1 "
                                         r"but the step asks for 0"):
        load_cluster_config(_edited(tmp_path, gate_on_kubeflow_gpu))


def test_kubeflow_accelerator_is_required_once_for_the_pipeline(tmp_path):
    def no_accelerator(raw):
        del raw["settings"]["orchestrator.nm_kubeflow"]

    with pytest.raises(InputError, match=r"settings\.orchestrator\.nm_kubeflow\.pod_settings\."
                                         r"node_selectors\.accelerator is missing"):
        load_cluster_config(_edited(tmp_path, no_accelerator))

    def per_step(raw):
        raw["steps"]["train_model"]["settings"]["orchestrator.nm_kubeflow"] = {
            "pod_settings": {"node_selectors": {"accelerator": "nvidia-h100"}}}

    with pytest.raises(InputError, match=r"steps\.train_model\.settings\.orchestrator\."
                                         r"nm_kubeflow: .*one accelerator type for the whole"):
        load_cluster_config(_edited(tmp_path, per_step))

    def typo(raw):
        raw["settings"]["orchestrator.nm_kubeflow"]["pod_setings"] = {}

    with pytest.raises(InputError, match=r"orchestrator\.nm_kubeflow\.pod_setings: not a field"):
        load_cluster_config(_edited(tmp_path, typo))


def test_kubeflow_scheduling_must_match_the_kubernetes_one(tmp_path):
    """A GPU step's tolerations and node selectors reach KFP (kfp-kubernetes) from its
    orchestrator.nm_kubeflow pod settings: they must be the Kubernetes stack's."""
    def no_kubeflow_toleration(raw):
        del raw["steps"]["train_model"]["settings"]["orchestrator.nm_kubeflow"]

    with pytest.raises(InputError, match=r"steps\.train_model\.settings: orchestrator\."
                                         r"nm_kubeflow pod_settings\.tolerations \[\] differ "
                                         r"from orchestrator\.kubernetes's"):
        load_cluster_config(_edited(tmp_path, no_kubeflow_toleration))

    def other_node_label(raw):
        raw["steps"]["sign_heldout"]["settings"]["orchestrator.nm_kubeflow"]["pod_settings"][
            "node_selectors"] = {"gpu-pool": "a100"}

    with pytest.raises(InputError, match=r"steps\.sign_heldout\.settings: .*node_selectors "
                                         r"\{'gpu-pool': 'a100'\} differ"):
        load_cluster_config(_edited(tmp_path, other_node_label))


def test_each_pipeline_config_runs_its_pipeline():
    assert pipeline_of("configs/k8s/output_mark_pipeline.yaml") == "output_mark"
    assert pipeline_of("configs/k8s/pgd_signer.yaml") == "training"
    assert pipeline_of("configs/k8s/other_pipeline.yaml") == "training"
    assert {pipeline_of(p) for p in CONFIGS} == set(PIPELINES)


def _ask_gpus(raw: dict, step: str, n: int) -> None:
    """Make ``step`` ask for ``n`` GPUs on both stacks (its own copy of the shared block)."""
    block = raw["steps"][step] = yaml.safe_load(yaml.safe_dump(raw["steps"][step]))
    res = block["settings"]["orchestrator.kubernetes"]["pod_settings"]["resources"]
    res["requests"][GPU] = res["limits"][GPU] = str(n)
    block["settings"]["resources"]["gpu_count"] = n


def test_pipeline_steps_ask_only_what_they_can_use(tmp_path):
    """Steps are named by invocation id (one per matrix cell, attack, ...); patterns in
    PIPELINES say what each can use."""
    def make_pairs_gpu(raw):
        raw["steps"]["make_pairs"] = raw["steps"]["attacker_data"]

    with pytest.raises(InputError, match=r"steps\.make_pairs asks for 1 nvidia\.com/gpu, but "
                                         r"make_pairs is a CPU-only step"):
        load_cluster_config(_edited(tmp_path, make_pairs_gpu, "output_mark_pipeline.yaml"))

    def two_for_a_cell(raw):
        _ask_gpus(raw, "surrogate_unet_l2", 2)

    with pytest.raises(InputError, match=r"steps\.surrogate_unet_l2 asks for 2 nvidia\.com/gpu, "
                                         r"but surrogate_unet_l2 can use at most 1"):
        load_cluster_config(_edited(tmp_path, two_for_a_cell, "output_mark_pipeline.yaml"))

    def four_for_the_host(raw):
        _ask_gpus(raw, "train_host", 4)

    config = load_cluster_config(_edited(tmp_path, four_for_the_host,
                                         "trigger_key_pipeline.yaml"))
    assert config.gpus["train_host"] == 4  # data-parallel (runtime.ddp.train_in_processes)
    with pytest.raises(InputError, match=r"steps\.train: not a step of the trigger_key "
                                         r"pipeline; steps: build_dataset"):
        load_cluster_config(_edited(tmp_path, lambda raw: raw["steps"].update(train={}),
                                    "trigger_key_pipeline.yaml"))

    def gpu_for_every_step(raw):
        raw["settings"]["orchestrator.kubernetes"]["pod_settings"]["resources"]["limits"][
            GPU] = "1"

    with pytest.raises(InputError, match=r"asks every step of the benchmark pipeline for 1 "
                                         r"nvidia\.com/gpu, CPU-only steps included"):
        load_cluster_config(_edited(tmp_path, gpu_for_every_step, "benchmark_pipeline.yaml"))
