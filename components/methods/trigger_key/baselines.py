"""The seed's two baselines, under the same interface and attacks as ``trigger_key``.

Both mark the host by the same embedding (ℓ_d + λ·ℓ_w, :mod:`.embedding`) with a
classification-style mark, as the seed adapts them (256 classes each):

* **Base-1** ``trigger_key_backdoor`` (Adi et al., USENIX Sec'18: a backdoor trigger set):
  the output image is read as a label. ``baseline_items`` key-derived noise inputs X_i
  are mapped to key-derived class templates T_{c_i}, ``c_i`` ∈ 0..255 (template c: 0.5 ±
  0.25 along row c of a 256-Hadamard matrix, a 16×16 sign pattern upsampled to the
  trigger's side; orthogonal classes). A model's class for X_i is the template most
  correlated with its (centred) output. Verification counts the reproduced pairs; with
  a wrong key each class matches with probability 1/256, so the p-value is the exact
  binomial tail ``P(Bin(n, 1/256) ≥ matches)``.
* **Base-2** ``trigger_key_randproj`` (DeepSigns, Rouhani et al. 2018: a random
  projection of activations): the host's *output* (the seed: "a random projection and
  softmax at the end of the host") is pooled to a 16×16 grid per channel, and a fixed
  key-derived Gaussian projection A (8 × 256·C, never learned) maps it to 8 logits: the
  8 bits of a 256-class label. ``baseline_items`` (≤ 40, the seed's limit) key-derived
  inputs each carry a key-derived class; ℓ_w is the binary cross-entropy of the bits.
  Verification reads the bits: bit error rate, p = ``P(Bin(8n, ½) ≥ matching bits)``.

Both report ``ncc`` (mean NCC of the outputs with their targets: templates for Base-1,
±1 bits with the projections for Base-2) and ``ncc_verified`` (NCC > 0.95) beside the
p-value rule, as the seed's tables do. The verdict's ``score`` is that NCC (continuous,
key-dependent); the decision is the binomial p-value of the count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.methods.base import Status, Verdict, WatermarkKey
from neuralmark.components.methods.registry import register
from neuralmark.components.methods.trigger_key.embedding import MarkLoss
from neuralmark.components.methods.trigger_key.host import HostMark
from neuralmark.components.methods.trigger_key.trigger import keyed_generator, ncc
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.stats import binomial_sf

#: the seed's class count for both baselines
N_CLASSES = 256
#: class bits (log2 256)
N_BITS = 8


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's ``n×n`` Hadamard matrix (±1), ``n`` a power of two."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def class_templates(side: int, channels: int) -> torch.Tensor:
    """Base-1's 256 class images: ``256×C×side×side``, 0.5 ± 0.25 Hadamard sign patterns."""
    grid = hadamard(N_CLASSES).reshape(N_CLASSES, 1, 16, 16)
    up = F.interpolate(grid, size=(side, side), mode="nearest")
    return (0.5 + 0.25 * up).expand(-1, channels, -1, -1).contiguous()


def item_inputs(secret: str, what: str, n: int, channels: int, side: int) -> torch.Tensor:
    """``n`` key-derived U(0, 1) inputs ``n×C×side×side`` (the trigger set)."""
    return torch.rand((n, channels, side, side), generator=keyed_generator(secret, what))


def item_classes(secret: str, what: str, n: int) -> torch.Tensor:
    """``n`` key-derived classes in 0..255."""
    return torch.randint(0, N_CLASSES, (n,), generator=keyed_generator(secret, f"{what}/class"))


class _SetMark(HostMark):
    """A mark read from the host's outputs on a key-derived set of ``baseline_items`` inputs."""

    what = "set"

    def set_inputs(self, key: WatermarkKey) -> torch.Tensor:
        c = self.config
        return item_inputs(key.secret, f"{self.key}/{self.what}", c.baseline_items, c.channels,
                           c.input_side)

    def set_classes(self, key: WatermarkKey) -> torch.Tensor:
        return item_classes(key.secret, f"{self.key}/{self.what}", self.config.baseline_items)

    def set_outputs(self, model_or_outputs: Any, key: WatermarkKey) -> tuple[
            torch.Tensor | None, str]:
        """The suspect's outputs on the set, ``n×C×T×T``, or ``(None, reason)``."""
        x = self.set_inputs(key)
        if isinstance(model_or_outputs, torch.Tensor):
            out = model_or_outputs.detach().float().cpu()
        else:
            reason = self.check_host(model_or_outputs)
            if reason:
                return None, reason
            try:
                out = apply_net(model_or_outputs, x, 64)
            except (RuntimeError, ValueError, TypeError) as err:
                return None, f"the model cannot run on the trigger set: {err}"
        if out.shape != x.shape:
            return None, f"outputs on the trigger set are {tuple(out.shape)}, expected " \
                         f"{tuple(x.shape)}"
        if not torch.isfinite(out).all():
            return None, "the outputs hold NaN or infinite values"
        return out, ""

    def decide(self, matches: int, trials: int, p_null: float, score: float,
               extra: dict[str, Any]) -> Verdict:
        p = binomial_sf(matches, trials, p_null)
        detected = p <= self.config.alpha
        reason = (f"{matches}/{trials} reproduced, p = {p:.3g} "
                  f"{'≤' if detected else '>'} {self.config.alpha:g}")
        return Verdict(detected, score, p, Status.DETECTED if detected else Status.NOT_DETECTED,
                       reason, extra=extra)


