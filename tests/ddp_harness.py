"""Train a method in 2 gloo processes and in 1, and check they trained alike (issue #15).

Shared by ``test_distributed`` (pgd_signer, anti_forward) and ``test_distributed_methods``
(output_mark, trigger_key, visible_gan). A test module gives a top-level ``train(method,
model, config, recorder)`` (it must pickle: the workers are spawned) and calls
``assert_trains_as_one``.

Checked: the weights are identical on both ranks; the weights, the logged losses and the
trained networks' loss on fresh images match the one-process run with the same global batch
to float32 round-off (the two runs reduce gradients in a different order). Parameters whose
true gradient is zero (conv biases a normalisation cancels: Adam turns their round-off
gradients into steps of ``lr``) and the BatchNorm running means right after them are left
out of the weight check; they are found by their zero gradient.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from neuralmark.components import distributed

#: losses and weights of 2 processes vs 1 (float32 round-off through a few Adam steps)
RTOL, ATOL = 1e-4, 1e-5

Train = Callable[[str, Any, dict[str, Any], "Recorder"], None]


def images(n: int, size: int) -> torch.Tensor:
    """Smooth random images N×3×size×size in [0, 1] (fixed seed)."""
    g = torch.Generator().manual_seed(1234)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear",
                                         align_corners=False)
    return (0.8 * up + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, dict(metrics)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, method: str, config: dict[str, Any],
            train: Train, out: str) -> None:
    """One process of the job: join it like a torchrun process, train, write weights."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world),
                           "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)})
    from neuralmark.components.methods.registry import build

    distributed.init_from_env("cpu")
    try:
        model = build(method, config)
        recorder = Recorder()
        train(method, model, config, recorder)
        weights = {f"{n}.{k}": v.detach().contiguous()
                   for n, mod in model.modules().items() for k, v in mod.state_dict().items()}
        save_file(weights, str(Path(out) / f"rank{rank}.safetensors"))
        (Path(out) / f"metrics{rank}.json").write_text(json.dumps(recorder.metrics))
    finally:
        distributed.shutdown()


def run(method: str, world: int, out: Path, config: dict[str, Any], train: Train) -> None:
    """Train ``method`` in ``world`` spawned processes; weights and metrics land in ``out``."""
    out.mkdir()
    mp.start_processes(_worker, args=(world, free_port(), method, config, train, str(out)),
                       nprocs=world, join=True, start_method="spawn")


def trained(method: str, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> Any:
    """A fresh model of ``method`` holding ``weights``."""
    from neuralmark.components.methods.registry import build

    model = build(method, config)
    for name, mod in model.modules().items():
        mod.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items()
                             if k.startswith(f"{name}.")})
    return model


def zero_gradient(method: str, config: dict[str, Any], probe: torch.Tensor) -> set[str]:
    """Parameters whose gradient is zero up to round-off, and the running means they feed."""
    from neuralmark.components.methods.registry import build

    model = build(method, config)
    for mod in model.modules().values():
        mod.train()
    model.training_loss(probe).backward()
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


def assert_trains_as_one(method: str, config: dict[str, Any], train: Train,
                         fresh: torch.Tensor, loss_key: str, tmp_path: Path) -> None:
    """2 processes vs 1 with the same global batch: same weights, losses and trained loss."""
    run(method, 2, tmp_path / "ddp", config, train)
    run(method, 1, tmp_path / "single", config, train)
    r0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    one = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    assert sorted(r0) == sorted(r1) == sorted(one)
    dead = zero_gradient(method, config, fresh)
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"{name} differs between the ranks"
        if name not in dead:
            torch.testing.assert_close(r0[name].float(), one[name].float(), rtol=RTOL,
                                       atol=ATOL,
                                       msg=lambda m, n=name: f"{n}: 2 processes vs 1: {m}")
    # the trained networks compute the same loss on images neither run trained on
    torch.testing.assert_close(trained(method, config, r0).training_loss(fresh).detach(),
                               trained(method, config, one).training_loss(fresh).detach(),
                               rtol=RTOL, atol=ATOL)
    # callbacks fire on rank 0 only, with the global batch's losses
    assert json.loads((tmp_path / "ddp" / "metrics1.json").read_text()) == []
    losses = [[m[loss_key] for _, m in json.loads((tmp_path / r / "metrics0.json").read_text())
               if loss_key in m] for r in ("ddp", "single")]
    assert len(losses[0]) == len(losses[1]) >= 2
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]),
                               rtol=RTOL, atol=ATOL)
    assert len({round(v, 6) for v in losses[1]}) > 1, "the loss never changed"
