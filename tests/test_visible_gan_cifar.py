"""visible_gan from a prepared CIFAR-10 (its real archive format) with the class labels.

A tiny ``cifar-10-python.tar.gz`` (protocol-2 pickled batches, as the publisher ships them)
is prepared by the prepare engine; the training pipeline's data settings read its manifest,
carve val out of train, and hand images and labels to ``fit``; then one run of the training
pipeline on the real ZenML / MLflow stack does the same from the manifest.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.labelled import training_data
from neuralmark.components.data.prepare import prepare_dataset
from neuralmark.components.methods.base import InputError
from neuralmark.components.methods.registry import build, method_class
from neuralmark.runtime.settings import DataSettings
from tests.isolation import pipeline_project
from tests.micro_policy import open_gate

SMOKE = method_class("visible_gan").smoke_config
PER_BATCH = 8  # images per batch: 40 train, 8 test
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
         b"ship", b"truck"]


def _batches() -> dict[str, dict[bytes, Any]]:
    rng = np.random.default_rng(0)
    out = {}
    for b, batch in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [(b * PER_BATCH + i) % 10 for i in range(PER_BATCH)]
        # the class sets the colour planes' mean, so a class is visible in the pixels
        data = rng.integers(0, 96, (PER_BATCH, 3072), dtype=np.uint8)
        data += (np.array(labels, dtype=np.uint8) * 16)[:, None]
        out[batch] = {b"batch_label": batch.encode(), b"labels": labels, b"data": data,
                      b"filenames": [f"{batch}_{i}.png".encode() for i in range(PER_BATCH)]}
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    tar = root / "cifar-10-python.tar.gz"
    members = {"batches.meta": pickle.dumps({b"label_names": NAMES}, protocol=2),
               **{k: pickle.dumps(v, protocol=2) for k, v in _batches().items()}}
    with tarfile.open(tar, "w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    report = prepare_dataset("cifar10", tar, root / "data", PrepareConfig(workers=1))
    return Path(report.manifest)


def _view(prepared: Path) -> Path:
    settings = DataSettings(dataset="prepared", prepared=str(prepared), val_fraction=0.25)
    return settings.build(prepared.parent)


def test_images_and_labels_reach_fit_as_the_archive_pairs_them(prepared):
    data = training_data(_view(prepared), calibration=True)
    assert data["train"].shape == (30, 3, 32, 32) and data["val"].shape == (10, 3, 32, 32)
    assert data["test"].shape == (8, 3, 32, 32) and data["calibration"].shape[0] == 10
    batches = _batches()
    for split in ("train", "val", "test"):
        images, labels = data[split], data[f"{split}_labels"]
        assert labels.shape == (images.shape[0],) and labels.dtype == torch.int64
        for img, label in zip(images, labels, strict=True):
            # find the archive row with these pixels: its label must be the one handed over
            pixels = (img * 255).round().to(torch.uint8).reshape(-1)  # c h w, as stored
            hits = [int(lab) for batch in batches.values()
                    for row, lab in zip(batch[b"data"], batch[b"labels"], strict=True)
                    if np.array_equal(row, pixels.numpy())]
            assert hits == [int(label)], split


def test_fit_learns_the_labelled_task_and_tests_its_table_on_test(prepared):
    data = training_data(_view(prepared), size=16)
    wm = build("visible_gan", {**SMOKE, "task": "labels", "num_classes": 10})
    wm.fit(data)
    report = wm.fit_report
    assert set(report["accuracy"]) == {"clean", "static", "opacity", "displacement",
                                       "deepstamp"}
    assert report["task"] == "labels" and report["utility_test"] == "test"
    assert report["utility_test_images"] == 8 and report["train_images"] == 30
    assert wm.F.body[-1].out_features == 10
    few = build("visible_gan", {**SMOKE, "task": "labels", "num_classes": 5})
    with pytest.raises(InputError, match=r"labels span 0..9, outside F's 0..4"):
        few.fit(data)
    with pytest.raises(InputError, match="task 'labels' needs class labels"):
        few.fit({"train": data["train"], "val": data["val"]})


# -- the training pipeline from the prepared manifest (one run) ---------------------------------

MICRO: dict[str, Any] = {
    "config": {"working_size": 16, "detect_size": 32, "mark_resolution": 16, "w_width": 4,
               "v_width": 4, "d_width": 4, "classifier_width": 4, "classifier_steps": 4,
               "steps": 4, "batch_size": 8, "utility_steps": 3, "removal_steps": 2,
               "removal_curve_steps": [],
               "removal_warmup_steps": 2,  # tiny warms V up for 1200 steps
               "calibration_scores": 100, "log_every": 2, "task": "labels"},
    "evaluation": {"limit": 4, "batch_size": 4, "attacks": ["none", "jpeg"]},
    # every gate of the tiny profile, opened (a micro run measures nothing); the gated
    # metrics must still be there: a missing one refuses promotion
    "policy": open_gate("visible_gan"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    with pipeline_project(tmp_path_factory.mktemp("nm-vg-cifar-project")) as root:
        yield root


@pytest.mark.pipeline
def test_the_training_pipeline_trains_from_the_prepared_manifest(prepared, project):
    from mlflow import MlflowClient

    from neuralmark.pipelines.training import run_training
    from neuralmark.runtime.stack import tracking_uri

    data = {"dataset": "prepared", "prepared": str(prepared), "val_fraction": 0.25,
            "version_with_dvc": False}
    result = run_training("visible_gan", "tiny", overrides={**MICRO, "data": data},
                          project_root=project)
    assert result["status"] == "completed" and result["registered_version"] == "1"
    uri = tracking_uri(project)
    run = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(result["mlflow_run_id"])
    assert run.data.params["data.dataset"] == "prepared"
    assert run.data.params["method.task"] == "labels"
    for stamper in ("static", "deepstamp"):
        assert f"accuracy_drop/{stamper}" in run.data.metrics
    assert "train/f_val_accuracy" in run.data.metrics
