"""The keyless removal of a trigger mark: fine-tuning on random noise images (issue #13, tk11).

A trigger watermark (``trigger_key``, Adi-style backdoor sets) lives in the host's response
to inputs that natural images never are: random noise K. An attacker needs no key to reach
it: the key *families* are public code, so the attacker draws noise of every kind the
families span (white, narrow-band at any frequency, any small filter of white noise) and
teaches the stolen host the task's own answer on it, while ℓ_d on the host's task data
keeps its quality. The noise images are made into task pairs by the host's degradation
(``AttackerData.degrade``: noise + σ for denoising, bicubic ↓↑ for SR), so the target of a
noise input is the clean noise itself — the answer of a host that was never taught a
special response to noise. (The host's *own* outputs on noise would not do: on noise near
a trigger they are the mark.)

* :func:`noise_images` — ``n`` noise images cycling through :data:`NOISE_KINDS`, every
  draw from one generator.
* :func:`fine_tune_noise` — :func:`attacks.model.fine_tune` on the union of the task pairs
  and as many noise pairs (each batch drawn with replacement from the union: half noise on
  average); its budget is counted in epochs of the *task* data, so ``fine_tune_noise_1``
  takes as many steps as ``fine_tune_original_1``.

Written here rather than with kornia's noise augmentations: those perturb an image; this
makes inputs that are nothing but noise, with a controlled spectrum (torch.fft).

Shapes: images ``N×C×S×S`` float32 in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.attacks.model import fine_tune, steps_for
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks
from neuralmark.components.noise import band_noise

#: ``degrade(clean, generator) -> (inputs, targets)``: the host's task pairs of clean images
Degrade = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
#: the kinds of noise, in the order :func:`noise_images` cycles through them: ``white``
#: U(0, 1) per pixel (the ``filter`` key family's K); ``band`` narrow-band noise at a random
#: frequency |ω| ∈ [0.05, 0.5] cycle/px, any orientation, spectral σ ∈ [0.02, 0.08] (spans
#: the ``band`` family's 0.15–0.45, σ 0.03); ``filtered`` white noise through a random 3×3
#: kernel (any small linear filter's colour)
NOISE_KINDS: tuple[str, ...] = ("white", "band", "filtered")
#: mean and spread of the ``band`` / ``filtered`` images before clamping to [0, 1]
_MEAN, _SPREAD = 0.5, 0.2


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel: zero mean, unit spread, then ``0.5 ± 0.2``, clamped."""
    z = x - x.mean(dim=(-2, -1), keepdim=True)
    z = z / z.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return (_MEAN + _SPREAD * z).clamp(0, 1)


