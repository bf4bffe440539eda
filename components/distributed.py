"""Data-parallel training helpers: torchrun's process group, sharded batches, DDP, rank 0.

A method's ``fit`` runs unchanged in one process; under ``torchrun`` (or the pipeline's
multi-process launch, ``neuralmark.runtime.ddp``) every process runs the same ``fit`` on its
shard of each batch. The scheme, and why (it makes N processes train exactly as one
process with the same global batch, which ``tests/test_distributed.py`` checks):

* Every process holds the whole (small, in-memory) dataset and the same seeded generator.
  Whatever ``fit`` draws (batch indices, payload bits, augmentation and noise parameters)
  it draws for the **global** batch, so every generator stays in step, and each process
  keeps its rows (``shard``, ``sample_shard``). This is the rank-sharded equivalent of a
  ``DistributedSampler`` for the with-replacement, generator-driven batches the methods use.
* Gradients are averaged by ``DistributedDataParallel`` (``wrap``, ``wrapped``), or by
  ``average_gradients`` for a network that goes through several backward passes in one
  step (a GAN's discriminator, which DDP's once-per-step reducer does not allow). A loss
  term over batch statistics is computed on the global batch (``gather_batch``,
  ``batch_statistic``), a non-linear function of a batch mean on the global mean
  (``global_mean``), and BatchNorm normalises with the global batch's statistics
  (``sync_batchnorm``).
* Callbacks (MLflow, progress bars) fire on rank 0 only (``main_only``); metrics are
  averaged over processes first (``mean_over_processes``); bundles are saved by rank 0.

With one process every helper is a no-op (or the identity), so every existing call keeps
its behaviour.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from neuralmark.components.attacks.base import select_rows
from neuralmark.components.errors import InputError

#: the environment torchrun (and ``torch.distributed.launcher``) sets for each process
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def world_size() -> int:
    """Number of processes of the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_distributed() -> bool:
    """Whether more than one process trains together."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this process logs and saves (rank 0; always true in one process)."""
    return rank() == 0


def init_from_env(device: str = "auto") -> torch.device:
    """Join the job torchrun started, from its environment; return this process's device.

    ``nccl`` with one GPU per process (``LOCAL_RANK``) when CUDA is there and ``device`` is
    not ``"cpu"``, else ``gloo`` on CPU. Without ``WORLD_SIZE`` > 1 (a plain ``python``
    run) nothing is initialised and the device is ``pick_device``'s.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Raises:
        InputError: ``WORLD_SIZE`` > 1 but another torchrun variable is missing or not a
            number, or CUDA is asked for and there are fewer GPUs than local processes.
    """
    size = _env_int("WORLD_SIZE", 1)
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if size <= 1:
        return torch.device("cuda" if use_cuda else "cpu")
    missing = [v for v in TORCHRUN_VARS if not os.environ.get(v)]
    if missing:
        raise InputError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: start the "
                         "job with torchrun (or torch.distributed.launcher)")
    local = _env_int("LOCAL_RANK", 0)
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) "
                             "visible: start at most one process per GPU")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=_env_int("RANK", 0),
                                world_size=size)
    return torch.device("cuda", local) if use_cuda else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise InputError(f"environment variable {name}={value!r} is not a whole number")
    return int(value)


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- sharded batches ----------------------------------------------------------------
def local_rows(global_batch: int, repeats: int = 1) -> torch.Tensor:
    """Indices of this process's rows in a global batch (contiguous blocks by rank).

    With ``repeats`` > 1 the batch is ``repeats`` stacked copies of ``global_batch``
    images (an EoT ``x.repeat(k, 1, 1, 1)``); the rank's rows of every copy are returned.

    Raises:
        InputError: ``global_batch`` does not split evenly over the processes.
    """
    size, me = world_size(), rank()
    if global_batch % size:
        raise InputError(f"batch_size {global_batch} does not split over {size} processes: "
                         f"make it a multiple of {size}")
    b = global_batch // size
    own = torch.arange(me * b, (me + 1) * b)
    return torch.cat([own + k * global_batch for k in range(repeats)])


