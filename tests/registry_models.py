"""A real MLflow project with every content method registered, as the training pipeline does.

``register_all(root)`` makes ``root/mlflow.db`` (+ ``root/mlruns``), then for each method
builds or takes a bundle, logs and registers it with ``register_candidate`` inside a run
(as ``steps.promotion.register_and_promote`` does) and moves ``champion`` with ``promote``:

* ``pgd_signer``: v1 the shipped bundle, v2 a smoke-sized signer (champion; its PGD
  embed takes seconds, the shipped one's minutes on a CPU);
* ``anti_forward``: the shipped ``rs_aug`` bundle, as ``neuralmark-anti_forward-rs_aug``;
* ``spread_spectrum`` and ``output_mark``: built from their ``smoke_config``;
* ``neuralmark-no_bundle``: an MLflow model of the verifier code without a bundle, and a
  run whose artifacts hold no bundle (what a wrong URI can point at).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from neuralmark.components.methods.registry import build, load_bundle, method_class, shipped_bundle
from neuralmark.integrations.model_registry import PYFUNC_MODEL_FILE, promote, register_candidate
from neuralmark.runtime.settings import model_name
from neuralmark.runtime.stack import ensure_experiment, tracking_uri
from tests.isolation import mlflow_store

NO_BUNDLE = "neuralmark-no_bundle"


@dataclass
class Registered:
    """What ``register_all`` made.

    Attributes:
        root: the project folder.
        uri: its MLflow store (``sqlite:////<root>/mlflow.db``).
        names: method → registered model name.
        bundles: ``models:/<name>/<version>`` → the bundle folder registered there.
        champions: method → the version ``champion`` points at.
        run_without_bundle: a ``runs:/`` URI of a folder with no bundle in it.
    """

    root: Path
    uri: str
    names: dict[str, str] = field(default_factory=dict)
    bundles: dict[str, Path] = field(default_factory=dict)
    champions: dict[str, str] = field(default_factory=dict)
    run_without_bundle: str = ""

    def champion_uri(self, method: str) -> str:
        """``models:/<name>@champion`` of ``method``."""
        return f"models:/{self.names[method]}@champion"

    def version_uri(self, method: str) -> str:
        """``models:/<name>/<version>`` of ``method``'s champion version."""
        return f"models:/{self.names[method]}/{self.champions[method]}"


def _register(reg: Registered, experiment: str, method: str, bundle: Path) -> str:
    config = load_bundle(bundle, device="cpu").config
    name = model_name(method, getattr(config, "variant", None))
    with mlflow.start_run(experiment_id=experiment, run_name=f"register {method}"):
        version = register_candidate(bundle, name, {"test_metric": 1.0},
                                     {"promote": True, "reasons": ["registered by a test"]})
    promote(name, version, tracking_uri=reg.uri)
    reg.names[method] = name
    reg.bundles[f"models:/{name}/{version}"] = bundle
    reg.champions[method] = version
    return version


def register_all(root: Path) -> Registered:
    """Register every content method (and ``output_mark``) in a new store under ``root``."""
    reg = Registered(root=root, uri=tracking_uri(root))
    with mlflow_store(reg.uri):
        experiment = ensure_experiment("registry-test", root)
        for method in ("pgd_signer", "anti_forward"):
            _register(reg, experiment, method, shipped_bundle(method))
        for method in ("pgd_signer", "spread_spectrum", "output_mark"):
            smoke = build(method, method_class(method).smoke_config)
            _register(reg, experiment, method, smoke.to_bundle(root / "bundles" / method))
        with mlflow.start_run(experiment_id=experiment, run_name="no bundle") as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_MODEL_FILE),
                                           pip_requirements=["mlflow"])
            mlflow.log_text("not a bundle", "notes/readme.txt")
        mlflow.register_model(info.model_uri, NO_BUNDLE)
        reg.run_without_bundle = f"runs:/{run.info.run_id}/notes"
    return reg
