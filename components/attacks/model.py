"""Model attacks on watermarked image-to-image models: prune, fine-tune, distil, overwrite.

What an attacker who holds (or can query) a marked host does to remove its mark
(Quan et al., TNNLS'21, seed 002: compression, fine-tuning on original and new data,
overwriting; plus distillation, the query-only attacker). Every attack takes an
``nn.Module`` and returns a **new** module (a deep copy; the input is never modified):

* :func:`prune_magnitude` — per layer, the ``rate`` fraction of smallest-magnitude
  weights set to zero (the mask of ``torch.nn.utils.prune.L1Unstructured``, applied in
  place: no reparametrisation or hook is left);
  :func:`layer_sparsity` reports the zero share of every layer.
* :func:`fine_tune` — more training on (inputs, targets): the original task data or new
  data (``components/data/restoration.new_data_patches``), with the host's loss ℓ_d.
* :func:`distill` — a student (any host) trained on the teacher's outputs, clamped to
  [0, 1] as a service returns images, for the attacker's query inputs.
* :func:`overwrite` — a second mark: ``embed(copy) -> marked copy``, the callable the
  method supplies (e.g. ``lambda m: method.embed_model(m, second_key)``).

The keyless removal (fine-tuning on random noise images beside the task data) is in
``attacks/noise_inputs.py``. The same attacks as data — by name, with their strength
knob, one tidy row per (attack, strength) — are in ``attacks/model_registry.py`` (as
``image.py`` and ``registry.py`` for the image attacks).

Shapes: hosts map ``B×C×H×W`` → ``B×C×H×W``; data tensors are ``N×C×H×W``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.nets.training import train_host

Embed = Callable[[nn.Module], nn.Module]
#: layers whose ``weight`` pruning thins (biases and normalisation layers are kept)
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                         nn.ConvTranspose1d, nn.ConvTranspose2d,
                                         nn.ConvTranspose3d)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every conv / transposed conv / linear layer, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exactly-zero weights in every prunable layer: ``{layer name: share}``."""
    return {name: float((m.weight == 0).sum()) / m.weight.numel()
            for name, m in prunable_layers(model)}


