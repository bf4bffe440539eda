"""``benchmark_pipeline`` end to end on a local ZenML stack: the same table as the library,
reports on disk and in the MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from neuralmark.components.errors import InputError
from tests.isolation import pipeline_project

pytest.importorskip("imwatermark", reason="the peers extra: pip install -e '.[peers]'")
pytestmark = pytest.mark.pipeline
TINY = Path(__file__).resolve().parents[1] / "configs" / "benchmark_tiny.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory, photo):
    from neuralmark.pipelines.benchmark import run_benchmark_pipeline

    root = tmp_path_factory.mktemp("nm-bench-project")
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(photo[:300, :300]).save(photos / "a.png")
    Image.fromarray(photo[212:, 212:]).save(photos / "b.png")
    (photos / "0.jpg").write_bytes(b"broken")  # read first, before the limit
    with pipeline_project(root):
        yield root, run_benchmark_pipeline(TINY, {"images": str(photos)}, project_root=root)


def test_pipeline_writes_the_table_and_logs_it(run):
    from mlflow.tracking import MlflowClient

    from neuralmark.runtime.stack import tracking_uri

    root, out = run
    methods = {r["method"] for r in out["rows"]}
    assert {"spread_spectrum", "dwtDct"} <= methods
    assert any(r["metric"] == "skipped_image" and "0.jpg" in r["note"] for r in out["rows"])
    for path in out["reports"].values():
        assert Path(path).is_file() and str(root / "reports") in path
    client = MlflowClient(tracking_uri(root))
    mlrun = client.get_run(out["mlflow_run_id"])
    assert mlrun.data.metrics["dwtDct.psnr"] == pytest.approx(out["summary"]["dwtDct.psnr"])
    listed = {a.path for a in client.list_artifacts(out["mlflow_run_id"], "benchmark")}
    assert "benchmark/benchmark.html" in listed
    assert {"benchmark/benchmark.json", "benchmark/benchmark.csv"} <= listed
    assert any(r["family"] == "model" and r["label"] == "prune_0.5" for r in out["rows"])
    # the pipeline's on_start hook tagged the step's run with the float path (env.*)
    assert mlrun.data.tags["env.torch"] == torch.__version__
    assert mlrun.data.tags["env.cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_typo_in_the_settings_fails_before_running(tmp_path):
    from neuralmark.pipelines.benchmark import run_benchmark_pipeline

    with pytest.raises(InputError, match="quik"):
        run_benchmark_pipeline(TINY, {"settings": {"quik": True}}, project_root=tmp_path)