def shard(x: torch.Tensor, repeats: int = 1) -> torch.Tensor:
    """This process's rows of a global batch ``x`` (G×…, G = repeats·global batch)."""
    if not is_distributed():
        return x
    rows = local_rows(x.shape[0] // repeats, repeats)
    return x[rows.to(x.device)]


def sample_shard(attack: Any, local_batch: int, generator: torch.Generator | None,
                 repeats: int = 1, **kwargs: Any) -> Any:
    """Draw ``attack``'s parameters for the global batch; keep this process's rows.

    Args:
        attack: anything with ``sample(batch_size, generator, **kwargs)``.
        local_batch: images in this process's shard (global batch = local × world size).
        generator: the generator every process shares.
        repeats: stacked copies of the batch the draw is for (``local_rows``).
        **kwargs: passed to ``sample`` (e.g. ``size``).

    Returns:
        A draw for ``repeats · local_batch`` images: in one process, simply
        ``attack.sample(repeats · local_batch, generator)``.
    """
    size = world_size()
    if size == 1:
        return attack.sample(repeats * local_batch, generator, **kwargs)
    total = repeats * local_batch * size
    draw = attack.sample(total, generator, **kwargs)
    return select_rows(draw, local_rows(local_batch * size, repeats), total)


def batch_rows(n: int, global_batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """This process's indices of a batch of ``global_batch`` rows drawn from ``n``.

    The draw (``torch.randint``, with replacement) is the one-process draw of the global
    batch, made on every process with the shared generator; the rank keeps its block
    (``local_rows``). In one process: simply the draw.

    Raises:
        InputError: ``global_batch`` does not split evenly over the processes.
    """
    return shard(torch.randint(0, n, (global_batch,), generator=generator))


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch of ``x`` (B×…) for a loss over batch statistics.

    Every process's rows, concatenated in rank order; only this process's rows carry
    gradient. A loss computed on the result equals the one-process loss; its gradient
    reaches each process's own rows, so multiply that loss term by ``world_size()`` before
    ``backward``: DDP averages gradients over processes, and the sum over processes of
    the per-rank parts is the whole gradient.
    """
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (B×…) concatenated in rank order, no gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def batch_statistic(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                    ) -> torch.Tensor:
    """``fn`` (a scalar loss over batch statistics) of the global batch of ``x`` (B×…).

    The value is the one-process value; the gradient reaching this process's rows is
    scaled by ``world_size()``, so DDP's (or ``average_gradients``') average over
    processes is the one-process gradient (see ``gather_batch``).
    """
    if not is_distributed():
        return fn(x)
    value = fn(gather_batch(x))
    size = world_size()
    return size * value - (size - 1) * value.detach()


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """A per-shard mean (a scalar or a few) made the global batch's mean, gradient local.

    For a loss that is a non-linear function of a batch mean (a margin on an MSE, weights
    from the losses' values): the value is the mean over processes (the global batch's
    mean with equal shards), the gradient is this process's own, and the average over
    processes of ``f'(mean) · d(own mean)`` is the one-process gradient.
    """
    if not is_distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return value + (total / world_size() - value.detach())


def mean_over_processes(metrics: Mapping[str, float]) -> dict[str, float]:
    """Average each metric over processes (identity in one process).

    With equal shards the mean over processes of a per-shard mean is the global mean;
    for a non-linear summary (a PSNR of a shard's MSE) it is the mean of the shards'.
    Every process must call it with the same keys (it is a collective).
    """
    out = {k: float(v) for k, v in metrics.items()}
    if not is_distributed() or not out:
        return out
    keys = sorted(out)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([out[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= world_size()
    return dict(zip(keys, values.tolist(), strict=True))


# -- modules ------------------------------------------------------------------------
def wrap(module: nn.Module) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (the module itself in one process).

    Buffers are not broadcast at every forward: the methods keep them identical on every
    process (same data, same draws) and re-sync them with ``broadcast_state`` when they
    change, so a forward on one process alone (rank 0's figures) never waits on the others.
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


@contextlib.contextmanager
def wrapped(owner: Any, *names: str) -> Iterator[None]:
    """Within the block, ``owner.<name>`` is its DDP wrapper (no-op in one process).

    For a training loop that reaches its networks through attributes (``self.encoder``):
    the wrapper shares the module's parameters, so training updates them in place, and
    the plain modules are put back on leaving the block, even on an error.
    """
    if not is_distributed():
        yield
        return
    plain = {name: getattr(owner, name) for name in names}
    try:
        for name, module in plain.items():
            setattr(owner, name, wrap(module))
        yield
    finally:
        for name, module in plain.items():
            setattr(owner, name, module)


def average_gradients(*modules: nn.Module) -> None:
    """Average the parameters' gradients over processes, in place (no-op in one process).

    What DDP does during ``backward``, for a network DDP cannot wrap: one that goes
    through several backward passes in one step (a discriminator in both the generator's
    and its own loss). Call it after the backward pass, before the optimiser's step. Every
    process must call it with the same modules (it is a collective).
    """
    if not is_distributed():
        return
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class _SumOverProcesses(torch.autograd.Function):
    """Sum of a tensor over processes whose backward sums the gradient over processes
    (each process's input reaches every process's loss through the sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class _GlobalBatchNorm(nn.Module):
    """A BatchNorm layer that, in training, normalises with the global batch's statistics.

    It holds the original layer (its parameters and running buffers, updated in place
    with the global statistics, as one process with the global batch updates them); in
    eval mode it is the original layer. The sums go through ``_SumOverProcesses``, whose
    backward sums the gradient over processes too, so every process's rows receive the
    gradient of every process's loss through the mean and the variance (what
    ``nn.SyncBatchNorm`` does; that one refuses CPU tensors, this one runs on gloo/CPU
    as well as nccl/CUDA).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not bn.training:
            return bn(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        xf = x.float()
        count = torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        mean = _SumOverProcesses.apply(xf.sum(dims)) / count                         # c
        centred = xf - mean.view(shape)
        var = _SumOverProcesses.apply(centred.pow(2).sum(dims)) / count              # c
        y = centred * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats and bn.running_mean is not None \
                and bn.running_var is not None and bn.num_batches_tracked is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                            else bn.momentum)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                bn.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                bn.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        return y.to(x.dtype)


@contextlib.contextmanager
def sync_batchnorm(*modules: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm layer in ``modules`` uses global batch statistics.

    Each layer is swapped for a ``_GlobalBatchNorm`` holding it (the same parameters and
    buffers) and put back on leaving, even on an error; no-op in one process. Enter it
    before ``wrap`` so DDP sees the swapped layers.
    """
    if not is_distributed():
        yield
        return
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for module in modules:
            for parent in list(module.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.modules.batchnorm._BatchNorm):
                        setattr(parent, name, _GlobalBatchNorm(child))
                        swapped.append((parent, name, child))
        yield
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (no-op in one process)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a CUDA device; nothing on CPU (training stays float32 there)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (a time limit hit on one clock ends every loop)."""
    if not is_distributed():
        return flag
    value = [flag]
    dist.broadcast_object_list(value, src=0)
    return bool(value[0])


def main_only(callbacks: Any) -> Any:
    """``callbacks`` on rank 0, a sink that drops everything on the other ranks.

    Args:
        callbacks: a ``Callbacks`` fan-out (or anything with the callback hooks).
    """
    if is_main():
        return callbacks
    from neuralmark.components.methods.base import Callbacks

    return Callbacks()
