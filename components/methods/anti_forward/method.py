"""``AntiForward``: stamp, scan, calibrate and verify (the contract: the package doc)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from neuralmark.components import smoothing
from neuralmark.components.methods.anti_forward import training
from neuralmark.components.methods.anti_forward.config import AntiForwardConfig
from neuralmark.components.methods.anti_forward.parts import StampParts
from neuralmark.components.methods.base import (
    Callbacks,
    InputError,
    Status,
    Verdict,
    WatermarkKey,
    check_images,
)
from neuralmark.components.methods.registry import register
from neuralmark.components.stats import empirical_p_value


@register("anti_forward")
class AntiForward(StampParts):
    """DeepRAFT anti-forwarding stamp. See the module docstring for the method.

    Public API beyond ``embed`` / ``verify``: ``scanner_logits``,
    ``classifier_module``, ``certify``, ``to_working``, ``to_grid``, ``stamp``,
    ``scan_statistic``.

    Detection contract: not keyed (the platform's scanner finds every stamp, whoever
    stamped it), level ``config.fpr`` (``certify_alpha`` is the certification level, a
    different thing), fast null p-values (one scan serves every key), and a scanner
    for the adversarial evaluation.
    """

    Config = AntiForwardConfig
    config: AntiForwardConfig
    keyed_detection: ClassVar[bool] = False
    detection_alpha_field: ClassVar[str | None] = "fpr"
    has_scanner: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = True
    min_size: ClassVar[int] = 32
    smoke_config: ClassVar[dict[str, Any]] = {
        "working_size": 32, "encoder_width": 8, "scanner_width": 8, "steps": 2,
        "batch_size": 2, "aug_start": 0, "aug_end": 1, "n0": 4, "n": 16,
        "score_noise_samples": 2, "payload_bits": 16, "message_bits": 8,
        "calibration_scores": 8, "log_every": 1}


    def certify(self, images: torch.Tensor, *, n0: int | None = None, n: int | None = None,
                certify_alpha: float | None = None,
                generator: torch.Generator | None = None) -> list[smoothing.Certificate]:
        """Cohen et al. CERTIFY of the smoothed scanner for each image.

        Args:
            images: B×3×H×W in [0, 1]; resized to the working size first.
            n0, n, certify_alpha: selection samples, estimation samples, certification
                level (defaults: the config's).
            generator: seeds the noise (default: seeded by ``config.seed``).

        Returns:
            One ``Certificate`` per image: label 1 = stamped, 0 = clean, ``None`` =
            abstain; ``radius`` is an L2 radius in the working-size space
            (``working_size``² images in [0, 1]).

        Raises:
            InputError: σ is 0 (nothing to smooth with) or bad images.
        """
        c = self.config
        if c.sigma <= 0:
            raise InputError("certify needs sigma > 0 (this model has sigma = 0)")
        check_images(images, self.min_size)
        generator = generator or torch.Generator().manual_seed(c.seed)
        xw = self.to_grid(images)
        return smoothing.certify(lambda z: self.grid_logits(z)[:, :2], xw, c.sigma,
                                 n0=n0 or c.n0, n=n or c.n,
                                 alpha=certify_alpha or c.certify_alpha,
                                 num_classes=2, generator=generator)

    @property
    def smoothed(self) -> bool:
        """Whether ``verify`` certifies: smoothing on and a noise-trained variant."""
        return self.config.smoothing and self.config.train_sigma > 0

    # -- content interface -----------------------------------------------------
    @torch.no_grad()
    def embed(self, images: torch.Tensor, key: WatermarkKey | None,
              batch_size: int = 32) -> torch.Tensor:
        """Stamp ``images`` (B×3×H×W in [0,1], H, W ≥ 32) → same shape, in [0,1].

        The key only selects the payload word (models with ``payload_bits``);
        the stamp itself is the same for every key.
        """
        check_images(images, self.min_size)
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(self.device)
            xw = self.to_grid(x).clamp(0, 1)
            bits = self._bits(key, x.shape[0])
            r = self.stamp_residual(xw, bits)
            if tuple(r.shape[-2:]) != tuple(x.shape[-2:]):
                r = F.interpolate(r, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out.append((x + r).clamp(0, 1))
        return torch.cat(out).to(images.device)

    def stamp(self, images: torch.Tensor, key: WatermarkKey | None = None) -> torch.Tensor:
        """``embed`` with an optional key (models without payload need none)."""
        return self.embed(images, key)

    def p_value(self, statistic: float) -> float | None:
        """Empirical p-value of a scan statistic against the clean calibration scores."""
        clean = self.calibration.get("clean_statistics")
        if not clean:
            return None
        exceed = len(clean) - bisect.bisect_left(clean, statistic)  # clean scores >= statistic
        return empirical_p_value(exceed, len(clean))

    def _scan(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """(B statistics, B flat-image flags, B p-values) of B×3×H×W ``images``.

        The p-value is 1 while the scanner is uncalibrated (``fit`` never ran).
        """
        stats = self.scan_statistic(images)                                     # b
        xw = self.to_grid(images)
        flat = (xw.amax(dim=(1, 2, 3)) - xw.amin(dim=(1, 2, 3))).cpu() < 1 / 255  # b
        calibrated = bool(self.calibration.get("clean_statistics"))
        return stats, flat, [self.p_value(float(s)) if calibrated else 1.0 for s in stats]

    @torch.no_grad()
    def null_p_values(self, images: torch.Tensor, n_keys: int,
                      generator: torch.Generator) -> torch.Tensor:
        """The scan p-value of each image, for every one of ``n_keys`` keys: B×n_keys.

        The stamp is not keyed, so ``verify`` gives an image the same p-value under
        every key: one scan serves all columns and no key is drawn. NaN marks an
        unreadable (flat) image.
        """
        check_images(images, self.min_size)
        _, flat, p_values = self._scan(images)
        p = torch.tensor(p_values, dtype=torch.float64).masked_fill(flat, math.nan)  # b
        return p[:, None].expand(-1, n_keys).clone()

    def verify(self, images: torch.Tensor, key: WatermarkKey | None = None) -> list[Verdict]:
        """One ``Verdict`` per image of ``images`` (B×3×H×W in [0,1], H, W ≥ 32).

        See the module docstring for the decision rule; ``score`` is P(stamped).
        """
        check_images(images, self.min_size)
        c = self.config
        stats, flat, p_values = self._scan(images)
        xw = self.to_grid(images)
        calibrated = bool(self.calibration.get("clean_statistics"))
        passes = [p <= self.detection_alpha for p in p_values]
        certs: dict[int, smoothing.Certificate] = {}
        if self.smoothed:
            todo = [i for i, ok in enumerate(passes) if ok and not flat[i]]
            if todo:
                for i, cert in zip(todo, self.certify(images[todo]), strict=True):
                    certs[i] = cert
        bits_all = None
        if self.codec is not None:
            with torch.no_grad():
                bits_all = (self.grid_logits(xw)[:, 2:] > 0).cpu().numpy().astype("uint8")
        verdicts = []
        for i, (stat, p) in enumerate(zip(stats.tolist(), p_values, strict=True)):
            score = (1 / (1 + math.exp(-max(-60.0, min(60.0, stat))))
                     if c.score_aggregation == "mean_margin" else stat)  # P(stamped)
            extra: dict[str, Any] = {"statistic": stat, "calibration_size":
                                     len(self.calibration.get("clean_statistics", []))}
            if flat[i]:
                verdicts.append(Verdict.unreadable(
                    "the image has no variation (constant at the working size): it cannot "
                    "carry a stamp"))
                continue
            if not calibrated:
                reason = ("scanner not calibrated (fit never ran): no false-positive "
                          "guarantee, so never 'detected'; p-value 1")
                detected, radius = False, None
            elif not passes[i]:
                reason = f"scan p={p:.3g} > fpr target {c.fpr:g} (P(stamped)={score:.3f})"
                detected, radius = False, None
            elif i in certs and certs[i].abstained:
                cert = certs[i]
                reason = (f"abstained: the smoothed scanner cannot certify a class with "
                          f"n={c.n} noise samples at certify_alpha={c.certify_alpha:g} (votes "
                          f"{list(cert.counts)}, p_lower={cert.p_lower:.3f} < 0.5); "
                          "not detected")
                detected, radius = False, None
                extra["abstained"] = True
            elif i in certs and certs[i].label == 0:
                reason = (f"the smoothed scanner certifies 'clean' (radius "
                          f"{certs[i].radius:.3f}) although the scan p={p:.3g}")
                detected, radius = False, certs[i].radius
            else:
                detected = True
                radius = certs[i].radius if i in certs else None
                cert_txt = (f"; smoothed scanner certifies 'stamped' within L2 radius "
                            f"{radius:.3f} at {c.working_size}²") if radius is not None else ""
                reason = f"stamp detected: scan p={p:.3g} ≤ fpr target {c.fpr:g}{cert_txt}"
            if i in certs:
                extra["certificate"] = {"label": certs[i].label, "p_lower": certs[i].p_lower,
                                        "counts": list(certs[i].counts)}
            bits = payload = bit_acc = None
            if bits_all is not None:
                bits = bits_all[i].astype(int).tolist()
                if key is not None:
                    d = self.codec.read(bits_all[i], key)
                    bit_acc = d.bit_accuracy
                    extra["payload_p_value"] = d.p_value
                    if detected and d.p_value <= c.payload_alpha and c.message_bits:
                        payload = d.message
                    elif detected and c.message_bits:
                        reason += (f"; payload unreadable with this key (p={d.p_value:.3g} > "
                                   f"{c.payload_alpha:g})")
            verdicts.append(Verdict(
                detected=detected, score=score, p_value=p,
                status=Status.DETECTED if detected else Status.NOT_DETECTED, reason=reason,
                bits=bits, payload=payload, bit_accuracy=bit_acc, certified_radius=radius,
                extra=extra))
        return verdicts


    # -- training (the loop, losses and figures: :mod:`.training`) --------------------
    def fit(self, data: Mapping[str, torch.Tensor],
            callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
        """Joint encoder + scanner training, then calibration (:func:`.training.fit`)."""
        return training.fit(self, data, callbacks)

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """Joint loss at full curriculum (all augmentations, full σ) on ``images``."""
        return training.training_loss(self, images)