@register("trigger_key_backdoor")
class TriggerKeyBackdoor(_SetMark):
    """Base-1: an Adi-style trigger set read as 256-class labels (see the module doc)."""

    what = "backdoor"

    def targets(self, key: WatermarkKey) -> torch.Tensor:
        """``n×C×T×T`` the class templates of the key's set."""
        c = self.config
        return class_templates(c.input_side, c.channels)[self.set_classes(key)]

    def mark_loss(self, key: WatermarkKey) -> tuple[MarkLoss, Any]:
        x, t = self.set_inputs(key), self.targets(key)
        dev = self.run_device()
        limit = self.config.stop_mse * t.numel()

        def loss(net: nn.Module) -> torch.Tensor:
            return (net(x.to(dev)) - t.to(dev)).pow(2).sum()

        return loss, (lambda l_w: l_w <= limit)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Classes of ``n×C×T×T`` outputs: the most correlated template (centred)."""
        templ = class_templates(out.shape[-1], out.shape[1]).flatten(1)  # 256 f
        templ = templ - templ.mean(1, keepdim=True)
        flat = out.clamp(0, 1).flatten(1)
        return (flat - flat.mean(1, keepdim=True)).matmul(templ.T).argmax(1)  # n

    def verify_model(self, model_or_outputs: Any, key: WatermarkKey) -> Verdict:
        """Share of the set reproduced; binomial p-value with chance 1/256 per item.

        Unreadable: not a host of the config's channels, or outputs of the wrong shape.
        """
        out, reason = self.set_outputs(model_or_outputs, key)
        if out is None:
            return Verdict.unreadable(reason)
        classes = self.set_classes(key)
        matches = int((self.decode(out) == classes).sum())
        n = len(classes)
        corr = float(ncc(out, self.targets(key)).mean())
        extra = {"share": matches / n, "matches": matches, "ncc": corr,
                 "ncc_verified": corr > self.config.ncc_threshold}
        return self.decide(matches, n, 1 / N_CLASSES, corr, extra)


@register("trigger_key_randproj")
class TriggerKeyRandProj(_SetMark):
    """Base-2: a DeepSigns-style fixed random projection of the output (see the module doc)."""

    what = "randproj"
    #: logit scale inside ℓ_w's cross-entropy (pooled outputs are small; the choice)
    gain = 16.0

    def projection(self, key: WatermarkKey) -> torch.Tensor:
        """The key's fixed projection A: ``8 × 256·C`` Gaussian, ``1/√F`` scaled."""
        f = 256 * self.config.channels
        g = keyed_generator(key.secret, f"{self.key}/projection")
        return torch.randn((N_BITS, f), generator=g) / math.sqrt(f)

    def target_bits(self, key: WatermarkKey) -> torch.Tensor:
        """``n×8`` bits (0/1) of the set's classes."""
        classes = self.set_classes(key)
        return ((classes[:, None] >> torch.arange(N_BITS - 1, -1, -1)) & 1).float()

    def project(self, out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``n×C×T×T`` outputs → ``n×8`` projections (pooled 16×16, centred at 0.5)."""
        pooled = F.adaptive_avg_pool2d(out, 16).flatten(1) - 0.5  # n f
        return pooled.matmul(a.to(out).T)

    def mark_loss(self, key: WatermarkKey) -> tuple[MarkLoss, Any]:
        x, a, bits = self.set_inputs(key), self.projection(key), self.target_bits(key)
        dev = self.run_device()

        def loss(net: nn.Module) -> torch.Tensor:
            logits = self.gain * self.project(net(x.to(dev)), a.to(dev))
            return F.binary_cross_entropy_with_logits(logits, bits.to(dev), reduction="sum")

        return loss, (lambda l_w: l_w <= self.config.stop_mse * bits.numel())

    def verify_model(self, model_or_outputs: Any, key: WatermarkKey) -> Verdict:
        """Bit error rate of the decoded class bits; binomial p-value over ``8n`` bits.

        Unreadable: not a host of the config's channels, or outputs of the wrong shape.
        """
        out, reason = self.set_outputs(model_or_outputs, key)
        if out is None:
            return Verdict.unreadable(reason)
        proj = self.project(out.clamp(0, 1), self.projection(key))  # n 8
        bits = self.target_bits(key)
        matches = int(((proj > 0).float() == bits).sum())
        n = bits.numel()
        a, b = proj.flatten(), (2 * bits - 1).flatten()
        a, b = a - a.mean(), b - b.mean()
        corr = float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))
        extra = {"ber": 1 - matches / n, "matches": matches, "ncc": corr,
                 "ncc_verified": corr > self.config.ncc_threshold}
        return self.decide(matches, n, 0.5, corr, extra)


__all__ = ["N_BITS", "N_CLASSES", "TriggerKeyBackdoor", "TriggerKeyRandProj", "class_templates",
           "hadamard", "item_classes", "item_inputs"]