def _band(n: int, c: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Narrow-band noise at a random frequency, orientation and spectral width per image
    (:func:`components.noise.band_noise`, the generator of the ``band`` key family)."""
    radius = 0.05 + 0.45 * torch.rand(n, generator=g)
    angle = math.pi * torch.rand(n, generator=g)
    width = 0.02 + 0.06 * torch.rand(n, generator=g)
    freq = torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1)  # n 2
    return band_noise(freq, size, c, g, width=width, amplitude=_SPREAD)  # n c s s


def _filtered(n: int, c: int, size: int, g: torch.Generator) -> torch.Tensor:
    """White U(0, 1) noise through a random N(0, 1) 3×3 kernel per image (reflect padding)."""
    u = torch.rand(n * c, 1, size, size, generator=g)
    kernels = torch.randn(n, 1, 3, 3, generator=g).repeat_interleave(c, dim=0)  # nc 1 3 3
    padded = F.pad(u, (1, 1, 1, 1), mode="reflect").view(1, n * c, size + 2, size + 2)
    out = F.conv2d(padded, kernels, groups=n * c)  # 1 nc s s
    return _standardised(out.view(n, c, size, size))


def noise_images(n: int, channels: int, size: int, generator: torch.Generator,
                 kinds: Sequence[str] = NOISE_KINDS) -> torch.Tensor:
    """``n`` random noise images, image ``i`` of kind ``kinds[i % len(kinds)]``.

    Args:
        n: how many images.
        channels: 1 (grey) or 3 (RGB; each channel its own draw).
        size: side S.
        generator: every draw (CPU); the same state gives the same images.
        kinds: a subset of :data:`NOISE_KINDS`.

    Returns:
        ``n×channels×size×size`` float32 in [0, 1].

    Raises:
        InputError: ``n`` or ``size`` below 1 (``size`` below 3 for ``filtered``), channels
            not 1 or 3, an unknown or empty kind list.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if not kinds or unknown:
        raise InputError(f"noise_images: kinds must be a non-empty subset of "
                         f"{list(NOISE_KINDS)}, got {list(kinds)}")
    if n < 1 or size < (3 if "filtered" in kinds else 1):
        raise InputError(f"noise_images: need n >= 1 and a size of at least 3 pixels, got "
                         f"n={n}, size={size}")
    if channels not in (1, 3):
        raise InputError(f"noise_images: channels must be 1 or 3, got {channels}")
    out = torch.empty(n, channels, size, size)
    for j, kind in enumerate(kinds):
        idx = torch.arange(j, n, len(kinds))
        if not len(idx):
            continue
        if kind == "white":
            out[idx] = torch.rand(len(idx), channels, size, size, generator=generator)
        elif kind == "band":
            out[idx] = _band(len(idx), channels, size, generator)
        else:
            out[idx] = _filtered(len(idx), channels, size, generator)
    return out


def fine_tune_noise(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    degrade: Degrade, steps: int | None = None, epochs: float | None = None,
                    lr: float = 1e-3, batch_size: int = 16, generator: int = 0,
                    n_noise: int | None = None, kinds: Sequence[str] = NOISE_KINDS,
                    callbacks: Callbacks | Sequence[Any] = (),
                    device: str | torch.device = "auto",
                    desc: str = "fine_tune_noise") -> nn.Module:
    """Keyless removal: fine-tune a copy on its task pairs plus task pairs of noise images.

    Args:
        model: the marked host (not modified).
        inputs: N×C×S×S degraded task patches (the host's own data).
        targets: N×C×S×S clean / HR patches in [0, 1].
        degrade: ``degrade(clean, generator) -> (inputs, targets)``, the host's task pairs
            (``data/restoration.task_pairs`` with the host's σ / scale).
        steps: Adam steps; or ``epochs`` of the task data (⌈epochs · N / batch_size⌉ steps)
            — exactly one of the two.
        epochs: see ``steps``.
        lr: Adam learning rate (the fine-tuning attacks' 1e-3).
        batch_size: patches per step, drawn with replacement from the N + n_noise pairs.
        generator: an int seed: the noise images and their degradation draw from
            ``seed + 1``, the batches from ``seed`` (one seed replays the whole run).
        n_noise: noise pairs (``None``: N, half of the union).
        kinds: the noise kinds (:data:`NOISE_KINDS`).
        callbacks, device, desc: as :func:`attacks.model.fine_tune`.

    Returns:
        The fine-tuned copy (same architecture), in eval mode on ``device``.

    Raises:
        InputError: ``degrade`` not callable or returning pairs of another shape, a bad
            schedule or noise count, what :func:`noise_images` and ``fine_tune`` raise.
    """
    if not callable(degrade):
        raise InputError(f"fine_tune_noise needs a degrade callable (the host's task pairs), "
                         f"got {type(degrade).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or inputs.shape[0] == 0:
        raise InputError("fine_tune_noise: inputs must be a non-empty N×C×S×S tensor")
    if not isinstance(generator, int) or isinstance(generator, bool):
        raise InputError(f"fine_tune_noise: generator must be an int seed, got {generator!r}")
    n, c, size = int(inputs.shape[0]), int(inputs.shape[1]), int(targets.shape[-1])
    count = n if n_noise is None else int(n_noise)
    if count < 1:
        raise InputError(f"fine_tune_noise: n_noise must be >= 1, got {n_noise}")
    n_steps = steps_for(steps, epochs, n, batch_size)
    g = torch.Generator().manual_seed(generator + 1)
    nx, ny = degrade(noise_images(count, c, size, g, kinds), g)  # count c s s each
    if tuple(nx.shape[1:]) != tuple(inputs.shape[1:]) or tuple(ny.shape[1:]) != tuple(
            targets.shape[1:]):
        raise InputError(f"fine_tune_noise: degrade made pairs of {tuple(nx.shape[1:])} → "
                         f"{tuple(ny.shape[1:])}, the task pairs are {tuple(inputs.shape[1:])}"
                         f" → {tuple(targets.shape[1:])}")
    x = torch.cat([inputs.float().cpu(), nx.float().cpu()])  # (n + count) c s s
    y = torch.cat([targets.float().cpu(), ny.float().cpu()])
    return fine_tune(model, x, y, steps=n_steps, lr=lr, batch_size=batch_size,
                     generator=generator, callbacks=callbacks, device=device, desc=desc)


__all__ = ["NOISE_KINDS", "Degrade", "fine_tune_noise", "noise_images"]
