"""The cluster manifests of ``k8s/``: render an overlay, validate it, check its Secrets.

``python -m neuralmark.runtime.manifests [OVERLAY ...]`` renders each overlay with
``kubectl kustomize`` (kustomize is built into kubectl), validates every object with
``kubernetes-validate --strict`` against a current Kubernetes version (the schemas ship
in that package, no cluster needed) and checks that every Secret the overlay references
(``secretKeyRef``, ``secretRef``, secret volumes, ``imagePullSecrets``) is declared, name
*and* key, in the overlay's ``secrets.example.yaml``. Secrets are never committed, so
neither kustomize nor the schema can see a missing one; this check is our own and runs
before anything is applied.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from neuralmark.components.methods.base import InputError

K8S_DIR = Path(__file__).resolve().parents[1] / "k8s"
#: the Kubernetes version the manifests are validated against (kubernetes-validate's latest)
KUBERNETES_VERSION = "1.37.0"
SECRETS_FILE = "secrets.example.yaml"


@dataclass(frozen=True)
class SecretRef:
    """One reference to a Secret from a rendered object.

    Attributes:
        namespace: namespace of the referencing object (Secrets are namespaced).
        name: Secret name.
        key: the key read (``None``: the whole Secret, e.g. ``envFrom``).
        where: the referencing object and field, for the error message.
    """

    namespace: str
    name: str
    key: str | None
    where: str


def available_overlays(k8s_dir: Path = K8S_DIR) -> list[str]:
    """Names of the folders under ``k8s/overlays`` that hold a kustomization."""
    return sorted(p.parent.name for p in (k8s_dir / "overlays").glob("*/kustomization.yaml"))


def overlay_dir(overlay: str | Path, k8s_dir: Path = K8S_DIR) -> Path:
    """The folder of ``overlay`` (a name under ``k8s/overlays`` or a path).

    Raises:
        InputError: no kustomization there (the message lists the overlays).
    """
    path = Path(overlay)
    if not (path / "kustomization.yaml").is_file():
        path = k8s_dir / "overlays" / str(overlay)
    if not (path / "kustomization.yaml").is_file():
        raise InputError(f"unknown overlay {overlay!r}: no kustomization.yaml there; "
                         f"available: {', '.join(available_overlays(k8s_dir)) or 'none'}")
    return path


def render(overlay: str | Path, k8s_dir: Path = K8S_DIR) -> list[dict[str, Any]]:
    """``kubectl kustomize <overlay>``, parsed: one dict per object.

    Raises:
        InputError: kubectl is missing, or kustomize refused the overlay (its message).
    """
    path = overlay_dir(overlay, k8s_dir)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise InputError("kubectl is not on PATH; it renders the overlays (kustomize is "
                         "built in): install kubectl >= 1.27")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise InputError(f"kustomize could not render {path}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _kind_name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def validate(objects: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> None:
    """Validate every object against the Kubernetes ``version`` schema, strictly.

    Raises:
        InputError: the first invalid objects, each with its field path and reason.
    """
    import kubernetes_validate

    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            field = ".".join(str(p) for p in err.path) or "(object)"
            problems.append(f"{_kind_name(obj)}: {field}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{_kind_name(obj)}: no schema for it in Kubernetes {version}: "
                            f"{err}")
    if problems:
        raise InputError(f"{len(problems)} object(s) invalid for Kubernetes {version} "
                         "(kubernetes-validate --strict):\n" + "\n".join(problems))


def _pod_spec(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
                or {}).get("spec")
    return (spec.get("template") or {}).get("spec")


def secret_references(objects: list[dict[str, Any]]) -> Iterator[SecretRef]:
    """Every Secret reference in the pod templates of ``objects``."""
    for obj in objects:
        pod = _pod_spec(obj)
        if not pod:
            continue
        ns = (obj.get("metadata") or {}).get("namespace", "default")
        here = _kind_name(obj)
        for ref in pod.get("imagePullSecrets") or []:
            yield SecretRef(ns, ref["name"], None, f"{here} imagePullSecrets")
        for vol in pod.get("volumes") or []:
            if "secret" in vol and not vol["secret"].get("optional"):
                items = vol["secret"].get("items") or [{"key": None}]
                for item in items:
                    yield SecretRef(ns, vol["secret"]["secretName"], item["key"],
                                    f"{here} volume {vol['name']}")
        for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
            where = f"{here} container {container['name']}"
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    yield SecretRef(ns, ref["name"], ref["key"], f"{where} env {env['name']}")
            for src in container.get("envFrom") or []:
                ref = src.get("secretRef")
                if ref and not ref.get("optional"):
                    yield SecretRef(ns, ref["name"], None, f"{where} envFrom")


def declared_secrets(path: Path) -> dict[tuple[str, str], set[str]]:
    """``(namespace, name) -> keys`` of the Secrets in a ``secrets.example.yaml``.

    Raises:
        InputError: the file is missing, or holds something other than Secrets.
    """
    if not path.is_file():
        raise InputError(f"{path} is missing: every overlay lists the Secrets it references "
                         "(names and keys, placeholder values) there")
    out: dict[tuple[str, str], set[str]] = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc.get("kind") != "Secret":
            raise InputError(f"{path}: {doc.get('kind')!r} found; the file declares Secrets only")
        meta = doc.get("metadata") or {}
        keys = set(doc.get("stringData") or {}) | set(doc.get("data") or {})
        out[(meta.get("namespace", "default"), meta["name"])] = keys
    return out


def check_secrets(objects: list[dict[str, Any]], declared: dict[tuple[str, str], set[str]],
                  source: str) -> None:
    """Fail on a Secret (or key) referenced by ``objects`` but neither declared nor rendered.

    Args:
        objects: the rendered overlay.
        declared: ``declared_secrets`` of the overlay's example file.
        source: the example file's path, for the message.

    Raises:
        InputError: every missing Secret / key, with what references it.
    """
    known = {k: set(v) for k, v in declared.items()}
    for obj in objects:  # a Secret the overlay itself renders (none today) counts too
        if obj.get("kind") == "Secret":
            meta = obj.get("metadata") or {}
            known.setdefault((meta.get("namespace", "default"), meta["name"]), set()).update(
                {*(obj.get("data") or {}), *(obj.get("stringData") or {})})
    missing = []
    for ref in secret_references(objects):
        keys = known.get((ref.namespace, ref.name))
        if keys is None:
            missing.append(f"{ref.where} references Secret {ref.namespace}/{ref.name}, "
                           f"which {source} does not declare")
        elif ref.key is not None and ref.key not in keys:
            missing.append(f"{ref.where} reads key {ref.key!r} of Secret "
                           f"{ref.namespace}/{ref.name}; {source} declares only "
                           f"{sorted(keys)}")
    if missing:
        raise InputError("missing Secret(s):\n" + "\n".join(sorted(set(missing))))


def check_overlay(overlay: str | Path, k8s_dir: Path = K8S_DIR,
                  version: str = KUBERNETES_VERSION) -> list[dict[str, Any]]:
    """Render, validate and secret-check one overlay; returns the rendered objects."""
    path = overlay_dir(overlay, k8s_dir)
    objects = render(path, k8s_dir)
    validate(objects, version)
    secrets_file = path / SECRETS_FILE
    check_secrets(objects, declared_secrets(secrets_file), str(secrets_file))
    return objects


def main(argv: list[str] | None = None) -> int:
    """``python -m neuralmark.runtime.manifests [OVERLAY ...]``: check overlays (default all)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overlays", nargs="*", help="overlay names or paths (default: all)")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    failed = 0
    for overlay in args.overlays or available_overlays():
        try:
            objects = check_overlay(overlay, version=args.kubernetes_version)
        except InputError as err:
            print(f"{overlay}: FAILED\n{err}", file=sys.stderr)
            failed += 1
        else:
            print(f"{overlay}: {len(objects)} objects valid for Kubernetes "
                  f"{args.kubernetes_version}, every referenced Secret declared")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
