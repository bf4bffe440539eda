"""``spread_spectrum``: the traditional 64-bit baseline of seed 001 (its "T-*" rows).

Seed 001 compares its deep logo watermark with "traditional spatial invisible
watermarking algorithms" hiding 64 bits (Kutter 1999; Voloshynovskiy et al.
2000) in the outputs of the protected model. This module is that baseline, in
its classic CDMA form:

* **Payload**: 64 bits from ``neuralmark.components.payload.PayloadCodec`` (message ID +
  BCH parity, scrambled by an HMAC mask of the secret), so the p-value is exact:
  with the wrong key or no mark, every bit matches with probability ½.
* **Carriers**: one key-seeded ±1 pattern per bit (HMAC-SHA256 of the secret →
  torch generator), drawn on a grid of ``chip``×``chip`` px cells at the
  working size: ``chip = 2`` moves the energy from the highest frequencies
  (which a restoration network smooths first) towards the mid band (what each
  chip decodes on the sample photos: README, "Measured figures outside the
  model cards").
* **Embedding** (pixel domain, luminance): ``x′ = clamp(x + α · Σ_k s_k P_k / √K)``
  with ``s_k = ±1`` the bits, the same offset on R, G and B, and
  ``α = 10^(−psnr_target/20)`` so the mark costs about ``psnr_target`` dB
  before clipping. Computed at ``working_size``; the residual is upsampled
  for other sizes.
* **Decoding**: gray = channel mean at the working size; a high-pass (``gray −
  Gaussian blur σ = highpass_sigma``) removes most of the image (a Wiener-like
  pre-filter); bit ``k`` = sign of the correlation with the equally filtered
  ``P_k`` (matched filter).
* **Decision**: hard bits → ``PayloadCodec.read`` → exact binomial p-value;
  ``detected`` iff ``p ≤ alpha`` (``detection_alpha``).

Nothing is learned: ``fit`` only measures (PSNR, bit accuracy on marked and
clean data) and ``training_loss`` is the differentiable decoding loss of a
marked batch with respect to the *image* (what an adaptive attacker descends).
``verify_model`` decides over a batch of a suspect model's outputs like
``output_mark``'s: share of detected outputs, binomial p-value of that count
with the per-image false-positive bound ``alpha``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from neuralmark.components.methods.base import (
    Callbacks,
    InputError,
    MethodConfig,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
    resize_square,
)
from neuralmark.components.methods.registry import register
from neuralmark.components.metrics import psnr
from neuralmark.components.payload import PayloadCodec
from neuralmark.components.stats import binomial_sf

_DOMAIN = "neuralmark/spread_spectrum"


class SpreadSpectrumConfig(MethodConfig):
    """Settings of the spread-spectrum baseline (nothing here is learned)."""

    method: Literal["spread_spectrum"] = "spread_spectrum"
    n_bits: int = Field(64, ge=8)
    message_bits: int = 8
    bch_t: int = 2
    #: p-value level of ``verify`` (the method's ``detection_alpha``)
    alpha: float = Field(1e-6, gt=0, lt=1)
    working_size: int = Field(256, ge=32)
    #: pattern cell side in px at the working size (1: white noise, 2+: mid frequencies)
    chip: int = Field(2, ge=1)
    psnr_target: float = Field(40.0, gt=10)
    highpass_sigma: float = Field(1.5, gt=0)
    # verify_model over a batch of outputs
    model_min_share: float = Field(0.5, gt=0, le=1)
    model_alpha: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)


def carrier_patterns(secret: str, n_bits: int, size: int, chip: int) -> torch.Tensor:
    """Key-seeded ±1 carriers, one per bit.

    Args:
        secret: the key's secret.
        n_bits: number of carriers K.
        size: side S of each pattern.
        chip: cell side in px (patterns are constant on chip×chip cells).

    Returns:
        K×S×S float32 in {−1, +1}.
    """
    digest = hmac.new(secret.encode(), f"{_DOMAIN}/carriers".encode(), hashlib.sha256).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & ((1 << 63) - 1))
    cells = -(-size // chip)
    grid = torch.randint(0, 2, (n_bits, cells, cells), generator=g).float() * 2 - 1
    return grid.repeat_interleave(chip, 1).repeat_interleave(chip, 2)[:, :size, :size]


@register("spread_spectrum")
class SpreadSpectrum(WatermarkMethod):
    """Classic CDMA spread-spectrum watermark. See the module docstring.

    Detection contract: keyed (the carriers come from the key, so a wrong key decodes
    coin flips), level ``config.alpha``, no fast null p-values (decoding needs the key's
    own carriers: one ``verify`` per key is the fast way).
    """

    Config = SpreadSpectrumConfig
    config: SpreadSpectrumConfig
    kind = "content"
    min_size = 32
    smoke_config = {"working_size": 64}

    def __init__(self, config: SpreadSpectrumConfig) -> None:
        super().__init__(config)
        self.codec = PayloadCodec(config.n_bits, config.message_bits, config.bch_t,
                                  domain=_DOMAIN)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {}

    # -- carriers ---------------------------------------------------------------
    def _highpass(self, x: torch.Tensor) -> torch.Tensor:
        """``x − GaussianBlur(x)`` on B×C×H×W."""
        s = self.config.highpass_sigma
        k = 2 * math.ceil(3 * s) + 1
        return x - kornia.filters.gaussian_blur2d(x, (k, k), (s, s), border_type="reflect")

    def carriers(self, key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(K×S×S ±1 carriers, K×S×S high-passed carriers) of ``key`` (cached)."""
        if key.secret not in self._cache:
            c = self.config
            p = carrier_patterns(key.secret, c.n_bits, c.working_size, c.chip)
            self._cache = {key.secret: (p, self._highpass(p[:, None])[:, 0])}
        return self._cache[key.secret]

    def _working(self, x: torch.Tensor) -> torch.Tensor:
        return resize_square(x.float(), self.config.working_size)

    @property
    def strength(self) -> float:
        """α: per-pixel RMS of the mark, ``10^(−psnr_target/20)``."""
        return 10 ** (-self.config.psnr_target / 20)

    # -- embedding / decoding -----------------------------------------------------------
    def residual(self, key: WatermarkKey) -> torch.Tensor:
        """The mark of ``key``: 1×1×S×S (same offset on every channel), RMS ≈ α."""
        bits = torch.from_numpy(self.codec.encode(key).astype(np.float32))
        p, _ = self.carriers(key)
        w = torch.einsum("k,khw->hw", 2 * bits - 1, p) / math.sqrt(p.shape[0])
        return (self.strength * w)[None, None]

    def _residual_like(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """The mark at the size of ``images`` (1×1×H×W, upsampled bilinearly if needed)."""
        r = self.residual(key).to(images.device)
        if tuple(images.shape[-2:]) != tuple(r.shape[-2:]):
            r = F.interpolate(r, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return r

    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """Add the keyed mark: B×3×H×W in [0,1] (H, W ≥ 32) → same shape, in [0,1]."""
        check_images(images, self.min_size)
        return (images.float() + self._residual_like(images, key)).clamp(0, 1)

    def correlations(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """Matched-filter outputs: B×3×H×W → B×K (differentiable; sign = decoded bit)."""
        gray = self._working(images).mean(dim=1, keepdim=True)                 # b 1 s s
        r = self._highpass(gray)[:, 0]                                           # b s s
        _, pf = self.carriers(key)
        pf = pf.to(r.device)
        return torch.einsum("bhw,khw->bk", r, pf) / pf.flatten(1).norm(dim=1)  # b k

    @torch.no_grad()
    def decode_bits(self, images: torch.Tensor, key: WatermarkKey) -> np.ndarray:
        """Hard bits, B×K uint8."""
        out = [(self.correlations(images[i:i + self.config.batch_size], key) > 0).cpu().numpy()
               for i in range(0, images.shape[0], self.config.batch_size)]
        return np.concatenate(out).astype(np.uint8)

    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        """One ``Verdict`` per image; exact binomial p-value; detected iff p ≤ alpha."""
        check_images(images, self.min_size)
        verdicts = []
        for bits in self.decode_bits(images, key):
            d = self.codec.read(bits, key)
            detected = d.p_value <= self.detection_alpha
            mode = "claimed message" if d.claimed else (
                f"best of {2 ** self.config.message_bits} messages" if self.config.message_bits
                else "signature")
            reason = (f"{d.matches}/{d.n_bits} bits match the keyed word ({mode}); "
                      f"p={d.p_value:.3g} {'≤' if detected else '>'} "
                      f"alpha={self.detection_alpha:g}")
            verdicts.append(Verdict(
                detected=detected, score=d.bit_accuracy, p_value=d.p_value,
                status=Status.DETECTED if detected else Status.NOT_DETECTED, reason=reason,
                bits=bits.astype(int).tolist(),
                payload=d.message if detected and self.config.message_bits else None,
                bit_accuracy=d.bit_accuracy,
                extra={"bch_corrected": d.corrected, "claimed": d.claimed}))
        return verdicts

    def verify_model(self, model_or_outputs: Any, key: WatermarkKey,
                     inputs: torch.Tensor | None = None) -> Verdict:
        """Decide over a batch of a suspect model's outputs.

        Args:
            model_or_outputs: a model (queried on ``inputs``) or a B×3×H×W
                tensor of its outputs.
            key: the owner's key.
            inputs: domain-A query images when a model is given.

        Returns:
            ``score`` = share of outputs detected (per-image p ≤ alpha);
            ``p_value`` = P(at least that many | unmarked), binomial with the
            per-image bound ``alpha``; ``extra`` = per-image bit accuracies.
        """
        if isinstance(model_or_outputs, nn.Module):
            if inputs is None:
                raise InputError("verify_model needs inputs= (domain-A images) to query a model")
            check_images(inputs, self.min_size)
            with torch.no_grad():
                model_or_outputs.eval()
                outs = torch.cat([model_or_outputs(inputs[i:i + self.config.batch_size])
                                  for i in range(0, inputs.shape[0], self.config.batch_size)])
            outs = outs.clamp(0, 1)
        elif isinstance(model_or_outputs, torch.Tensor):
            outs = model_or_outputs
        else:
            raise InputError("verify_model takes a model (with inputs=) or a B×3×H×W tensor of "
                             f"its outputs; got {type(model_or_outputs).__name__}")
        verdicts = self.verify(outs, key)
        n, k = len(verdicts), sum(v.detected for v in verdicts)
        share = k / n
        p = binomial_sf(k, n, self.detection_alpha)
        detected = share >= self.config.model_min_share and p <= self.config.model_alpha
        accs = [float(v.bit_accuracy or 0.0) for v in verdicts]
        return Verdict(
            detected=detected, score=share, p_value=p,
            status=Status.DETECTED if detected else Status.NOT_DETECTED,
            reason=f"{k}/{n} outputs carry the keyed word (p ≤ {self.detection_alpha:g} each); "
                   f"p={p:.3g} for that count on an unmarked model",
            extra={"success_rate": share, "n_outputs": n, "n_marked": k,
                   "bit_accuracy": accs, "bit_accuracy_mean": float(np.mean(accs))})

    # -- "training" ----------------------------------------------------------------
    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """Decoding loss of a marked batch w.r.t. the image (nothing here is learned).

        BCE of the matched-filter outputs (scaled to unit noise) against the keyed
        bits; its gradient with respect to ``images`` is what an adaptive
        attacker would ascend to erase the mark.
        """
        key = WatermarkKey("training-loss", 0)
        x = images.detach().float().clone().requires_grad_(True)
        marked = x + self._residual_like(x, key)
        bits = torch.from_numpy(self.codec.encode(key).astype(np.float32)).to(x.device)
        logits = self.correlations(marked, key) / (self.strength + 1e-8)
        return F.binary_cross_entropy_with_logits(logits, bits.expand_as(logits))

    def fit(self, data: Mapping[str, Any] | torch.Tensor,
            callbacks: Callbacks | Sequence[Any] = (),
            key: WatermarkKey | None = None) -> dict[str, float]:
        """Nothing to learn: measure the baseline on ``data`` and report it.

        Args:
            data: ``{"train": images or (A, B), "val": ...}`` (the ``val`` part,
                else ``train``; for pairs the B side, the outputs to protect).
            callbacks: metrics sink.
            key: evaluation key (default ``WatermarkKey("neuralmark-eval", 0)``).

        Returns:
            ``psnr``, ``bit_accuracy_marked``, ``detection_rate``,
            ``false_positive_rate`` (clean images, same key).
        """
        cbs = Callbacks.of(callbacks)
        if isinstance(data, torch.Tensor):
            images = data
        elif isinstance(data, Mapping) and ("val" in data or "train" in data):
            images = data.get("val") if data.get("val") is not None else data["train"]
            if isinstance(images, (tuple, list)):
                images = images[1]
        else:
            raise InputError("spread_spectrum.fit needs images or {'train': ..., 'val': ...}")
        check_images(images, self.min_size)
        key = key or WatermarkKey("neuralmark-eval", 0)
        marked = self.embed(images, key)
        vm, vc = self.verify(marked, key), self.verify(images, key)
        metrics = {
            "psnr": float(psnr(marked, images).clamp(max=100).mean()),
            "bit_accuracy_marked": float(np.mean([v.bit_accuracy for v in vm])),
            "detection_rate": float(np.mean([v.detected for v in vm])),
            "false_positive_rate": float(np.mean([v.detected for v in vc])),
            "bit_accuracy_clean": float(np.mean([v.bit_accuracy for v in vc])),
        }
        cbs.on_metrics(0, metrics)
        cbs.on_progress(1, 1, "spread spectrum: measured")
        return metrics
