"""The output_mark and trigger_key pipeline steps' training, launched data-parallel (issue #15).

Their steps (``steps/output_mark.py``, ``steps/trigger_key.py``) run their library functions
through ``neuralmark.runtime.ddp.train_in_processes`` with ``train_processes()`` processes,
the launcher ``train_model`` uses (``elastic_launch``, rank 0's bundle back). Here the same
functions with the same arguments run in 2 gloo processes and in 1 (the step's own process,
the unchanged single-process path), at micro sizes, and must agree to float32 round-off:
weights of every trained network, the step's metrics, the calibration. What travels to the
workers is what a step holds: tensors, keyword arguments, a method (as a bundle) and, for
trigger_key, the independent host network. Rank 0's metrics reach the caller's callbacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralmark.components.data.manifest import ManifestRow, write_manifest
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark import training
from neuralmark.components.methods.trigger_key import study
from neuralmark.runtime.ddp import train_in_processes
from tests.ddp_harness import ATOL, RTOL, Recorder, images, zero_gradient
from tests.test_distributed_methods import CONFIGS, _pairs


def _assert_same_networks(two, one, method: str) -> None:
    """Every weight and buffer of ``two``'s networks equals ``one``'s to round-off, except
    parameters whose true gradient is zero and the running means they feed
    (``ddp_harness.zero_gradient``: Adam turns their round-off gradients into steps)."""
    mods2, mods1 = two.modules(), one.modules()
    assert sorted(mods2) == sorted(mods1)
    dead = zero_gradient(method, CONFIGS[method], images(4, 32))
    for name, mod in mods2.items():
        ref = mods1[name].state_dict()
        for key, value in mod.state_dict().items():
            if f"{name}.{key}" in dead:
                continue
            if value.is_floating_point():
                torch.testing.assert_close(value, ref[key], rtol=RTOL, atol=ATOL,
                                           msg=lambda m, n=f"{name}.{key}": f"{n}: {m}")
            else:
                assert torch.equal(value, ref[key]), f"{name}.{key}"


def _events(recorder: Recorder) -> list[tuple[int, list[str]]]:
    """(step, metric names) of each metrics event, in order."""
    return [(step, sorted(metrics)) for step, metrics in recorder.metrics]


def _assert_same_metrics(two: dict[str, float], one: dict[str, float]) -> None:
    assert two.keys() == one.keys()
    for key in one:
        if key.startswith("time_"):
            continue  # wall-clock
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), rtol=RTOL,
                                   atol=ATOL, equal_nan=True, msg=lambda m, k=key: f"{k}: {m}")


def test_output_mark_stage1_step_trains_in_two_processes_as_in_one():
    """``train_marking``'s ``stage1_method`` (M, H, R, D; the groups as a keyword) in 2 gloo
    processes vs the step's own process. (``finetune_stage2`` sends its stage-1 method as a
    bundle, as ``embed_owner_mark`` below does; stage 2's loops are checked 2-vs-1 through
    ``fit`` in ``test_distributed_methods``.)"""
    config = {**CONFIGS["output_mark"], "model_steps": 2, "steps": 2, "stage2_steps": 2,
              "surrogate": {**CONFIGS["output_mark"]["surrogate"], "steps": 2}}
    pairs = _pairs(8, 32)
    groups = [f"photo{i // 2}" for i in range(8)]
    key = WatermarkKey("ddp-steps")
    stage1_args = (pairs, config, key)
    streamed, here = Recorder(), Recorder()
    two1, met2 = train_in_processes(training.stage1_method, stage1_args, {"groups": groups},
                                    method="output_mark", callbacks=[streamed], processes=2)
    one1, met1 = train_in_processes(training.stage1_method, stage1_args, {"groups": groups},
                                    method="output_mark", callbacks=[here], processes=1)
    _assert_same_networks(two1, one1, "output_mark")
    _assert_same_metrics(met2, met1)
    assert two1.train_groups == groups and met1["n_held_out"] > 0
    # rank 0's stage-1 losses reached the caller while the job ran, each event once
    assert [s for s, m in streamed.metrics if "stage1_loss" in m] == [2, 3]
    assert _events(streamed) == _events(here)


def _manifest(folder: Path) -> Path:
    """A manifest of 16×16 photos-like PNGs: 4 train, 2 val, 2 test."""
    rows = []
    batch = images(8, 16)
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        name = f"img{i}.png"
        arr = (batch[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / name)
        rows.append(ManifestRow(path=name, sha256="0" * 64, width=16, height=16, mode="RGB",
                                split=split, source="test", group=f"g{i}"))
    return write_manifest(rows, folder / "manifest.csv")


def test_trigger_key_mark_step_trains_in_two_processes_as_in_one(tmp_path):
    """``embed_owner_mark``'s ``study.mark_owner`` (the unmarked method as a bundle, the
    independent host as a network) in 2 gloo processes vs the step's own process."""
    manifest = str(_manifest(tmp_path))
    config = CONFIGS["trigger_key"]
    splits = ["val", "test"]
    unmarked, host_metrics = train_in_processes(study.train_unmarked,
                                                (config, manifest, splits),
                                                method="trigger_key", processes=1)
    independent = study.train_independent(unmarked, manifest, splits, 1000)
    args = (unmarked, WatermarkKey("ddp-steps"), [independent.host], manifest, splits)
    streamed, here = Recorder(), Recorder()
    two, met2 = train_in_processes(study.mark_owner, args, method="trigger_key",
                                   callbacks=[streamed], processes=2)
    one, met1 = train_in_processes(study.mark_owner, args, method="trigger_key",
                                   callbacks=[here], processes=1)
    assert met2 == met1 == {}  # mark_owner returns the method; its metrics ride on it
    _assert_same_networks(two, one, "trigger_key")
    _assert_same_metrics(two.metrics, one.metrics)
    assert two.fingerprint == one.fingerprint != ""
    _assert_same_metrics(two.calibration, one.calibration)  # η, FPR, ... (64 keys reach α)
    # the caller got rank 0's events, each once: the same steps and metrics as in one process
    assert _events(streamed) == _events(here) and len(here.metrics) >= 2
    assert "host_psnr" in host_metrics


