"""Supervised image-to-image training: the one loop every host, protected model and surrogate uses.

* :func:`train_image_net` — Adam on random batches of (input, target) pairs with a loss
  of :data:`LOSS_TERMS` (an attacker's surrogate, ``output_mark``'s protected model) or
  any loss function (the restoration hosts' ℓ_d); a PatchGAN alongside for
  ``adversarial``. Returns the run's metrics.
* :func:`parse_loss` — ``"l2+adversarial"`` → its terms.
* :func:`restoration_loss` — the seed's ℓ_d = 1/(2B)·Σ_i ‖M(X_i) − Y_i‖².
* :func:`train_host` — a restoration host (``components/nets/restoration``) trained with
  ℓ_d, Adam with default betas (the seed: Adam, lr 1e-3).
* :func:`task_psnr` — mean PSNR of a host's outputs against the targets.

Shapes: images are ``N×C×H×W`` float32 (C = 3 for the content methods, 1 or 3 for hosts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neuralmark.components import distributed
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks, pick_device
from neuralmark.components.metrics import psnr
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.nets.patchgan import PatchDiscriminator, gan_bce
from neuralmark.components.nets.perceptual import structural_perceptual_loss
from neuralmark.components.time_budget import out_of_time

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: loss terms :func:`train_image_net` combines by name (seed 001, Table 3)
LOSS_TERMS: tuple[str, ...] = ("l1", "l2", "perceptual", "adversarial")
_ALIASES = {"adv": "adversarial", "perc": "perceptual", "mse": "l2"}
_RECONSTRUCTION: dict[str, LossFn] = {
    "l1": lambda out, y: (out - y).abs().mean(),
    "l2": lambda out, y: (out - y).pow(2).mean(),
    "perceptual": structural_perceptual_loss,
}


def parse_loss(loss: str | Sequence[str]) -> frozenset[str]:
    """``"l2+adversarial"`` (or ``["l2", "adversarial"]``) → its set of terms.

    Raises:
        InputError: empty, or a term outside ``l1, l2, perceptual, adversarial``
            (``adv`` / ``perc`` / ``mse`` are accepted aliases).
    """
    parts = loss.split("+") if isinstance(loss, str) else list(loss)
    terms = {_ALIASES.get(p.strip().lower(), p.strip().lower()) for p in parts if p.strip()}
    bad = sorted(terms - set(LOSS_TERMS))
    if bad or not terms:
        raise InputError(f"unknown surrogate loss term(s) {bad or [loss]}; combine "
                         f"{', '.join(LOSS_TERMS)} with '+'")
    return frozenset(terms)


def restoration_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's task loss ℓ_d = 1/(2B)·Σ_i ‖out_i − target_i‖²₂ (sum over pixels).

    Args:
        out: B×C×H×W host outputs.
        target: B×C×H×W targets.

    Returns:
        A scalar tensor (differentiable).
    """
    return (out - target).pow(2).sum() / (2 * out.shape[0])


def _generator(generator: torch.Generator | int) -> tuple[torch.Generator, int]:
    """A CPU generator for the batch draws and a seed for the PatchGAN's init.

    An int keeps the historical draws (batches from ``seed``, PatchGAN from ``seed + 1``);
    a generator gives the PatchGAN seed as its first draw, so one generator replays a run.
    """
    if isinstance(generator, torch.Generator):
        return generator, int(torch.randint(0, 2**62, (1,), generator=generator))
    seed = int(generator)
    return torch.Generator().manual_seed(seed), seed + 1


