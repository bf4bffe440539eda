"""The task classifiers F and F′: the label-free rotation task, training and accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.methods.base import InputError


def task_dataset(images: torch.Tensor, labels: torch.Tensor | None,
                 task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification data F learns: ``(N′×3×S×S images, N′ int64 labels)``.

    ``rotation``: every image in its 4 rotations (k·90°), labelled k, so no labels are
    needed; the mark is stamped on the rotated images (it stays upright), as an owner
    stamps the images of the dataset they share. ``labels``: the images and their labels.

    Raises:
        InputError: ``labels`` task without labels, or a label count that does not match.
    """
    if task == "rotation":
        rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
        return rotated, torch.arange(4).repeat_interleave(images.shape[0])
    if labels is None:
        raise InputError("visible_gan task 'labels' needs class labels (data['train_labels'] "
                         "and data['val_labels']); use task 'rotation' for unlabelled images")
    if labels.shape[0] != images.shape[0]:
        raise InputError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels.long()


def train_classifier(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
                     batch_size: int, lr: float, generator: torch.Generator,
                     device: torch.device, flips: bool = False) -> float:
    """Train ``net`` (Adam, cross-entropy) on ``images`` (N×3×S×S) / ``labels`` (N); last loss.

    ``flips``: random horizontal flips (not for the rotation task: a flip turns 90° into 270°).
    """
    net.to(device).train()
    net.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    last = float("nan")
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        xb, yb = images[idx].to(device), labels[idx].to(device)
        if flips:
            flip = torch.rand(batch_size, generator=generator) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1).to(device), xb.flip(3), xb)
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
    net.eval()
    return last


@torch.no_grad()
def correct(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Per image, whether ``net``'s top-1 class on ``images`` (N×3×S×S) is ``labels`` (N):
    N bools on the CPU (paired comparisons of two classifiers need them per image)."""
    net.eval()
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    return torch.cat([net(images[i:i + batch_size].to(device)).argmax(1).cpu()
                      == labels[i:i + batch_size].cpu()
                      for i in range(0, images.shape[0], batch_size)])


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``net`` on ``images`` (N×3×S×S) against ``labels`` (N)."""
    hits = int(correct(net, images, labels, device, batch_size).sum())
    return hits / max(1, images.shape[0])
