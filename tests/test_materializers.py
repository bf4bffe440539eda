"""Materializers round-trip tensors, method bundles and reports — no pickles."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pytest
import torch
from torch import nn
from zenml import Model, pipeline, step

import neuralmark.integrations.materializers  # noqa: F401  (registers the materializers before compile)
from neuralmark.components.methods.base import MethodConfig, Verdict, WatermarkMethod, check_images
from neuralmark.components.methods.registry import register
from neuralmark.components.report import Report


class _LinearConfig(MethodConfig):
    """Config of the test-only method."""

    bias: float = 0.0


@register("_test_linear")
class LinearTestMethod(WatermarkMethod):
    """Test-only method: one ``nn.Linear`` over the mean colour of each image."""

    Config = _LinearConfig
    min_size = 1
    detection_alpha_field = None  # verify decides by its score, with no p-value

    def __init__(self, config: _LinearConfig) -> None:
        super().__init__(config)
        gen = torch.Generator().manual_seed(config.seed)
        self.head = nn.Linear(3, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(1, 3, generator=gen))
            self.head.bias.fill_(config.bias)

    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(2, 3))).pow(2).mean()

    def fit(self, data, callbacks=()) -> dict[str, float]:
        opt = torch.optim.SGD(self.head.parameters(), lr=0.1)
        loss = self.training_loss(data["train"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": float(loss)}

    def verify(self, images: torch.Tensor, key) -> list[Verdict]:
        check_images(images, self.min_size)
        with torch.no_grad():
            score = torch.sigmoid(self.head(images.mean(dim=(2, 3)))).squeeze(1)
        return [Verdict(detected=bool(s > 0.5), score=float(s), p_value=None,
                        reason="test method") for s in score]


@pytest.fixture()
def local_store(tmp_path: Path):
    """A local artifact store rooted in ``tmp_path`` (no stack lookup)."""
    from zenml.artifact_stores.local_artifact_store import (
        LocalArtifactStore,
        LocalArtifactStoreConfig,
    )
    from zenml.enums import StackComponentType

    now = datetime.now()
    return LocalArtifactStore(
        name="nm-test-store", id=uuid.uuid4(), config=LocalArtifactStoreConfig(path=str(tmp_path)),
        flavor="local", type=StackComponentType.ARTIFACT_STORE, user=None, created=now,
        updated=now,
    )


def _no_pickles(root: Path) -> None:
    suffixes = {p.suffix for p in root.rglob("*") if p.is_file()}
    assert not suffixes & {".pkl", ".pickle", ".pt", ".pth"}, suffixes


def test_report_json_and_csv() -> None:
    r = Report(rows=[{"attack": "jpeg", "strength": 50, "value": 0.9},
                     {"attack": "none", "value": float("nan"), "note": "x"}],
               summary={"bit_accuracy": 0.9, "bad": float("nan")}, extra={"k": [1, 2]})
    back = Report.from_json(r.to_json())
    assert back.rows[0] == r.rows[0] and back.rows[1]["value"] is None
    assert back.summary["bit_accuracy"] == 0.9 and back.summary["bad"] != back.summary["bad"]
    assert r.rows_to_csv().splitlines()[0] == "attack,strength,value,note"
    assert "| bit_accuracy | 0.9 |" in r.to_markdown()


def test_tensor_round_trip(tmp_path: Path, local_store) -> None:
    from neuralmark.integrations.materializers import TensorMaterializer

    uri = str(tmp_path / "tensor")
    x = torch.rand(2, 3, 5, 7)
    m = TensorMaterializer(uri, artifact_store=local_store)
    m.save(x)
    meta = m.extract_metadata(x)
    assert meta["shape"] == [2, 3, 5, 7] and meta["dtype"] == "torch.float32"
    y = TensorMaterializer(uri, artifact_store=local_store).load(torch.Tensor)
    assert torch.equal(x, y)
    assert (tmp_path / "tensor" / "tensor.safetensors").is_file()
    _no_pickles(tmp_path)


def test_method_bundle_round_trip(tmp_path: Path, local_store, photo_batch) -> None:
    from neuralmark.components.methods.registry import build
    from neuralmark.integrations.materializers import WatermarkMethodMaterializer

    method = build("_test_linear", {"seed": 3, "bias": 0.25})
    uri = str(tmp_path / "method")
    m = WatermarkMethodMaterializer(uri, artifact_store=local_store)
    m.save(method)
    vis = m.save_visualizations(method)
    assert list(vis.values()) == ["markdown"]
    assert m.extract_metadata(method) == {"method": "_test_linear", "kind": "content",
                                          "parameters": 4}
    bundle = tmp_path / "method" / "bundle"
    assert {p.name for p in bundle.iterdir()} >= {"config.json", "weights.safetensors"}
    loaded = WatermarkMethodMaterializer(uri, artifact_store=local_store).load(WatermarkMethod)
    assert isinstance(loaded, LinearTestMethod) and loaded.config == method.config
    assert torch.equal(loaded.head.weight, method.head.weight)
    assert [v.score for v in loaded.verify(photo_batch, None)] == \
        [v.score for v in method.verify(photo_batch, None)]
    _no_pickles(tmp_path)


def test_report_materializer(tmp_path: Path, local_store) -> None:
    from neuralmark.integrations.materializers import ReportMaterializer

    r = Report(rows=[{"metric": "psnr", "value": 41.5}], summary={"psnr": 41.5})
    uri = str(tmp_path / "report")
    m = ReportMaterializer(uri, artifact_store=local_store)
    m.save(r)
    vis = m.save_visualizations(r)
    assert sorted(vis.values()) == ["csv", "markdown"]
    assert m.extract_metadata(r) == {"psnr": 41.5, "n_rows": 1}
    assert (tmp_path / "report" / "rows.csv").read_text() == "metric,value\npsnr,41.5\n"
    assert json.loads((tmp_path / "report" / "report.json").read_text())["summary"] == \
        {"psnr": 41.5}
    assert ReportMaterializer(uri, artifact_store=local_store).load(Report) == r


def test_registry_picks_our_materializers() -> None:
    from zenml.materializers.materializer_registry import materializer_registry

    from neuralmark.integrations.materializers import (
        ReportMaterializer,
        TensorMaterializer,
        WatermarkMethodMaterializer,
    )

    assert materializer_registry[torch.Tensor] is TensorMaterializer
    assert materializer_registry[nn.Parameter] is TensorMaterializer
    assert materializer_registry[LinearTestMethod] is WatermarkMethodMaterializer
    assert materializer_registry[Report] is ReportMaterializer
    # JSON dataclasses (Verdict, gate decisions) use ZenML's own JSON materializer.
    assert materializer_registry[Verdict].__name__ == "DataclassMaterializer"


@step(enable_cache=False)
def make_images_and_method(seed: int) -> tuple[Annotated[torch.Tensor, "images"],
                                               Annotated[WatermarkMethod, "method"]]:
    """Step 1 of the test pipeline: a seeded batch and a built method."""
    from neuralmark.components.methods.registry import build

    return (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed)),
            build("_test_linear", {"seed": seed}))


@step(enable_cache=False)
def summarise(images: torch.Tensor, method: WatermarkMethod) -> Annotated[Report, "report"]:
    """Step 2: verify the batch, mark the ZenML model version, return a report."""
    from neuralmark.integrations.model_registry import set_zenml_model_stage

    assert set_zenml_model_stage(promoted=True) == "production"
    verdicts = method.verify(images, None)
    return Report(rows=[{"i": i, "score": v.score} for i, v in enumerate(verdicts)],
                  summary={"mean": float(images.mean())})


@pipeline(enable_cache=False, model=Model(name="nm-test-model"))
def tiny_pipeline(seed: int = 0) -> None:
    """Two steps whose outputs go through our materializers."""
    images, method = make_images_and_method(seed)
    summarise(images, method)


@pytest.mark.pipeline
def test_pipeline_passes_tensor_method_and_report() -> None:
    """The one pipeline run of this file: 2 steps, outputs through our materializers.

    Also checks ``set_zenml_model_stage`` against a real ZenML model context.
    """
    run = tiny_pipeline.with_options(run_name=f"nm-test-{uuid.uuid4().hex[:8]}")(seed=5)
    assert run.status == "completed"
    first = run.steps["make_images_and_method"]
    images = first.outputs["images"][0]
    assert images.materializer.attribute == "TensorMaterializer"
    x = images.load()
    assert torch.equal(x, torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)))
    assert isinstance(first.outputs["method"][0].load(), LinearTestMethod)
    art = run.steps["summarise"].outputs["report"][0]
    report = art.load()
    assert isinstance(report, Report) and report.summary["mean"] == pytest.approx(float(x.mean()))
    assert len(report.rows) == 2
    assert art.run_metadata["n_rows"] == 2
    assert {v.type for v in art.visualizations} == {"csv", "markdown"}
    assert run.model_version.stage == "production"