def train_image_net(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss: str | Sequence[str] | LossFn, steps: int, batch_size: int, lr: float,
                    generator: torch.Generator | int, device: torch.device,
                    adv_weight: float = 0.01, disc_width: int = 32,
                    callbacks: Callbacks | Sequence[Any] = (), desc: str = "train",
                    betas: tuple[float, float] = (0.5, 0.999),
                    after_step: Callable[[int, nn.Module], None] | None = None
                    ) -> dict[str, float]:
    """Supervised image-to-image training of ``net`` on (inputs, targets) pairs, in place.

    Args:
        net: any B×C×H×W → B×C×H×W network.
        inputs: N×C×S×S inputs.
        targets: N×C×S×S targets.
        loss: ``+``-joined terms (see :func:`parse_loss`; ``adversarial`` trains a
            PatchGAN on targets (real) vs outputs (fake) alongside, 3-channel images
            only), or a function ``(out, target) -> scalar``.
        steps: optimiser steps; each draws ``batch_size`` pairs with replacement.
        batch_size: pairs per step.
        lr: Adam learning rate.
        generator: draws the batches (CPU); an int seeds a fresh one (and the PatchGAN's
            init with ``seed + 1``, through torch's global generator).
        device: where to train.
        adv_weight: weight of the adversarial term.
        disc_width: PatchGAN width when ``adversarial`` is used.
        callbacks: metrics/progress sinks (``{desc}_loss`` and its terms every ~10% of
            the steps, progress each time).
        desc: prefix of the reported metrics.
        betas: Adam's betas; (0.5, 0.999) is pix2pix's, the papers of the hosts use
            Adam's defaults (0.9, 0.999).
        after_step: called as ``after_step(k, net)`` after the k-th optimiser step
            (1-based), ``net`` in train mode; it must leave ``net``'s weights and mode
            as it found them (``apply_net`` does). The schedule has no decay, so the net
            after step k is the net a ``steps=k`` run returns: one run gives a ladder of
            budgets (:func:`..attacks.surrogate.attack_cell_ladder`).

    Data-parallel under torchrun (``neuralmark.components.distributed``): each process
    trains on its rows of every global batch of ``batch_size`` pairs (DDP for ``net``,
    averaged gradients for the PatchGAN, BatchNorm on global statistics), callbacks fire
    on rank 0 with metrics averaged over processes; bf16 autocast on CUDA.

    Returns:
        ``loss_start`` (first batch), ``loss_end`` (mean over the last ~10% of the steps;
        both NaN when ``steps`` is 0), ``steps`` and ``seconds``. ``net`` is left trained,
        in eval mode, on ``device``.
    """
    terms = frozenset() if callable(loss) else parse_loss(loss)
    cb = distributed.main_only(Callbacks.of(callbacks))
    g, disc_seed = _generator(generator)
    start = time.perf_counter()
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
    disc = opt_d = None
    if "adversarial" in terms:
        torch.manual_seed(disc_seed)
        disc = PatchDiscriminator(width=disc_width, n_layers=2).to(device).train()
        distributed.broadcast_state(disc)
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
    n = inputs.shape[0]
    every = max(1, steps // 10)
    history: list[torch.Tensor] = []  # per-step losses, on device (no sync per step)
    with distributed.sync_batchnorm(net, *([disc] if disc is not None else [])):
        train_net = distributed.wrap(net)
        for step in range(steps):
            if step and out_of_time(desc, step, steps):  # a recipe's --minutes bound
                break
            # drawn for the global batch; this process keeps its rows
            idx = distributed.batch_rows(n, batch_size, g)
            x, y = inputs[idx].to(device), targets[idx].to(device)
            parts: dict[str, torch.Tensor] = {}
            with distributed.autocast(device):
                out = train_net(x)
                if callable(loss):
                    total = loss(out, y)
                else:
                    total = out.sum() * 0
                    for term, fn in _RECONSTRUCTION.items():
                        if term in terms:
                            parts[term] = fn(out, y)
                            total = total + parts[term]
                if disc is not None:
                    parts["adversarial"] = gan_bce(disc(out), True)
                    total = total + adv_weight * parts["adversarial"]
            opt.zero_grad()
            total.backward()
            opt.step()
            if disc is not None and opt_d is not None:
                with distributed.autocast(device):
                    d_loss = 0.5 * (gan_bce(disc(y), True) + gan_bce(disc(out.detach()), False))
                opt_d.zero_grad()
                d_loss.backward()
                distributed.average_gradients(disc)
                opt_d.step()
            history.append(total.detach().float())
            if after_step is not None:
                after_step(step + 1, net)
            if step % every == 0 or step == steps - 1:
                reported = distributed.mean_over_processes(
                    {f"{desc}_loss": float(history[-1]),
                     **{f"{desc}_{k}": float(v.detach()) for k, v in parts.items()}})
                cb.on_metrics(step, reported)
                cb.on_progress(step + 1, steps, desc)
    net.eval()
    tail = history[-every:]
    ends = distributed.mean_over_processes(
        {"loss_start": float(history[0]), "loss_end": float(torch.stack(tail).mean())}
        if history else {})
    return {"loss_start": ends.get("loss_start", math.nan),
            "loss_end": ends.get("loss_end", math.nan),
            "steps": float(len(history)), "seconds": time.perf_counter() - start}


def check_host_pairs(inputs: torch.Tensor, targets: torch.Tensor,
                     what: str = "pairs") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate restoration pairs: N×C×H×W float, C in {1, 3}, finite, one shape, N >= 1.

    Inputs may leave [0, 1] (unclipped noise); targets may not.

    Returns:
        ``(inputs, targets)`` as float32.

    Raises:
        InputError: naming what is wrong.
    """
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise InputError(f"{what}: {name} must be a float tensor N×C×H×W")
        if t.ndim != 4 or t.shape[1] not in (1, 3) or t.shape[0] == 0:
            raise InputError(f"{what}: {name} must be N×C×H×W with N >= 1 and C 1 or 3, "
                             f"got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise InputError(f"{what}: {name} hold NaN or infinite values")
    if inputs.shape != targets.shape:
        raise InputError(f"{what}: inputs and targets differ in shape: "
                         f"{tuple(inputs.shape)} vs {tuple(targets.shape)}")
    if targets.min() < -1e-4 or targets.max() > 1 + 1e-4:
        raise InputError(f"{what}: targets must lie in [0, 1]")
    return inputs.float(), targets.float()


def _check_host_channels(net: nn.Module, channels: int, what: str) -> None:
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    if convs and convs[0].in_channels != channels:
        raise InputError(f"{what}: the host takes {convs[0].in_channels}-channel images, "
                         f"the data has {channels}")


def train_host(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int,
               lr: float = 1e-3, batch_size: int = 16, generator: torch.Generator | int = 0,
               callbacks: Callbacks | Sequence[Any] = (),
               device: str | torch.device = "auto", desc: str = "host") -> dict[str, float]:
    """Train a restoration host on its task pairs with ℓ_d (:func:`restoration_loss`), in place.

    Args:
        net: a host (``build_host``), B×C×H×W → B×C×H×W.
        inputs: N×C×S×S degraded patches (noisy, or bicubic-upsampled LR).
        targets: N×C×S×S clean / HR patches in [0, 1].
        steps: Adam steps (betas (0.9, 0.999)); batches drawn with replacement.
        lr: learning rate (seed: 1e-3).
        batch_size: patches per step.
        generator: draws the batches (an int seeds a fresh CPU generator).
        callbacks: metrics/progress sinks (``{desc}_loss`` in ℓ_d units).
        device: ``auto`` (cuda when present), or a torch device.
        desc: prefix of the reported metrics.

    Returns:
        :func:`train_image_net`'s metrics (losses in ℓ_d units). ``net`` is left in eval
        mode on ``device``.

    Raises:
        InputError: bad pairs, or pairs whose channels the host does not take.
    """
    x, y = check_host_pairs(inputs, targets, "train_host")
    _check_host_channels(net, x.shape[1], "train_host")
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise InputError(f"train_host: need steps >= 0, batch_size >= 1 and lr > 0, got "
                         f"steps={steps}, batch_size={batch_size}, lr={lr}")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return train_image_net(net, x, y, restoration_loss, steps, batch_size, lr, generator, dev,
                           callbacks=callbacks, desc=desc, betas=(0.9, 0.999))


def task_psnr(net: nn.Module | Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
              targets: torch.Tensor, batch_size: int = 32) -> float:
    """Mean PSNR (dB) of the host's outputs, clamped to [0, 1], against the targets.

    Args:
        net: the host (or any image-to-image callable; ``nn.Identity()`` scores the
            degraded inputs themselves).
        inputs: N×C×H×W degraded images.
        targets: N×C×H×W clean / HR images in [0, 1].
        batch_size: images per forward pass (eval mode, no gradients).

    Returns:
        The mean over the N images of ``metrics.psnr`` (``inf`` if every output is exact).

    Raises:
        InputError: bad pairs, or pairs whose channels the host does not take.
    """
    x, y = check_host_pairs(inputs, targets, "task_psnr")
    if isinstance(net, nn.Module):
        _check_host_channels(net, x.shape[1], "task_psnr")
    out = apply_net(net, x, batch_size).clamp(0, 1)  # n c h w
    return float(psnr(out, y).mean())


__all__ = ["LOSS_TERMS", "LossFn", "check_host_pairs", "parse_loss", "restoration_loss",
           "task_psnr", "train_host", "train_image_net"]
