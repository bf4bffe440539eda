"""The output_mark pipeline end to end (issue #6): pairs → stages → cached matrix → gate.

One temporary project (own ``.zen/``, ``mlflow.db``, ``data/``, ``reports/``),
two runs of a micro configuration (32² working size, a handful of optimiser
steps, two matrix cells, one ablation): the first trains everything and
registers a version; the second retrains stage 1 and 2 (the pipeline is not
cached) but reuses every surrogate cell, the ablation and the independent model
(their steps are), because stage 1 reproduces the same B′ byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from neuralmark.runtime.stack import tracking_uri
from tests.isolation import pipeline_project
from tests.micro_policy import open_gate

pytestmark = pytest.mark.pipeline

MODEL = "neuralmark-output_mark"
CELLS = [["unet", "l2"], ["cnet", "l1+adversarial"]]
MICRO: dict[str, Any] = {
    "config": {"working_size": 32, "logo_block": 16, "model_width": 4, "model_depth": 2,
               "embed_width": 4, "embed_depth": 2, "extract_width": 4, "extract_blocks": 1,
               "disc_width": 4, "disc_layers": 2, "model_steps": 5, "steps": 10,
               "stage2_steps": 5, "batch_size": 4, "eval_batch": 32,
               "surrogate": {"width": 4, "depth": 2, "steps": 5, "batch_size": 4}},
    "data": {"root": "data/micro", "size": 64, "crops_per_photo": 1, "n_procedural": 3,
             "version_with_dvc": False},
    "policy": open_gate("output_mark"),
    "matrix": {"cells": CELLS, "ablations": ["no_clean_loss"], "min_success_rate": {"tiny": 0.0},
               "seeds": [0, 1], "clean_twins": True,
               "surrogate": {"steps_by_arch": {"cnet": 6}}},
}
CELL_STEPS = {"surrogate_unet_l2", "surrogate_cnet_l1_adversarial", "baseline_unet_l2",
              "baseline_cnet_l1_adversarial", "twin_unet_l2", "twin_cnet_l1_adversarial"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    with pipeline_project(tmp_path_factory.mktemp("nm-om-project")) as root:
        yield root


@pytest.fixture(scope="module")
def runs(project: Path) -> list[dict[str, Any]]:
    from neuralmark.pipelines.output_mark import run_output_mark

    return [run_output_mark("derain", "tiny", overrides=MICRO, project_root=project)
            for _ in range(2)]


def test_matrix_pipeline_runs_end_to_end_and_registers(project: Path, runs) -> None:
    from mlflow import MlflowClient

    first = runs[0]
    assert first["status"] == "completed" and first["cached_steps"] == []
    assert first["decision"]["promote"] is True and first["promoted"] is True
    assert first["registered_version"] == first["champion_version"]
    summary = first["metrics"]
    for key in ("psnr", "fpr", "detection_rate/none", "detection_rate_mean_attacked",
                "sr_mean/stage1", "sr_mean/stage2", "sr_mean/spread_spectrum",
                "detection_rate/surrogate_cnet_l1_adversarial",
                "ablation/ablation_no_clean_loss/nc_clean_B"):
        assert key in summary, key
    assert "deep, stage 1 only (†)" in first["tables"] and "surrogate_unet_l2" in first["tables"]
    # the seed spread (matrix.seeds): mean ± interval per cell, in the tables and in MLflow
    assert "## Seed spread" in first["tables"] and "over 2 seeds" in first["tables"]
    spread_key = "spread/stage2/matrix_mean/success_rate"
    assert summary[f"{spread_key}/ci_low"] <= summary[f"{spread_key}/mean"] <= \
        summary[f"{spread_key}/ci_high"]
    assert first["summary"][f"{spread_key}/mean"] == summary[f"{spread_key}/mean"]

    uri = tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(first["mlflow_run_id"])
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/tables.md", "report/surrogate_matrix.png", "report/rows.csv"} <= listed
    assert "detection_rate_mean_attacked" in run.data.metrics
    assert "spread/stage2/surrogate_unet_l2/success_rate/ci_high" in run.data.metrics
    # clean twins (matrix.clean_twins): a false-positive column beside fpr, not in fpr (the
    # switch twins_in_gate is off) and not in the success mean
    for key in ("fpr_clean_twins", "clean_independent_model/false_positive_rate",
                "clean_twin_surrogate_unet_l2/false_positive_rate",
                "clean_twin_surrogate_cnet_l1_adversarial/false_positive_rate"):
        assert key in run.data.metrics, key
    assert first["summary"]["fpr_clean_twins"] == summary["fpr_clean_twins"]
    assert not any(k.startswith("detection_rate/clean_twin") for k in summary)
    assert any(k.startswith("stage1/") for k in run.data.metrics)
    assert run.data.tags["output_mark.target_kind"] == "clean-photo"
    mv = client.get_model_version(MODEL, first["registered_version"])
    assert mv.tags["gate"] == "pass"
    reports = Path(first["reports_dir"])
    assert (reports / "output_mark_tables.md").is_file()
    assert (reports / "output_mark_rows.csv").read_text().count("surrogate_") >= 3 * len(CELLS)


def test_surrogate_cells_train_on_marked_pairs_and_are_cached_on_rerun(runs) -> None:
    from zenml.client import Client

    first, second = runs
    assert second["status"] == "completed"
    assert CELL_STEPS | {"ablation_no_clean_loss", "train_independent_model", "seed_spread"} \
        <= set(second["cached_steps"])
    assert not {"train_marking", "finetune_stage2", "evaluate_output_mark"} & \
        set(second["cached_steps"])
    assert second["registered_version"] != first["registered_version"]

    run = Client().get_pipeline_run(first["run"])
    cell = run.steps["surrogate_unet_l2"]
    assert str(cell.status) == "completed"
    assert cell.config.parameters["arch"] == "unet" and cell.config.parameters["loss"] == "l2"
    # the library code is part of the cache key: a change under components/ retrains cells
    from neuralmark.pipelines.output_mark import components_digest

    digest = components_digest()
    assert len(digest) == 64 and digest == components_digest()
    for name in ("surrogate_unet_l2", "ablation_no_clean_loss", "train_independent_model"):
        assert run.steps[name].config.parameters["code_digest"] == digest
    inputs = cell.inputs["attack_inputs"][0].load()
    targets = cell.inputs["attack_targets"][0].load()
    stage1 = run.steps["train_marking"].outputs["stage1_method"][0].load()
    assert torch.allclose(targets, stage1.marked_outputs(inputs), atol=1e-6)  # B′, not B
    assert not torch.allclose(targets, stage1.model_outputs(inputs), atol=1e-4)
    twin = run.steps["twin_unet_l2"]  # the cell's clean twin: same inputs, M's outputs B
    assert torch.equal(twin.inputs["attack_inputs"][0].load(), inputs)
    assert torch.allclose(twin.inputs["attack_targets"][0].load(), stage1.model_outputs(inputs),
                          atol=1e-6)
    assert twin.config.parameters["settings"] == cell.config.parameters["settings"]
    assert cell.config.parameters["settings"]["steps_by_arch"] == {"cnet": 6}
    outputs = cell.outputs["surrogate_outputs"][0].load()
    query = run.steps["attacker_data"].outputs["query_inputs"][0].load()
    assert outputs.shape == query.shape and 0 <= float(outputs.min()) <= float(outputs.max()) <= 1

    rerun = Client().get_pipeline_run(second["run"])
    assert str(rerun.steps["surrogate_unet_l2"].status) == "cached"
    again = rerun.steps["surrogate_unet_l2"].outputs["surrogate_outputs"][0].load()
    assert torch.equal(again, outputs)
    assert second["metrics"]["detection_rate_mean_attacked"] == \
        pytest.approx(first["metrics"]["detection_rate_mean_attacked"])


# -- configuration and library pieces (no pipeline run) ------------------------------------------


def test_bad_matrix_or_cache_setting_fails_before_anything_runs(tmp_path: Path) -> None:
    from neuralmark.components.methods.base import InputError
    from neuralmark.pipelines.output_mark import run_output_mark

    with pytest.raises(InputError, match="matrix.cells"):
        run_output_mark("derain", "tiny", overrides={"matrix": {"cells": [["vgg", "l2"]]}},
                        project_root=tmp_path)
    with pytest.raises(InputError, match="matrix.seeds.*two distinct seeds"):
        run_output_mark("derain", "tiny", overrides={"matrix": {"seeds": [3, 3]}},
                        project_root=tmp_path)
    with pytest.raises(InputError, match="unknown task"):
        run_output_mark("denoise", "tiny", project_root=tmp_path)
    cached = tmp_path / "cached.yaml"
    cached.write_text("enable_cache: false\nparameters: {task: derain}\n")
    with pytest.raises(InputError, match="enable_cache"):
        run_output_mark("derain", "tiny", cached, project_root=tmp_path)
    logo = tmp_path / "logo.png"
    logo.write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        run_output_mark("derain", "tiny", overrides={"config": {"logo": str(logo)}},
                        project_root=tmp_path)
    assert not (tmp_path / ".zen").exists()  # nothing was bootstrapped


def test_pairs_rows_tables_and_gate_summary(photo) -> None:
    from neuralmark.components.data import pairs
    from neuralmark.components.methods.output_mark import matrix, tables
    from neuralmark.components.plots import matrix_heatmap

    images = torch.from_numpy(photo[:128, :192].copy()).permute(2, 0, 1).float()[None] / 255
    images = torch.cat([images[..., :64, :64], images[..., 64:, 128:]])         # 2 3 64 64
    a, b = pairs.build_pairs(images, "derain", 3)
    again, _ = pairs.build_pairs(images, "derain", 3)
    assert torch.equal(a, again) and torch.equal(b, images) and not torch.equal(a, b)
    assert float((a - b).min()) > -1e-6  # rain is screen-blended: it never darkens
    ga, gb = pairs.build_pairs(images, "debone", 0)
    assert torch.equal(ga[:, 0], ga[:, 1]) and gb.shape == ga.shape
    assert pairs.target_kind("debone") == "classical-approximation"

    rows = []
    for stage, hits in (("stage1", [0, 0, 1, 0]), ("stage2", [1, 1, 1, 0])):
        rows += matrix.cell_rows("output_mark", stage, "unet", "l2+adversarial",
                                 torch.tensor([0.9, 0.9, 0.97, 0.5]), torch.tensor(hits).bool())
    rows += [{"method": "output_mark", "attack": "none", "strength": None, "label": "none",
              "metric": m, "value": v, "n": 4, "stage": "stage2"}
             for m, v in (("psnr_marked", 31.0), ("sr_marked", 1.0), ("fpr_clean_B", 0.0))]
    summary = matrix.gate_summary(rows)
    assert summary["detection_rate/surrogate_unet_l2_adversarial"] == 0.75
    assert summary["detection_rate_mean_attacked"] == 0.75 and summary["psnr"] == 31.0
    assert summary["sr/stage1/surrogate_unet_l2_adversarial"] == 0.25
    assert summary["detection_rate/none"] == 1.0 and summary["fpr"] == 0.0
    table = tables.matrix_table(rows)
    assert "| surrogate_unet_l2_adversarial | 25% | 75% |" in table
    fig = matrix_heatmap(rows, matrix.STAGES)
    assert len(fig.axes[0].texts) == 2
