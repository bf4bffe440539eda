"""ZenML materializers for neuralmark types — no pickles anywhere.

* ``torch.Tensor`` (and subclasses) → ``tensor.safetensors``.
* ``WatermarkMethod`` (any subclass) → ``bundle/`` as written by ``to_bundle``
  (``config.json``, ``weights.safetensors``, ``state.json`` …); visualization
  ``summary.md`` (method card).
* ``neuralmark.components.report.Report`` → ``report.json`` + ``rows.csv``;
  visualizations ``rows.csv`` (CSV table) and ``report.md``.

How they get used: each class lists its types in ``ASSOCIATED_TYPES``; ZenML's
materializer metaclass registers it in the global ``materializer_registry``
when this module is imported. ZenML picks an output's materializer when the
pipeline is *compiled* (from the step's return annotation), so any module that
defines steps returning these types must ``import neuralmark.integrations.materializers`` (the
step modules do; ``output_materializers=`` on ``@step`` is the explicit
alternative). The chosen materializer is stored by import path with the
artifact, so loading later (``artifact.load()``) needs no registration.

JSON-friendly dataclasses (``Verdict``, a gate ``Decision``) and pydantic
models (method configs) need nothing here: ZenML 0.98 ships a
``DataclassMaterializer`` (pydantic ``TypeAdapter`` → ``data.json``) that the
registry falls back to for any dataclass whose fields pydantic can serialise,
and a ``PydanticMaterializer`` for ``BaseModel``. Only a dataclass holding
non-JSON fields (e.g. a tensor) would fall through to ZenML's cloudpickle
default — give such a type a materializer here instead.

All file I/O goes through ``self.artifact_store`` so non-local artifact stores
(S3, GCS) work; bundles are staged through a local temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType

from neuralmark.components.methods.base import WatermarkMethod
from neuralmark.components.report import Report

TENSOR_FILE = "tensor.safetensors"
_TENSOR_KEY = "tensor"
BUNDLE_DIR = "bundle"
REPORT_JSON = "report.json"
REPORT_CSV = "rows.csv"
REPORT_MD = "report.md"
METHOD_MD = "summary.md"


class TensorMaterializer(BaseMaterializer):
    """``torch.Tensor`` ↔ one safetensors file (detached, CPU, contiguous)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (torch.Tensor,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> torch.Tensor:
        """Read the tensor back (on CPU, ``requires_grad=False``)."""
        with self.artifact_store.open(os.path.join(self.uri, TENSOR_FILE), "rb") as f:
            return safetensors_load(f.read())[_TENSOR_KEY]

    def save(self, data: torch.Tensor) -> None:
        """Write ``data`` as ``tensor.safetensors``."""
        _ensure_dir(self.artifact_store, self.uri)
        with self.artifact_store.open(os.path.join(self.uri, TENSOR_FILE), "wb") as f:
            f.write(_tensor_bytes(data))

    def extract_metadata(self, data: torch.Tensor) -> dict[str, MetadataType]:
        """Shape and dtype, plus range for small floating tensors."""
        meta: dict[str, MetadataType] = {"shape": list(data.shape), "dtype": str(data.dtype)}
        if data.is_floating_point() and 0 < data.numel() <= 50_000_000:
            d = data.detach()
            meta.update(min=float(d.min()), max=float(d.max()), mean=float(d.float().mean()))
            meta = {k: v for k, v in meta.items()
                    if not (isinstance(v, float) and not math.isfinite(v))}
        return meta

    def compute_content_hash(self, data: torch.Tensor) -> str | None:
        """MD5 of the safetensors bytes."""
        return hashlib.md5(_tensor_bytes(data), usedforsecurity=False).hexdigest()


class WatermarkMethodMaterializer(BaseMaterializer):
    """A trained method ↔ its bundle directory (``to_bundle`` / ``load_bundle``)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (WatermarkMethod,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: type[Any]) -> WatermarkMethod:
        """Copy the bundle to a local temp dir and load it with the registry."""
        from neuralmark.components.methods.registry import load_bundle

        with tempfile.TemporaryDirectory(prefix="nm-bundle-") as tmp:
            local = Path(tmp) / BUNDLE_DIR
            _download_tree(self.artifact_store, os.path.join(self.uri, BUNDLE_DIR), local)
            method = load_bundle(local)
        if not isinstance(method, data_type):
            raise TypeError(f"artifact holds a {type(method).__name__}, "
                            f"not a {data_type.__name__}")
        return method

    def save(self, data: WatermarkMethod) -> None:
        """Write ``data.to_bundle`` locally, then upload it under ``<uri>/bundle``."""
        with tempfile.TemporaryDirectory(prefix="nm-bundle-") as tmp:
            local = data.to_bundle(Path(tmp) / BUNDLE_DIR)
            _upload_tree(self.artifact_store, local, os.path.join(self.uri, BUNDLE_DIR))

    def save_visualizations(self, data: WatermarkMethod) -> dict[str, VisualizationType]:
        """A Markdown card: method key, kind, parameter count, config."""
        config = data.config.model_dump(mode="json")
        text = (f"# {data.key}\n\nkind: {data.kind} · parameters: {_n_params(data):,}\n\n"
                f"```json\n{json.dumps(config, indent=2, sort_keys=True)}\n```\n")
        path = os.path.join(self.uri, METHOD_MD)
        with self.artifact_store.open(path, "w") as f:
            f.write(text)
        return {path.replace("\\", "/"): VisualizationType.MARKDOWN}

    def extract_metadata(self, data: WatermarkMethod) -> dict[str, MetadataType]:
        """Method key, kind and number of trainable parameters."""
        return {"method": data.key, "kind": data.kind, "parameters": _n_params(data)}


class ReportMaterializer(BaseMaterializer):
    """``Report`` ↔ ``report.json`` (whole object) + ``rows.csv`` (the tidy table)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Report,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def load(self, data_type: type[Any]) -> Report:
        """Parse ``report.json``."""
        with self.artifact_store.open(os.path.join(self.uri, REPORT_JSON), "r") as f:
            return data_type.from_json(f.read())

    def save(self, data: Report) -> None:
        """Write ``report.json`` and ``rows.csv``."""
        _ensure_dir(self.artifact_store, self.uri)
        with self.artifact_store.open(os.path.join(self.uri, REPORT_JSON), "w") as f:
            f.write(data.to_json())
        with self.artifact_store.open(os.path.join(self.uri, REPORT_CSV), "w") as f:
            f.write(data.rows_to_csv())

    def save_visualizations(self, data: Report) -> dict[str, VisualizationType]:
        """The rows as CSV (table view) and summary + rows as Markdown."""
        md = os.path.join(self.uri, REPORT_MD)
        with self.artifact_store.open(md, "w") as f:
            f.write(data.to_markdown())
        out = {md.replace("\\", "/"): VisualizationType.MARKDOWN}
        if data.rows:
            out[os.path.join(self.uri, REPORT_CSV).replace("\\", "/")] = VisualizationType.CSV
        return out

    def extract_metadata(self, data: Report) -> dict[str, MetadataType]:
        """Finite summary values (shown beside the artifact) and the row count."""
        meta: dict[str, MetadataType] = {
            k: float(v) for k, v in data.summary.items() if math.isfinite(float(v))
        }
        meta["n_rows"] = len(data.rows)
        return meta

    def compute_content_hash(self, data: Report) -> str | None:
        """MD5 of the canonical JSON."""
        text = json.dumps(data.to_dict(), sort_keys=True)
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return safetensors_save({_TENSOR_KEY: t.detach().cpu().contiguous()})


def _n_params(method: WatermarkMethod) -> int:
    return sum(p.numel() for p in method.parameters())


def _ensure_dir(store: Any, uri: str) -> None:
    """ZenML creates ``uri`` before a step's ``save``; direct callers may not have."""
    if not store.exists(uri):
        store.makedirs(uri)


def _upload_tree(store: Any, local: Path, remote: str) -> None:
    """Copy local directory ``local`` to ``remote`` in the artifact store."""
    store.makedirs(remote)
    for entry in sorted(local.iterdir()):
        target = os.path.join(remote, entry.name)
        if entry.is_dir():
            _upload_tree(store, entry, target)
        else:
            with open(entry, "rb") as src, store.open(target, "wb") as dst:
                dst.write(src.read())


def _download_tree(store: Any, remote: str, local: Path) -> None:
    """Copy artifact-store directory ``remote`` to local directory ``local``."""
    if not store.isdir(remote):
        raise FileNotFoundError(f"no bundle directory at {remote}")
    local.mkdir(parents=True, exist_ok=True)
    for name in store.listdir(remote):
        name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        source = os.path.join(remote, name)
        if store.isdir(source):
            _download_tree(store, source, local / name)
        else:
            with store.open(source, "rb") as src, open(local / name, "wb") as dst:
                dst.write(src.read())
