"""``OutputMark``: the networks, the logo, embedding, extraction, verdicts, calibration, bundles.

The method as seen by a user: ``embed`` / ``extract`` / ``verify`` (per image),
``verify_model`` / ``embed_model`` / ``marked_model`` (the model side),
``calibrate`` (null NC distribution) and bundles (``config.json`` +
``weights.safetensors`` with M, H, R, D and δ + ``state.json`` with the fingerprint,
null scores and training groups). ``fit`` runs :mod:`.training`'s sequence. The
package docstring states the contracts and the choices where the seed is vague.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.data.pairs import check_pairs
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import (
    Callbacks,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
    resize_square,
)
from neuralmark.components.methods.output_mark import training
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.evaluation import (
    model_decision,
    suspect_outputs,
)
from neuralmark.components.methods.output_mark.logo import (
    LogoStore,
    key_fingerprint,
    key_logo,
    load_logo,
)
from neuralmark.components.methods.output_mark.losses import disc_loss, embed_loss, extract_loss
from neuralmark.components.methods.registry import register
from neuralmark.components.metrics import normalized_correlation
from neuralmark.components.nets.ceilnet import CEILNet
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.nets.patchgan import PatchDiscriminator
from neuralmark.components.nets.unet import UNet
from neuralmark.components.stats import empirical_p_value


class MarkedModel(nn.Module):
    """The watermarked service: ``H ∘ M`` (or ``H`` alone in the task-specific variant).

    Shapes: ``B×3×H×W`` → ``B×3×H×W`` in [0, 1], any size (H runs at the working
    size, its residual is upsampled bilinearly).
    """

    def __init__(self, base: nn.Module | None, embedder: nn.Module, working_size: int) -> None:
        super().__init__()
        self.base, self.embedder, self.working_size = base, embedder, working_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x) if self.base is not None else x
        yw = resize_square(y, self.working_size)
        residual = self.embedder(yw) - yw
        if tuple(residual.shape[-2:]) != tuple(y.shape[-2:]):
            residual = F.interpolate(residual, size=y.shape[-2:], mode="bilinear",
                                     align_corners=False)
        return (y + residual).clamp(0, 1)


@register("output_mark")
class OutputMark(WatermarkMethod):
    """Seed 001's model watermark through outputs (see the package docstring)."""

    own_pipeline = ("neuralmark protect --task derain|debone (neuralmark.pipelines.output_mark."
                    "output_mark_pipeline, configs/output_mark_pipeline.yaml)")

    Config = OutputMarkConfig
    config: OutputMarkConfig
    kind = "model"
    #: verify decides by NC > threshold (the seed's rule), not at a p-value level
    detection_alpha_field = None
    min_size = 16
    data_parallel = True  # every stage's loop: components/distributed.py
    smoke_config = {"working_size": 32, "model_width": 4, "model_depth": 2, "embed_width": 4,
                    "embed_depth": 2, "extract_width": 4, "extract_blocks": 1, "disc_width": 4,
                    "disc_layers": 2, "model_steps": 2, "steps": 2, "batch_size": 2,
                    "stage2_steps": 2,
                    "surrogate": {"width": 4, "depth": 2, "steps": 2, "batch_size": 2}}

    def __init__(self, config: OutputMarkConfig) -> None:
        super().__init__(config)
        c = config
        torch.manual_seed(c.seed)
        self.M: nn.Module = UNet(width=c.model_width, depth=c.model_depth, output="residual")
        self.H: nn.Module = UNet(width=c.embed_width, depth=c.embed_depth, output="residual")
        self.R: nn.Module = CEILNet(width=c.extract_width, n_blocks=c.extract_blocks,
                                    norm=c.extract_norm)
        self.D: nn.Module = PatchDiscriminator(width=c.disc_width, n_layers=c.disc_layers)
        self.logo_store = LogoStore(load_logo(c.logo, c.working_size, c.threshold,
                                              c.logo_secret, c.logo_block))
        self.fingerprint = key_fingerprint(c.logo_secret)
        self.null_scores: list[float] = []
        self.calibration_sources: list[str] = []
        self.train_groups: list[str] | None = None
        self.trained = False
        for m in self.modules().values():
            m.eval()

    # -- state (the bundle format: weight prefixes and state.json keys) ------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"M": self.M, "H": self.H, "R": self.R, "D": self.D, "logo": self.logo_store}

    def extra_state(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "null_scores": self.null_scores,
                "calibration_sources": self.calibration_sources, "trained": self.trained,
                "train_groups": self.train_groups}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.fingerprint = state.get("fingerprint", self.fingerprint)
        self.null_scores = [float(v) for v in state.get("null_scores", [])]
        self.calibration_sources = list(state.get("calibration_sources", []))
        self.trained = bool(state.get("trained", False))
        groups = state.get("train_groups")
        self.train_groups = None if groups is None else [str(x) for x in groups]

    @property
    def logo(self) -> torch.Tensor:
        """δ: 3×S×S in [0, 1] (S = working size)."""
        return self.logo_store.logo

    def set_logo(self, source: Any, key: WatermarkKey | None = None) -> torch.Tensor:
        """Replace δ before ``fit`` (an image, a path, or ``"key"`` with ``key``).

        Raises:
            InputError: ``source`` is not an image, or is too close to the blank.
        """
        secret = key.secret if key is not None else self.config.logo_secret
        logo = load_logo(source, self.config.working_size, self.config.threshold, secret,
                         self.config.logo_block)
        self.logo_store.logo.copy_(logo.to(self.logo.device))
        self.fingerprint = key_fingerprint(secret)
        return logo

    def set_groups(self, groups: Sequence[Any] | None) -> None:
        """Remember the source group of each training pair (e.g. its photo) for the split."""
        self.train_groups = None if groups is None else [str(x) for x in groups]

    def reference_logo(self, key: WatermarkKey) -> tuple[torch.Tensor, bool]:
        """(δ to compare against, whether ``key`` is the key the mark was trained for)."""
        if key_fingerprint(key.secret) == self.fingerprint:
            return self.logo.cpu(), True
        return key_logo(key.secret, self.config.working_size, self.config.logo_block), False

    def _working(self, x: torch.Tensor) -> torch.Tensor:
        return resize_square(x.float(), self.config.working_size)

    def working_pairs(self, pairs: Any, what: str = "pairs") -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``(A, B)`` (N×3×H×W in [0, 1]) and resize both to the working size."""
        a, b = check_pairs(pairs, what)
        return self._working(a), self._working(b)

    # -- the service ---------------------------------------------------------------------------
    def model_outputs(self, a: torch.Tensor) -> torch.Tensor:
        """Domain B: M's outputs on N×3×S×S inputs (no grad, batches, CPU)."""
        return apply_net(self.M, a, self.config.eval_batch, self.device)

    def marked_outputs(self, a: torch.Tensor) -> torch.Tensor:
        """B′: what the watermarked service returns for N×3×S×S inputs (H∘M, or H)."""
        h_in = a if self.config.task_specific else self.model_outputs(a)
        return apply_net(self.H, h_in, self.config.eval_batch, self.device)

    def marked_model(self) -> MarkedModel:
        """The watermarked service ``H ∘ M`` (``H`` alone when task-specific), eval mode."""
        base = None if self.config.task_specific else self.M
        return MarkedModel(base, self.H, self.config.working_size).eval()

    def embed_model(self, model: nn.Module, key: WatermarkKey) -> nn.Module:
        """Wrap any image-to-image ``model`` so every output carries δ (``H ∘ model``).

        Raises:
            InputError: wrong key, or the task-specific variant (there H is the model:
                use ``marked_model()``).
        """
        if self.config.task_specific:
            raise InputError("in the task-specific variant H is the model; use marked_model()")
        if key_fingerprint(key.secret) != self.fingerprint:
            raise InputError("this output_mark model hides the logo of another key")
        return MarkedModel(model, self.H, self.config.working_size).eval()

    # -- embedding and extraction --------------------------------------------------------------
    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """Hide δ in ``images`` with H: B×3×H×W → B′, same shape, in [0, 1].

        ``images`` are outputs of M (domain B); in the task-specific variant they
        are domain-A inputs and the result is H's marked restoration.

        Raises:
            InputError: bad images, or ``key`` is not the key H was trained for.
        """
        check_images(images, self.min_size)
        if key_fingerprint(key.secret) != self.fingerprint:
            raise InputError("this output_mark model hides the logo of another key; "
                             "retrain (fit) with this key to embed its logo")
        embedder = MarkedModel(None, self.H, self.config.working_size).eval()
        return apply_net(embedder, images, self.config.eval_batch, self.device).to(images.device)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """R's logo estimate: B×3×H×W (any size) → B×3×S×S in [0, 1] (S = working size)."""
        check_images(images, self.min_size)
        return apply_net(self.R, self._working(images), self.config.eval_batch, self.device)

    def nc(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """NC of R's extraction against ``key``'s logo, per image (B values)."""
        ref, _ = self.reference_logo(key)
        return normalized_correlation(self.extract(images), ref[None])

    def readable(self, images: torch.Tensor) -> torch.Tensor:
        """Which of B×3×H×W images can carry δ at all: B bools.

        False when every channel's standard deviation at the working size is
        below ``config.min_contrast`` (a flat image; see the config field).
        """
        x = self._working(images.detach().cpu())
        return x.flatten(2).std(dim=2).amax(dim=1) >= self.config.min_contrast

    def hit_mask(self, ncs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """B bools: NC above the threshold on a readable image (the seed's success)."""
        return (ncs > self.config.threshold) & self.readable(images)

    def hits(self, images: torch.Tensor, key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nc, hit)`` per image of B×3×H×W: hit = readable and NC > threshold."""
        ncs = self.nc(images, key)
        return ncs, self.hit_mask(ncs, images)

    # -- p-values ------------------------------------------------------------------------------
    def calibrate(self, clean: torch.Tensor, source: str = "clean",
                  key: WatermarkKey | None = None) -> list[float]:
        """Add NC scores of watermark-free images (N×3×H×W) to the null distribution.

        Args:
            clean: images that carry no mark (A, B, outputs of an independent model);
                flat (unreadable) ones are skipped.
            source: a label kept in ``calibration_sources`` (``"<source>:<count>"``).
            key: key whose logo is the reference (default: the trained one).

        Returns:
            The new null scores.
        """
        ref = self.logo.cpu() if key is None else self.reference_logo(key)[0]
        clean = clean[self.readable(clean).to(clean.device)]
        if clean.shape[0] == 0:
            return []
        scores = normalized_correlation(self.extract(clean), ref[None]).tolist()
        self.null_scores = sorted(self.null_scores + scores)
        if len(self.null_scores) > self.config.calibration_max:
            # keep an evenly spaced subset: the empirical distribution stays the same
            idx = np.linspace(0, len(self.null_scores) - 1, self.config.calibration_max)
            self.null_scores = [self.null_scores[int(round(i))] for i in idx]
        self.calibration_sources.append(f"{source}:{len(scores)}")
        return scores

    def reset_calibration(self) -> None:
        """Forget the null scores (each training sequence recalibrates from scratch)."""
        self.null_scores, self.calibration_sources = [], []

    def p_value(self, score: float) -> tuple[float | None, str]:
        """Empirical p-value of one NC under the calibrated null, or ``None`` and why."""
        if not self.null_scores:
            return None, "no calibration: fit() or calibrate() has not run"
        n = len(self.null_scores)
        above = n - int(np.searchsorted(np.asarray(self.null_scores), score, side="left"))
        return empirical_p_value(above, n), f"empirical over {n} clean images"

    def per_image_fpr(self) -> float | None:
        """Calibrated rate of clean images with NC > threshold (add-one estimate)."""
        if not self.null_scores:
            return None
        exceed = int((np.asarray(self.null_scores) > self.config.threshold).sum())
        return empirical_p_value(exceed, len(self.null_scores))

    # -- verification --------------------------------------------------------------------------
    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        """One ``Verdict`` per image of B×3×H×W: NC of R's extraction with ``key``'s logo.

        ``detected`` iff NC > ``threshold``; ``p_value`` empirical (calibrated in fit).
        A flat image (see :meth:`readable`) is ``unreadable``.
        """
        check_images(images, self.min_size)
        ref, own = self.reference_logo(key)
        ncs = normalized_correlation(self.extract(images), ref[None]).tolist()
        t = self.config.threshold
        verdicts = []
        for score, readable in zip(ncs, self.readable(images).tolist(), strict=True):
            if not readable:
                verdicts.append(Verdict.unreadable(
                    f"flat image (every channel's std < {self.config.min_contrast:.4g} at the "
                    "working size): it cannot carry the logo"))
                continue
            detected = score > t
            p, why = self.p_value(score)
            reason = f"NC {score:.4f} {'>' if detected else '≤'} threshold {t}"
            reason += f"; p={p:.3g} ({why})" if p is not None else f"; p-value: {why}"
            if not own:
                reason += "; the key is not the one this model was trained for"
            verdicts.append(Verdict(
                detected=detected, score=float(score), p_value=p,
                status=Status.DETECTED if detected else Status.NOT_DETECTED, reason=reason,
                extra={"nc": float(score), "threshold": t, "key_matches": own,
                       "calibration_n": len(self.null_scores)}))
        return verdicts

    def verify_model(self, model_or_outputs: Any, key: WatermarkKey,
                     inputs: torch.Tensor | None = None) -> Verdict:
        """Was a suspect model trained on our marked outputs? Decide over a batch.

        Args:
            model_or_outputs: a suspect model (queried on ``inputs``), a
                B×3×H×W tensor of its outputs, or a list of output images
                (3×H×W or 1×3×H×W, mixed sizes allowed).
            key: the owner's key (its logo is the reference).
            inputs: domain-A query images when a model is given.

        Returns:
            ``score`` = share of readable outputs with NC > threshold (success rate);
            ``p_value`` = P(at least that many | clean model), binomial under the
            calibrated per-image FPR (``None`` without calibration); ``extra`` = the
            evidence (per-image NC, mean, median, counts, flat outputs skipped).
        """
        outs = suspect_outputs(model_or_outputs, inputs, self.min_size,
                               self.config.working_size, self.config.eval_batch)
        ok = self.readable(outs)
        n_flat = int((~ok).sum())
        if n_flat == outs.shape[0]:
            return Verdict.unreadable(f"all {n_flat} outputs are flat images (every channel's "
                                      f"std < {self.config.min_contrast:.4g}): none can carry "
                                      "the logo")
        ref, own = self.reference_logo(key)
        ncs = normalized_correlation(self.extract(outs[ok.to(outs.device)]), ref[None])
        c = self.config
        fpr = self.per_image_fpr()
        d = model_decision(ncs, c.threshold, c.model_min_share, c.model_alpha, fpr)
        reason = d.reason
        if n_flat:
            reason += f"; {n_flat} flat output(s) skipped (unreadable)"
        if not own:
            reason += "; the key is not the one this model was trained for"
        return Verdict(
            detected=d.detected, score=d.share, p_value=d.p_value,
            status=Status.DETECTED if d.detected else Status.NOT_DETECTED, reason=reason,
            extra={"success_rate": d.share, "n_outputs": d.n_outputs, "n_marked": d.n_marked,
                   "threshold": c.threshold, "nc": [round(float(v), 5) for v in ncs],
                   "nc_mean": float(ncs.mean()), "nc_median": float(ncs.median()),
                   "per_image_fpr": fpr, "n_unreadable": n_flat, "key_matches": own})

    # -- training ------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """One differentiable loss over M, H, R and D on a batch (images serve as A and B)."""
        a = self._working(images.to(self.device))
        gt = a.flip(-1)  # any target: the contract only checks that gradients flow
        m_out = self.M(a)
        m_loss = (m_out - gt).pow(2).mean()
        h_in, h_ref = (a, gt) if self.config.task_specific else (m_out, m_out.detach())
        b_prime = self.H(h_in)
        emd, _ = embed_loss(self.config, self.D, b_prime, h_ref)
        g = torch.Generator().manual_seed(self.config.seed)
        ext, _ = extract_loss(self.config, self.R, self.logo, [b_prime], [a, h_ref], g)
        return m_loss + emd + self.config.lambda_ext * ext + disc_loss(self.D, h_ref, b_prime)

    def fit(self, data: Mapping[str, Any], callbacks: Callbacks | Sequence[Any] = (),
            key: WatermarkKey | None = None) -> dict[str, float]:
        """M → stage 1 → stage 2 → calibration on the held-out pairs (:func:`training.fit`).

        Args:
            data: ``{"train": (A, B), "val": (A, B)}``, N×3×H×W tensors in [0, 1]
                (resized to ``working_size``); ``val`` (optional) feeds the reported
                metrics only.
            callbacks: metrics/progress sinks.
            key: whose logo to hide when ``config.logo == "key"`` (default
                ``config.logo_secret``).

        Returns:
            Final metrics (see :func:`training.fit`).
        """
        return training.fit(self, data, callbacks, key)


__all__ = ["MarkedModel", "OutputMark"]