def prune_magnitude(model: nn.Module, rate: float,
                    callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
    """Magnitude pruning per layer: the seed's "sort the weights by magnitude, zero p%".

    Args:
        model: the host (not modified).
        rate: share of each layer's weights to zero, in [0, 1]: ``round(rate · numel)``
            weights of smallest ``|w|`` per layer (ties: torch's ``topk`` order).
        callbacks: ``prune_sparsity`` (overall share of zero weights) and progress.

    Returns:
        A pruned deep copy: the same parameters, with zeros (no ``weight_orig``, masks or
        hooks).

    Raises:
        InputError: ``rate`` outside [0, 1], or a model with no prunable layer.
    """
    if not 0 <= rate <= 1:
        raise InputError(f"pruning rate must be in [0, 1] (the seed's grid: 0.1-0.9), got {rate}")
    pruned = copy.deepcopy(model)
    layers = prunable_layers(pruned)
    if not layers:
        raise InputError(f"{type(model).__name__} has no conv or linear layer to prune")
    cb = Callbacks.of(callbacks)
    method = prune.L1Unstructured(amount=float(rate))
    for i, (_, layer) in enumerate(layers):
        with torch.no_grad():
            w = layer.weight
            w.mul_(method.compute_mask(w, default_mask=torch.ones_like(w)))
        cb.on_progress(i + 1, len(layers), "prune")
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    cb.on_metrics(0, {"prune_rate": float(rate),
                      "prune_sparsity": zeros / sum(m.weight.numel() for _, m in layers)})
    return pruned


def steps_for(steps: int | None, epochs: float | None, n: int, batch_size: int) -> int:
    """Optimiser steps of a training attack: ``steps``, or ``⌈epochs · n / batch_size⌉``.

    Args:
        steps: a step count, or ``None`` to count ``epochs``.
        epochs: passes over ``n`` pairs (batches drawn with replacement), or ``None``.
        n: pairs in the attack's data.
        batch_size: pairs per step.

    Raises:
        InputError: both or neither of ``steps`` and ``epochs``, or a negative one.
    """
    if (steps is None) == (epochs is None):
        raise InputError("give either steps or epochs (one epoch = ⌈N / batch_size⌉ steps)")
    if steps is not None:
        if steps < 0:
            raise InputError(f"steps must be >= 0, got {steps}")
        return int(steps)
    if epochs is None or epochs < 0:
        raise InputError(f"epochs must be >= 0, got {epochs}")
    return math.ceil(epochs * n / batch_size)


def fine_tune(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              steps: int | None = None, epochs: float | None = None, lr: float = 1e-3,
              batch_size: int = 16, generator: torch.Generator | int = 0,
              callbacks: Callbacks | Sequence[Any] = (),
              device: str | torch.device = "auto", desc: str = "fine_tune") -> nn.Module:
    """Fine-tuning attack: train a copy further on (inputs, targets) with the task loss ℓ_d.

    Args:
        model: the host (not modified).
        inputs: N×C×S×S degraded patches (original task data, or new data made into pairs).
        targets: N×C×S×S clean / HR patches in [0, 1].
        steps: Adam steps; or ``epochs`` (one epoch = ⌈N / batch_size⌉ steps, batches drawn
            with replacement) — exactly one of the two.
        epochs: see ``steps`` (the seed's unit: up to 100 epochs).
        lr: Adam learning rate (the seed gives none for the attacker; default its training 1e-3).
        batch_size: patches per step.
        generator: draws the batches (an int seeds a fresh CPU generator).
        callbacks: ``{desc}_loss`` (ℓ_d) and progress.
        device: ``auto`` or a torch device; the copy is returned there, in eval mode.
        desc: prefix of the reported metrics.

    Returns:
        The fine-tuned copy.

    Raises:
        InputError: bad pairs, channels the host does not take, bad schedule.
    """
    n_steps = steps_for(steps, epochs, int(inputs.shape[0]), batch_size)
    tuned = copy.deepcopy(model)
    train_host(tuned, inputs, targets, n_steps, lr, batch_size, generator, callbacks, device,
               desc)
    return tuned


def distill(teacher: nn.Module, student: nn.Module, inputs: torch.Tensor,
            steps: int | None = None, epochs: float | None = None, lr: float = 1e-3,
            batch_size: int = 16, generator: torch.Generator | int = 0,
            callbacks: Callbacks | Sequence[Any] = (),
            device: str | torch.device = "auto", desc: str = "distill") -> nn.Module:
    """Distillation attack: a copy of ``student`` trained to mimic ``teacher`` on ``inputs``.

    The attacker only queries: the targets are ``teacher(inputs)`` clamped to [0, 1] (the
    images a service returns), the loss is ℓ_d.

    Args:
        teacher: the marked host (not modified).
        student: a fresh (or pre-trained) host of any architecture (not modified).
        inputs: N×C×S×S query inputs (e.g. noisy patches).
        steps, epochs, lr, batch_size, generator, callbacks, device, desc: as
            :func:`fine_tune`.

    Returns:
        The trained copy of ``student``.

    Raises:
        InputError: bad inputs, channels a host does not take, bad schedule.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or inputs.shape[0] == 0:
        raise InputError("distill: inputs must be a non-empty N×C×H×W tensor")
    n_steps = steps_for(steps, epochs, int(inputs.shape[0]), batch_size)
    targets = apply_net(teacher, inputs.float(), batch_size * 4).clamp(0, 1)  # n c s s
    pupil = copy.deepcopy(student)
    train_host(pupil, inputs, targets, n_steps, lr, batch_size, generator, callbacks, device,
               desc)
    return pupil


def overwrite(model: nn.Module, embed: Embed,
              callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
    """Overwriting attack: the attacker embeds a second mark (their own key) in a copy.

    Args:
        model: the marked host (not modified).
        embed: ``embed(copy) -> marked model``, supplied by the method (its embedding with
            the attacker's key); it receives a deep copy, so it may train it in place.
        callbacks: progress.

    Returns:
        What ``embed`` returned.

    Raises:
        InputError: ``embed`` is not callable, returns no ``nn.Module``, or returns the
            input model itself.
    """
    if not callable(embed):
        raise InputError(f"overwrite needs an embed callable, got {type(embed).__name__}")
    marked = embed(copy.deepcopy(model))
    if not isinstance(marked, nn.Module):
        raise InputError(f"overwrite: embed returned {type(marked).__name__}, not an nn.Module")
    if marked is model:
        raise InputError("overwrite: embed returned the input model, not the copy it was given")
    Callbacks.of(callbacks).on_progress(1, 1, "overwrite")
    return marked


__all__ = ["PRUNABLE", "Embed", "distill", "fine_tune", "layer_sparsity", "overwrite",
           "prunable_layers", "prune_magnitude", "steps_for"]
