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

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from neuralmark.components import distributed
from tests.test_distributed import ATOL, RTOL, _free_port, _images

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
                    "batch_size": 4, "calibration_keys": 4, "visualizer_width": 4,
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


class _Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, dict(metrics)))


def _pairs(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) pairs: B a fixed smoothing-and-tint of A (a model's task to learn)."""
    a = _images(n, size)
    b = (0.5 * a + 0.5 * a.roll(1, dims=-1)) * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1)
    return a, b


def _train(method: str, model: Any, recorder: _Recorder) -> None:
    """Run the method's data-parallel training: its ``fit`` (and the embedding)."""
    from neuralmark.components.methods.base import WatermarkKey

    if method == "output_mark":
        model.fit({"train": _pairs(8, 32), "val": _pairs(4, 32)}, [recorder])
    elif method == "trigger_key":
        model.fit({"train": _images(4, 16)}, [recorder])
        model.embed_model(model.host, WatermarkKey("ddp-test"), [recorder])
    else:
        model.fit({"train": _images(8, 32), "val": _images(4, 32)}, [recorder])


def _worker(rank: int, world: int, port: int, method: str, out: str) -> None:
    """One process of the job: join it like a torchrun process, train, write weights."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world),
                           "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)})
    from neuralmark.components.methods.registry import build

    distributed.init_from_env("cpu")
    try:
        model = build(method, CONFIGS[method])
        recorder = _Recorder()
        _train(method, model, recorder)
        weights = {f"{n}.{k}": v.detach().contiguous()
                   for n, mod in model.modules().items() for k, v in mod.state_dict().items()}
        save_file(weights, str(Path(out) / f"rank{rank}.safetensors"))
        (Path(out) / f"metrics{rank}.json").write_text(json.dumps(recorder.metrics))
    finally:
        distributed.shutdown()


def _run(method: str, world: int, out: Path) -> None:
    out.mkdir()
    mp.start_processes(_worker, args=(world, _free_port(), method, str(out)), nprocs=world,
                       join=True, start_method="spawn")


def _fresh(method: str) -> torch.Tensor:
    """Images neither run trained on, at a size the method's ``training_loss`` takes."""
    return _images(4, 32).roll(3, dims=-2)


def _trained(method: str, weights: dict[str, torch.Tensor]) -> Any:
    from neuralmark.components.methods.registry import build

    model = build(method, CONFIGS[method])
    for name, mod in model.modules().items():
        mod.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items()
                             if k.startswith(f"{name}.")})
    return model


def _zero_gradient(method: str) -> set[str]:
    """Parameters whose gradient is zero up to round-off (a bias a normalisation removes)."""
    from neuralmark.components.methods.registry import build

    model = build(method, CONFIGS[method])
    for mod in model.modules().values():
        mod.train()
    model.training_loss(_fresh(method)).backward()
    grads = {f"{n}.{k}": (None if p.grad is None else float(p.grad.abs().max()))
             for n, mod in model.modules().items() for k, p in mod.named_parameters()}
    scale = max(g for g in grads.values() if g is not None)
    dead = {k for k, g in grads.items() if g is not None and g <= 1e-6 * scale}
    # a BatchNorm's running mean follows the (dead) bias of the conv just before it
    follows = set()
    for name in dead:
        path, _, leaf = name.rpartition(".")
        parent, _, index = path.rpartition(".")
        if leaf == "bias" and index.isdigit():
            follows.add(f"{parent}.{int(index) + 1}.running_mean")
    return dead | follows


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_two_processes_train_as_one(method, tmp_path):
    _run(method, 2, tmp_path / "ddp")
    _run(method, 1, tmp_path / "single")
    r0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    one = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    assert sorted(r0) == sorted(r1) == sorted(one)
    dead = _zero_gradient(method)
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"{name} differs between the ranks"
        if name not in dead:
            torch.testing.assert_close(r0[name].float(), one[name].float(), rtol=RTOL,
                                       atol=ATOL,
                                       msg=lambda m, n=name: f"{n}: 2 processes vs 1: {m}")
    ddp_model, one_model = _trained(method, r0), _trained(method, one)
    torch.testing.assert_close(ddp_model.training_loss(_fresh(method)).detach(),
                               one_model.training_loss(_fresh(method)).detach(),
                               rtol=RTOL, atol=ATOL)
    # callbacks fire on rank 0 only, with the global batch's losses
    assert json.loads((tmp_path / "ddp" / "metrics1.json").read_text()) == []
    key = LOSS_KEY[method]
    losses = [[m[key] for _, m in json.loads((tmp_path / run / "metrics0.json").read_text())
               if key in m] for run in ("ddp", "single")]
    assert len(losses[0]) == len(losses[1]) >= 2
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]),
                               rtol=RTOL, atol=ATOL)
    assert len({round(v, 6) for v in losses[1]}) > 1, "the loss never changed"


def test_training_launcher_takes_output_mark_pairs():
    """``fit_method`` with 2 processes on output_mark's (A, B) pairs trains as 1 process."""
    from neuralmark.runtime.ddp import fit_method

    config = {**CONFIGS["output_mark"], "model_steps": 2, "steps": 2, "stage2_steps": 2,
              "surrogate": {**CONFIGS["output_mark"]["surrogate"], "steps": 2}}
    data = {"train": _pairs(8, 32), "val": _pairs(4, 32)}
    streamed = _Recorder()
    model, final = fit_method("output_mark", config, data, [streamed], processes=2)
    one, final_one = fit_method("output_mark", config, data, [_Recorder()], processes=1)
    assert model.trained and final.keys() == final_one.keys()
    # stage 1's steps (numbered after M's), then the final summary
    assert [s for s, m in streamed.metrics if "stage1_loss" in m] == [2, 3, 6]
    for key in ("stage1_loss", "stage2_loss", "nc_marked", "calibration_n"):
        torch.testing.assert_close(final[key], final_one[key], rtol=RTOL, atol=ATOL)