def test_trigger_key_calibration_pool_builds_in_two_processes_as_in_one(tmp_path):
    """The calibration pool (other keys' hosts marked with the owner's schedule, here with
    the fine-tuning-aware lookahead) built inside ``mark_owner`` in 2 gloo processes vs 1:
    the same owner's weights and the same null, its marked-host trials included."""
    manifest = str(_manifest(tmp_path))
    config = {**CONFIGS["trigger_key"], "calibration_keys": 64, "calibration_marked_keys": 2,
              "lookahead_steps": 1}
    splits = ["val", "test"]
    unmarked, _ = train_in_processes(study.train_unmarked, (config, manifest, splits),
                                     method="trigger_key", processes=1)
    independent = study.train_independent(unmarked, manifest, splits, 1000)
    args = (unmarked, WatermarkKey("ddp-pool"), [independent.host], manifest, splits)
    two, _ = train_in_processes(study.mark_owner, args, method="trigger_key", processes=2)
    one, _ = train_in_processes(study.mark_owner, args, method="trigger_key", processes=1)
    _assert_same_networks(two, one, "trigger_key")
    # 2 pool keys: 2·(2 + 1) marked-host trials, split into calibrating and held-out ones
    assert one.calibration["marked_trials"] > 0
    assert len(one.null) == len(two.null) > 3  # 3 calibrating random keys + pool trials
    torch.testing.assert_close(torch.tensor(two.null), torch.tensor(one.null), rtol=RTOL,
                               atol=ATOL)
    _assert_same_metrics(two.calibration, one.calibration)


def test_step_launcher_refuses_what_it_cannot_run():
    with pytest.raises(InputError, match="processes must be >= 1, got 0"):
        train_in_processes(study.train_unmarked, (), method="trigger_key", processes=0)
    with pytest.raises(InputError, match="spread_spectrum does not train data-parallel"):
        train_in_processes(study.train_unmarked, (), method="spread_spectrum", processes=2)
    with pytest.raises(TypeError, match="must return a WatermarkMethod"):
        train_in_processes(lambda callbacks: torch.zeros(1), (), method="trigger_key")
