"""``config.clean_variety`` through the real output_mark pipeline (issue #19).

The shipped derain demo was trained with varied clean images in R's clean term; the
pipeline must be able to train it too. Two micro runs in one temporary project (one
matrix cell, no baseline, no independent model): with the option, the ``clean_variety``
step makes exactly the images the recipe makes (``training.clean_variety_images``),
held-out photos are dropped from what R sees, stage 1 equals the library call with those
images and the ablation gets them too; without it (the default) there is
no such step, R sees no extra image and stage 1 equals the library call without them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from neuralmark.runtime.stack import tracking_uri
from tests.isolation import pipeline_project
from tests.micro_policy import open_gate
from tests.test_output_mark_pipeline import MICRO as FULL_MICRO

pytestmark = pytest.mark.pipeline

MICRO: dict[str, Any] = {
    "config": FULL_MICRO["config"],
    "data": FULL_MICRO["data"],
    "policy": open_gate("output_mark"),
    "matrix": {"cells": [["unet", "l2"]], "baseline": False, "ablations": [],
               "false_positives": False, "min_success_rate": {"tiny": 0.0}},
}


def _with_variety(on: bool) -> dict[str, Any]:
    overrides = copy.deepcopy(MICRO)
    if on:
        overrides["config"]["clean_variety"] = True
        overrides["matrix"]["ablations"] = ["no_consistency_loss"]  # gets the images too
    return overrides


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    with pipeline_project(tmp_path_factory.mktemp("nm-om-variety")) as root:
        yield root


@pytest.fixture(scope="module")
def runs(project: Path) -> dict[str, dict[str, Any]]:
    from neuralmark.pipelines.output_mark import run_output_mark

    return {name: run_output_mark("derain", "tiny", overrides=_with_variety(name == "on"),
                                  project_root=project)
            for name in ("off", "on")}


def _stage1_from_library(run: Any, clean: Any) -> Any:
    """Stage 1 retrained here by the library call the recipe script makes."""
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.output_mark.training import stage1_method

    step = run.steps["train_marking"]
    pairs = (step.inputs["train_inputs"][0].load(), step.inputs["train_targets"][0].load())
    groups = step.inputs["train_groups"][0].load()
    params = step.config.parameters
    method, metrics = stage1_method(pairs, params["config"], WatermarkKey(params["key_secret"]),
                                    groups=groups, clean=clean)
    return method, metrics


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_clean_variety_reaches_r_through_the_pipeline(project: Path, runs) -> None:
    from mlflow import MlflowClient
    from zenml.client import Client

    from neuralmark.components.data.clean_variety import varied_clean_images
    from neuralmark.components.methods.output_mark.config import OutputMarkConfig
    from neuralmark.components.methods.output_mark.training import split_indices

    on = runs["on"]
    assert on["status"] == "completed"
    run = Client().get_pipeline_run(on["run"])
    step = run.steps["clean_variety"]
    manifest = step.inputs["manifest"][0].load()
    images = step.outputs["clean_images"][0].load()
    groups = step.outputs["clean_groups"][0].load()
    cfg = OutputMarkConfig(**run.steps["train_marking"].config.parameters["config"])
    assert cfg.clean_variety and cfg.working_size == 32
    expected, expected_groups = varied_clean_images(manifest, 32, seed=cfg.seed)  # the recipe's
    assert torch.equal(images, expected) and groups == expected_groups

    train_groups = run.steps["train_marking"].inputs["train_groups"][0].load()
    _, held_out = split_indices(cfg, len(train_groups), train_groups)
    banned = {train_groups[int(i)] for i in held_out}
    kept = sum(g not in banned for g in groups)
    assert 0 < kept < len(groups)  # the held-out photos' crops never reach R

    client = MlflowClient(tracking_uri=tracking_uri(project))
    metrics = client.get_run(on["mlflow_run_id"]).data.metrics
    assert metrics["stage1/clean_bank_images"] == kept
    assert metrics["stage2/clean_bank_images"] == kept

    stage1 = run.steps["train_marking"].outputs["stage1_method"][0].load()
    library, lib_metrics = _stage1_from_library(run, (expected, expected_groups))
    assert lib_metrics["clean_bank_images"] == kept
    assert _same_weights(stage1.R, library.R) and _same_weights(stage1.H, library.H)
    ablation = run.steps["ablation_no_consistency_loss"]
    assert torch.equal(ablation.inputs["clean_images"][0].load(), expected)
    assert ablation.inputs["clean_groups"][0].load() == expected_groups


def test_off_by_default_adds_no_images_and_trains_as_before(project: Path, runs) -> None:
    from mlflow import MlflowClient
    from zenml.client import Client

    off = runs["off"]
    assert off["status"] == "completed"
    run = Client().get_pipeline_run(off["run"])
    assert "clean_variety" not in run.steps
    assert run.steps["train_marking"].config.parameters["config"]["clean_variety"] is False
    metrics = MlflowClient(tracking_uri=tracking_uri(project)).get_run(
        off["mlflow_run_id"]).data.metrics
    assert metrics["stage1/clean_bank_images"] == 0 == metrics["stage2/clean_bank_images"]

    stage1 = run.steps["train_marking"].outputs["stage1_method"][0].load()
    library, _ = _stage1_from_library(run, None)
    assert _same_weights(stage1.R, library.R) and _same_weights(stage1.H, library.H)
    on_stage1 = Client().get_pipeline_run(runs["on"]["run"]).steps["train_marking"] \
        .outputs["stage1_method"][0].load()
    assert not _same_weights(stage1.R, on_stage1.R)  # the option changes what R learns


def test_clean_variety_with_a_prepared_dataset_fails_before_anything_runs(tmp_path) -> None:
    from neuralmark.components.errors import InputError
    from neuralmark.pipelines.output_mark import run_output_mark

    with pytest.raises(InputError, match="clean_variety.*prepared"):
        run_output_mark("derain", "tiny", overrides={
            "config": {"clean_variety": True},
            "matrix": {"prepared": str(tmp_path / "manifest.csv")}}, project_root=tmp_path)
    assert not (tmp_path / ".zen").exists()
