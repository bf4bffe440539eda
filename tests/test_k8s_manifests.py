"""``k8s/``: every overlay renders with kustomize, validates strictly, declares its Secrets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from neuralmark.components.methods.base import InputError
from neuralmark.runtime.manifests import (
    K8S_DIR,
    KUBERNETES_VERSION,
    available_overlays,
    check_overlay,
    declared_secrets,
    render,
    secret_references,
)

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl (with its built-in kustomize) is not installed")

OVERLAYS = available_overlays()


def _containers(objects):
    for obj in objects:
        spec = obj.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec")
        if pod:
            for c in pod["containers"]:
                yield obj, pod, c


def test_dev_and_prod_exist():
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay):
    objects = check_overlay(overlay)  # kustomize + kubernetes-validate --strict + Secrets
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment",
            "Service", "ConfigMap"} <= kinds
    assert "Secret" not in kinds, "Secrets are referenced, never rendered with values"
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert {"mlflow", "zenml-server"} <= names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_non_root_limited_probed_and_pinned(overlay):
    for obj, pod, c in _containers(render(overlay)):
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
        image = c["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), where
        if obj["kind"] != "Job":
            assert "readinessProbe" in c and "livenessProbe" in c, where


def test_orchestrator_role_is_least_privilege():
    objects = render("dev")
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    assert [r["kind"] for r in roles] == ["Role"], "no cluster-wide role"
    rules = roles[0]["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    granted = {res for r in rules for res in r["resources"]}
    assert granted == {"pods", "pods/log", "services", "jobs", "cronjobs", "secrets"}
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    assert accounts["zenml-step"]["automountServiceAccountToken"] is False


def test_dev_runs_its_stores_in_cluster_and_prod_points_outside():
    dev = {(o["kind"], o["metadata"]["name"]) for o in render("dev")}
    prod = {(o["kind"], o["metadata"]["name"]) for o in render("prod")}
    for name in ("postgres", "mysql", "minio"):
        assert ("StatefulSet", name) in dev and ("StatefulSet", name) not in prod
    config = {o["metadata"]["name"]: o for o in render("prod") if o["kind"] == "ConfigMap"}
    assert config["mlflow-config"]["data"]["MLFLOW_S3_ENDPOINT_URL"] == ""


def test_example_secrets_hold_placeholders_only():
    for overlay in OVERLAYS:
        path = K8S_DIR / "overlays" / overlay / "secrets.example.yaml"
        for doc in yaml.safe_load_all(path.read_text()):
            for key, value in (doc.get("stringData") or {}).items():
                secretish = any(w in key.lower() for w in ("password", "secret", "uri", "url",
                                                           "auth", "dockerconfig"))
                if secretish:
                    assert "CHANGE_ME" in value, f"{path}: {doc['metadata']['name']}.{key}"


def _broken_overlay(tmp_path: Path, patch: str) -> Path:
    """A copy of ``k8s/`` with an overlay ``broken`` = dev + ``patch``."""
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, k8s)
    broken = k8s / "overlays" / "broken"
    shutil.copytree(k8s / "overlays" / "dev", broken)
    (broken / "extra-patch.yaml").write_text(patch)
    kustomization = yaml.safe_load((broken / "kustomization.yaml").read_text())
    kustomization["patches"].append({"path": "extra-patch.yaml"})
    (broken / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return k8s


def _mlflow_container_patch(fields: str) -> str:
    """A strategic-merge patch of the mlflow Deployment's container with ``fields``."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: mlflow, namespace: neuralmark-services}}
spec:
  template:
    spec:
      containers:
        - name: mlflow
{fields}"""


@pytest.mark.parametrize(("fields", "message"), [
    pytest.param("""          env:
            - name: EXTRA_TOKEN
              valueFrom: {secretKeyRef: {name: not-declared-anywhere, key: token}}
""", r"container mlflow env EXTRA_TOKEN references Secret "
     r"neuralmark-services/not-declared-anywhere", id="missing-secret"),
    pytest.param("""          env:
            - name: AWS_SESSION_TOKEN
              valueFrom: {secretKeyRef: {name: mlflow-artifact-store, key: AWS_SESSION_TOKEN}}
""", r"reads key 'AWS_SESSION_TOKEN' of Secret neuralmark-services/mlflow-artifact-store",
        id="missing-secret-key"),
    pytest.param("""          resourcez: {limits: {cpu: "1"}}
""", rf"(?s)invalid for Kubernetes {KUBERNETES_VERSION}.*"
     r"Deployment/neuralmark-services/mlflow: "
     r"spec.template.spec.containers.0: .*'resourcez'", id="invalid-field"),
])
def test_broken_overlay_is_refused_naming_the_problem(tmp_path, fields, message):
    k8s = _broken_overlay(tmp_path, _mlflow_container_patch(fields))
    with pytest.raises(InputError, match=message):
        check_overlay("broken", k8s_dir=k8s)


def test_unknown_overlay_lists_the_available_ones():
    with pytest.raises(InputError, match=r"unknown overlay 'staging'.*dev"):
        check_overlay("staging")


def test_every_reference_is_found():
    refs = {(r.name, r.key) for r in secret_references(render("dev"))}
    assert ("mlflow-backend-store", "uri") in refs and ("zenml-store", "url") in refs
    declared = declared_secrets(K8S_DIR / "overlays" / "dev" / "secrets.example.yaml")
    assert {name for _, name in declared} >= {name for name, _ in refs}
