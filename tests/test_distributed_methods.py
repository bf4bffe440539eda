"""Data-parallel training of output_mark, trigger_key and visible_gan (issue #15).

As ``test_distributed.py`` does for pgd_signer and anti_forward: each method's micro
config trains in 2 gloo processes and in 1 process with the same global batch, and

* every weight and buffer (BatchNorm running statistics included) is identical on both
  ranks;
* the weights, the logged losses and the trained networks' loss on images neither run
  trained on match the one-process run to float32 round-off (``RTOL``/``ATOL``), except
  parameters whose true gradient is zero (conv biases a BatchNorm cancels: Adam turns
  their round-off gradients into steps of ``lr``), found by their zero gradient, and the
  running means of the BatchNorms right after them (which carry those biases).

What each run covers: output_mark's whole ``fit`` (M, stage 1 with H, R, D and the jitter,
the stage-2 surrogates, one with the adversarial term, and R's fine-tuning); trigger_key's
host training (DnCNN, BatchNorm in training mode) and the mark's embedding
(``embed_model``, BatchNorm frozen); visible_gan's classifier and GMAN (W, V, D), with a
removal share (a ratio of two batch MSEs) and GMAN weights that lean (both non-linear in
batch means).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.ddp_harness import ATOL, RTOL, Recorder, assert_trains_as_one, images

CONFIGS: dict[str, dict[str, Any]] = {
    "output_mark": {"working_size": 32, "model_width": 4, "model_depth": 2, "embed_width": 4,
                    "embed_depth": 2, "extract_width": 4, "extract_blocks": 1,
                    "disc_width": 4, "disc_layers": 2, "model_steps": 3, "steps": 3,
                    "batch_size": 4, "stage2_steps": 3, "jitter": 0.5,
                    "surrogate": {"width": 4, "depth": 2, "steps": 3, "batch_size": 4,
                                  "loss": "l2+adversarial"},
                    "device": "cpu"},
    "trigger_key": {"arch": "dncnn", "depth": 3, "width": 4, "trigger_size": 8,
                    "host_steps": 3, "embed_steps": 3, "patch_size": 8, "n_patches": 16,
                    "batch_size": 4, "calibration_keys": 64, "visualizer_width": 4,
                    "visualizer_steps": 2, "logo_size": 8, "check_every": 1,
                    "device": "cpu"},
    "visible_gan": {"working_size": 16, "detect_size": 32, "mark_resolution": 16,
                    "w_width": 4, "v_width": 4, "d_width": 4, "classifier_width": 4,
                    "classifier_steps": 2, "steps": 3, "batch_size": 4,
                    "calibration_scores": 16, "utility_steps": 2, "removal_steps": 2,
                    "log_every": 1, "gman_lambda": 1.0, "device": "cpu"},
}
#: a training loss each method logs at every reported step
LOSS_KEY = {"output_mark": "stage1_loss", "trigger_key": "host_loss",
            "visible_gan": "loss_w"}


def _pairs(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) pairs: B a fixed smoothing-and-tint of A (a model's task to learn)."""
    a = images(n, size)
    b = (0.5 * a + 0.5 * a.roll(1, dims=-1)) * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1)
    return a, b


def _train(method: str, model: Any, config: dict[str, Any], recorder: Recorder) -> None:
    """Run the method's data-parallel training: its ``fit`` (and the embedding)."""
    from neuralmark.components.methods.base import WatermarkKey

    if method == "output_mark":
        model.fit({"train": _pairs(8, 32), "val": _pairs(4, 32)}, [recorder])
    elif method == "trigger_key":
        model.fit({"train": images(4, 16)}, [recorder])
        model.embed_model(model.host, WatermarkKey("ddp-test"), [recorder])
    else:
        model.fit({"train": images(8, 32), "val": images(4, 32)}, [recorder])


def _fresh(method: str) -> torch.Tensor:
    """Images neither run trained on, at a size the method's ``training_loss`` takes."""
    return images(4, 32).roll(3, dims=-2)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_two_processes_train_as_one(method, tmp_path):
    assert_trains_as_one(method, CONFIGS[method], _train, _fresh(method), LOSS_KEY[method],
                         tmp_path)


def test_training_launcher_takes_output_mark_pairs():
    """``fit_method`` with 2 processes on output_mark's (A, B) pairs trains as 1 process."""
    from neuralmark.runtime.ddp import fit_method

    config = {**CONFIGS["output_mark"], "model_steps": 2, "steps": 2, "stage2_steps": 2,
              "surrogate": {**CONFIGS["output_mark"]["surrogate"], "steps": 2}}
    data = {"train": _pairs(8, 32), "val": _pairs(4, 32)}
    streamed = Recorder()
    model, final = fit_method("output_mark", config, data, [streamed], processes=2)
    one, final_one = fit_method("output_mark", config, data, [Recorder()], processes=1)
    assert model.trained and final.keys() == final_one.keys()
    # stage 1's steps (numbered after M's), then the final summary
    assert [s for s, m in streamed.metrics if "stage1_loss" in m] == [2, 3, 6]
    for key in ("stage1_loss", "stage2_loss", "nc_marked", "calibration_n"):
        torch.testing.assert_close(final[key], final_one[key], rtol=RTOL, atol=ATOL)
