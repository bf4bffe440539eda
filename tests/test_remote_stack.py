"""Remote stacks from files: validated by ZenML's flavor config classes, registered idempotently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.remote_stack import ensure_remote_stack, load_stack_file
from neuralmark.runtime.settings import CONFIGS_DIR
from tests.isolation import isolated_zenml_project

STACKS = CONFIGS_DIR / "stacks"


def _edited(tmp_path: Path, name: str, edit) -> Path:
    raw = yaml.safe_load((STACKS / name).read_text())
    edit(raw)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.parametrize("name", ["k8s.yaml", "kubeflow.yaml"])
def test_stack_files_validate_with_the_flavor_config_classes(name):
    spec = load_stack_file(STACKS / name)
    assert spec.components["orchestrator"].flavor == {"k8s.yaml": "kubernetes",
                                                      "kubeflow.yaml": "nm_kubeflow"}[name]
    assert spec.components["artifact_store"].flavor == "s3"


def test_stock_kubeflow_flavor_is_refused_with_the_reason(tmp_path):
    path = _edited(tmp_path, "kubeflow.yaml",
                   lambda raw: raw["components"]["orchestrator"].update(flavor="kubeflow"))
    with pytest.raises(InputError, match=r"components\.orchestrator\.flavor: 'kubeflow': .*"
                                         r"request no GPU.*use flavor nm_kubeflow"):
        load_stack_file(path)


def test_k8s_orchestrator_uses_the_least_privilege_accounts():
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorConfig

    spec = load_stack_file(STACKS / "k8s.yaml")
    config = KubernetesOrchestratorConfig(**spec.components["orchestrator"].config)
    assert config.kubernetes_namespace == "neuralmark-pipelines"
    assert config.service_account_name == "zenml-orchestrator"
    assert config.step_pod_service_account_name == "zenml-step"
    assert not config.is_local


def test_missing_config_field_is_named(tmp_path):
    path = _edited(tmp_path, "k8s.yaml",
                   lambda raw: raw["components"]["artifact_store"]["config"].pop("path"))
    with pytest.raises(InputError, match=r"components\.artifact_store \(s3\): "
                                         r"components\.artifact_store\.config\.path: "
                                         r"Field required"):
        load_stack_file(path)


def test_missing_component_is_named(tmp_path):
    path = _edited(tmp_path, "k8s.yaml",
                   lambda raw: raw["components"].pop("container_registry"))
    with pytest.raises(InputError, match=r"components\.container_registry: missing"):
        load_stack_file(path)


def test_missing_top_level_field_and_typos_are_named(tmp_path):
    path = _edited(tmp_path, "k8s.yaml", lambda raw: raw.pop("name"))
    with pytest.raises(InputError, match=r"stack file .*k8s\.yaml: name: Field required"):
        load_stack_file(path)
    path = _edited(tmp_path, "k8s.yaml",
                   lambda raw: raw["components"]["orchestrator"].update(flavour="kubernetes"))
    with pytest.raises(InputError, match=r"components\.orchestrator\.flavour: Extra inputs"):
        load_stack_file(path)


def test_flavor_validators_run(tmp_path):
    """The MLflow flavor's own rule: a remote tracking URI needs exactly one credential."""
    def drop_password(raw):
        raw["components"]["experiment_tracker"]["config"].pop("tracking_password")

    with pytest.raises(InputError, match=r"experiment_tracker \(mlflow\).*tracking_password"):
        load_stack_file(_edited(tmp_path, "k8s.yaml", drop_password))


def test_tracker_must_keep_the_name_the_steps_use(tmp_path):
    path = _edited(tmp_path, "k8s.yaml", lambda raw: raw["components"]["experiment_tracker"]
                   .update(name="other_tracker"))
    with pytest.raises(InputError, match=r"experiment_tracker\.name: must be "
                                         r"'nm_mlflow_tracker'"):
        load_stack_file(path)


def test_registers_idempotently_and_leaves_the_active_stack(tmp_path):
    from zenml.client import Client
    from zenml.enums import StackComponentType

    with isolated_zenml_project(tmp_path):
        with pytest.raises(InputError, match=r"ZenML secret 'mlflow_tracking' does not exist"):
            ensure_remote_stack(STACKS / "k8s.yaml", tmp_path)
        client = Client(root=tmp_path)
        with pytest.raises(KeyError):  # nothing registered before the check failed
            client.get_stack_component(StackComponentType.ORCHESTRATOR, "nm_k8s_orchestrator",
                                       allow_name_prefix_match=False)
        client.create_secret("mlflow_tracking", {"username": "u", "password": "p"})
        client.create_secret("s3_artifact_store", {"aws_access_key_id": "a",
                                                   "aws_secret_access_key": "s"})
        before = client.active_stack_model.name
        first = ensure_remote_stack(STACKS / "k8s.yaml", tmp_path)
        assert set(first["registered"]) == {"nm_k8s_orchestrator", "nm_s3_store",
                                            "nm_registry", "nm_image_builder",
                                            "nm_mlflow_tracker", "nm_mlflow_registry",
                                            "neuralmark_k8s"}
        assert first["active_stack"] == before
        second = ensure_remote_stack(STACKS / "k8s.yaml", tmp_path)
        assert second["registered"] == [] and second["updated"] == []
        stack = client.get_stack("neuralmark_k8s", allow_name_prefix_match=False)
        orch = stack.components[StackComponentType.ORCHESTRATOR][0]
        assert orch.flavor_name == "kubernetes"
        assert orch.configuration["kubernetes_namespace"] == "neuralmark-pipelines"


def test_kubeflow_stack_outside_its_environment_is_refused_clearly(tmp_path):
    """ZenML imports a custom flavor's orchestrator to register it, and that needs kfp, which
    only the Kubeflow environment has (tests/test_kfp_spec.py registers it there)."""
    import importlib.util

    from zenml.client import Client
    from zenml.enums import StackComponentType

    if importlib.util.find_spec("kfp") is not None:
        pytest.skip("kfp is installed here: the stack registers (tests/test_kfp_spec.py)")
    with isolated_zenml_project(tmp_path):
        client = Client(root=tmp_path)
        client.create_secret("mlflow_tracking", {"username": "u", "password": "p"})
        client.create_secret("s3_artifact_store", {"aws_access_key_id": "a",
                                                   "aws_secret_access_key": "s"})
        with pytest.raises(InputError, match=r"flavor 'nm_kubeflow' cannot be registered here "
                                             r".*No module named 'kfp'.*make kfp-venv"):
            ensure_remote_stack(STACKS / "kubeflow.yaml", tmp_path)
        with pytest.raises(KeyError):  # nothing registered
            client.get_stack_component(StackComponentType.ORCHESTRATOR,
                                       "nm_kubeflow_orchestrator", allow_name_prefix_match=False)
