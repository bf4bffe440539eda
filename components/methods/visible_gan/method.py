"""``VisibleGan``: the DeepStamp method behind the common interface (see the package doc)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components import distributed
from neuralmark.components.methods.base import (
    Callbacks,
    InputError,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
    resize_square,
)
from neuralmark.components.methods.registry import register
from neuralmark.components.methods.visible_gan import detection, losses
from neuralmark.components.methods.visible_gan.baselines import (
    Displacement,
    OpacityVariation,
    StaticBlend,
)
from neuralmark.components.methods.visible_gan.config import VisibleGanConfig
from neuralmark.components.methods.visible_gan.mark import (
    blend,
    box_mask,
    builtin_mark,
    feathered_support,
    place_mark,
)
from neuralmark.components.methods.visible_gan.nets import (
    MarkDiscriminator,
    RemovalNet,
    WatermarkNet,
    build_classifier,
)
from neuralmark.components.stats import empirical_p_value

#: classes of the label-free task (rotation by 0, 90, 180, 270 degrees)
ROTATION_CLASSES = 4
#: px (at the working size) W's change may reach beyond the mark's pixels, then fades over
#: as many again (``mark.feathered_support``): one px of a 16-px mark on a 32² image
SUPPORT_RADIUS = 1


class MarkStore(nn.Module):
    """Holds the RGBA mark as a buffer, so it travels in ``weights.safetensors``."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.register_buffer("rgba", builtin_mark(resolution))


@register("visible_gan")
class VisibleGan(WatermarkMethod):
    """DeepStamp visible watermarking. See the package docstring for the method.

    Detection contract: not keyed (the visible mark is the owner's claim whoever checks it;
    the key is ignored), level ``config.fpr``, fast null p-values, no scanner.
    """

    Config = VisibleGanConfig
    config: VisibleGanConfig
    keyed_detection: ClassVar[bool] = False
    detection_alpha_field: ClassVar[str | None] = "fpr"
    #: smallest side ``embed`` / ``verify`` take: 16 px (``resize_0.5`` of CIFAR's 32²). The
    #: detector matches at the ``detect_size`` view of any input (the mark is a fixed share
    #: of the short side, so resizing the image is resizing the template), and its clean
    #: null includes views that went through this smallest size (``calibrate``).
    min_size: ClassVar[int] = 16
    native_calibration: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = True  # GMAN: components/distributed.py
    removed_fields: ClassVar[dict[str, str]] = {
        "v_margin": "the margin of the old removal loss relu(v_margin − MSE(V(x′), x)), which "
                    "W met by making the mark louder; ℒ_v is now the share of the mark V "
                    "removes (losses.removal_loss), with no margin"}
    smoke_config: ClassVar[dict[str, Any]] = {
        "working_size": 16, "detect_size": 32, "mark_resolution": 16, "w_width": 4,
        "v_width": 4, "d_width": 4, "classifier_width": 4, "classifier_steps": 2, "steps": 2,
        "batch_size": 4, "calibration_scores": 16, "utility_steps": 2, "removal_steps": 2,
        "log_every": 1}

    def __init__(self, config: VisibleGanConfig) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        self.W = WatermarkNet(config.w_width)
        self.V = RemovalNet(config.v_width)
        self.D = MarkDiscriminator(config.d_width)
        self.F = build_classifier(config.classifier, self.num_classes, config.classifier_width)
        self.F.requires_grad_(False)  # frozen outside its own training phase in ``fit``
        self.mark = MarkStore(config.mark_resolution)
        self.calibration: dict[str, Any] = {}
        self.fit_report: dict[str, Any] = {}
        self.mark_notes: list[str] = []
        for m in self.modules().values():
            m.eval()

    @property
    def num_classes(self) -> int:
        """Classes of F: 4 for the rotation task, ``num_classes`` for labels."""
        return ROTATION_CLASSES if self.config.task == "rotation" else self.config.num_classes

    def modules(self) -> dict[str, nn.Module]:
        return {"W": self.W, "V": self.V, "D": self.D, "F": self.F, "mark": self.mark}

    def extra_state(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "fit_report": self.fit_report,
                "mark_notes": self.mark_notes}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.calibration = dict(state.get("calibration", {}))
        self.fit_report = dict(state.get("fit_report", {}))
        self.mark_notes = list(state.get("mark_notes", []))

    # -- the mark ----------------------------------------------------------------------------
    @property
    def rgba(self) -> torch.Tensor:
        """The mark: ``4×R×R`` RGBA in [0, 1]."""
        return self.mark.rgba

    def with_mark(self, mark: torch.Tensor, null_images: torch.Tensor | None = None,
                  notes: Sequence[str] = ()) -> VisibleGan:
        """The same W with another mark, its detector recalibrated for it.

        W takes the mark as an input, so any mark works without retraining; the template
        and the clean-image null change with the mark, so the calibration is redone.

        Args:
            mark: ``4×H×W`` RGBA in [0, 1] (``mark.load_mark`` reads files); resized to
                ``mark_resolution``.
            null_images: clean ``N×3×H×W`` images for the calibration (default: the
                offline null set of ``null_images``).
            notes: conversions done while reading the mark (kept in the bundle state).

        Raises:
            InputError: not a 4-channel mark in [0, 1].
        """
        if mark.ndim != 3 or mark.shape[0] != 4:
            raise InputError(f"a mark is 4×H×W RGBA, got shape {tuple(mark.shape)}")
        if mark.min() < 0 or mark.max() > 1:
            raise InputError("mark values must lie in [0, 1]")
        other = self.with_config()
        r = self.config.mark_resolution
        if tuple(mark.shape[-2:]) != (r, r):
            pre = torch.cat([mark[:3] * mark[3:], mark[3:]])[None]
            pre = F.interpolate(pre, size=(r, r), mode="bilinear", antialias=True,
                                align_corners=False)[0].clamp(0, 1)
            a = pre[3:]
            mark = torch.cat([torch.where(a > 1e-4, pre[:3] / a.clamp_min(1e-4),
                                          torch.zeros_like(pre[:3])).clamp(0, 1), a])
        other.mark.rgba.copy_(mark.to(other.mark.rgba))
        other.mark_notes = list(notes)
        images = null_images if null_images is not None else default_null_images(
            self.config.detect_size)
        other.calibrate(images, torch.Generator().manual_seed(self.config.seed),
                        source="null set" if null_images is None else "given clean images")
        return other

    # -- stamping ----------------------------------------------------------------------------
    def canvas(self, batch: int, h: int, w: int) -> torch.Tensor:
        """The static mark placed on ``h×w``: ``B×4×h×w``."""
        return place_mark(self.rgba, h, w, self.config.mark_scale, batch=batch)

    def synthesize(self, work: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """W's mark w′ at the working size: ``B×3×S×S`` images, ``B×4×S×S`` canvas → ``B×4×S×S``.

        ``w′ = clip(w + max_delta·tanh(W(x ⊕ w))·m)``, the change confined to ``m``, the
        mark's feathered support inside its square (W reshapes the mark; it does not paint
        the rest of the image, nor the transparent part of the square: no box shows).
        """
        delta = self.config.max_delta * torch.tanh(self.W(work, canvas)) * self._support(canvas)
        return (canvas + delta).clamp(0, 1)

    def _support(self, canvas: torch.Tensor) -> torch.Tensor:
        """``B×1×S×S`` where W may change the ``B×4×S×S`` working-size canvas."""
        s = canvas.shape[-1]
        box = box_mask(s, s, self.config.mark_scale, canvas.shape[0], canvas.device)
        return feathered_support(canvas[:, 3:], SUPPORT_RADIUS) * box

    def stamp_working(self, work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeepStamp at the working size: ``B×3×S×S`` → (marked ``B×3×S×S``, w′ ``B×4×S×S``)."""
        s = work.shape[-1]
        canvas = self.canvas(work.shape[0], s, s).to(work)
        synthesized = self.synthesize(work, canvas)
        return blend(work, synthesized, self.config.blend), synthesized

    def static_working(self, work: torch.Tensor) -> torch.Tensor:
        """The static alpha blend (D's "real") at the working size: ``B×3×S×S``."""
        s = work.shape[-1]
        return blend(work, self.canvas(work.shape[0], s, s).to(work), self.config.blend)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, key: WatermarkKey | None = None,
              batch_size: int = 32) -> torch.Tensor:
        """Stamp the visible mark: ``B×3×H×W`` in [0, 1] (H, W ≥ 16) → same shape, in [0, 1].

        W runs on the centred square at the working size; its change of the mark is
        up-sampled (bilinear) and added to the mark placed at full resolution, so the logo
        stays sharp at any size.
        The key is not used (the mark is the claim).
        """
        check_images(images, self.min_size)
        return self._embed(images, batch_size)

    @torch.no_grad()
    def _embed(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """``embed`` without the input checks (the evaluation stamps working-size images)."""
        c = self.config
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(self.device)
            b, _, h, w = x.shape
            canvas = self.canvas(b, h, w).to(x)
            # W sees the centred square (where the mark is, undistorted), as in training
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            square = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
            work = resize_square(x[square], c.working_size)
            work_canvas = resize_square(canvas[square], c.working_size)
            change = (c.max_delta * torch.tanh(self.W(work, work_canvas))
                      * self._support(work_canvas))
            if side != c.working_size:
                change = F.interpolate(change, size=(side, side), mode="bilinear",
                                       align_corners=False)
            delta = torch.zeros_like(canvas)
            delta[square] = change
            delta = delta * box_mask(h, w, c.mark_scale, b, x.device)
            out.append(blend(x, (canvas + delta).clamp(0, 1), c.blend))
        return torch.cat(out).to(images.device)

    def stampers(self) -> dict[str, Any]:
        """DeepStamp and the seed's baselines as ``stamper(images, generator) -> marked``."""
        c = self.config
        mark = self.rgba.detach().cpu()
        return {
            "static": StaticBlend(mark, c.mark_scale, c.blend),
            "opacity": OpacityVariation(mark, c.mark_scale, c.blend, *c.opacity_range),
            "displacement": Displacement(mark, c.mark_scale, c.blend, c.displacement),
            "deepstamp": lambda x, generator=None: self._embed(x),
        }

    # -- detection ---------------------------------------------------------------------------
    @torch.no_grad()
    def scan_statistic(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Template-match statistic (largest NCC): ``B×3×H×W`` → ``B`` values in [−1, 1]."""
        c = self.config
        tmpl = detection.template(self.rgba.detach().to(self.device), c.detect_size,
                                  c.mark_scale, c.blend)
        radius = round(c.search_radius * c.detect_size)
        out = []
        for i in range(0, images.shape[0], batch_size):
            views = detection.detection_view(images[i:i + batch_size].to(self.device),
                                             c.detect_size)
            out.append(detection.ncc_statistic(views, tmpl, c.mark_scale, radius))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def calibrate(self, clean: torch.Tensor, generator: torch.Generator | None = None,
                  source: str = "val") -> dict[str, Any]:
        """Set the clean-image null of the statistic from held-out clean images.

        Args:
            clean: ``N×3×H×W`` clean images in [0, 1].
            generator: seeds the random crops.
            source: where the images come from (recorded).

        Returns:
            The calibration record (stored in ``extra_state``): the sorted statistics of the
            images and of the same images brought down to ``min_size`` and back (the blur a
            smallest input has at the detection view), their 8 flips/rotations, and random
            crops (at least ``calibration_scores`` in all), and the threshold for ``fpr``.
        """
        c = self.config
        views = detection.detection_view(clean.to(self.device), c.detect_size).clamp(0, 1)
        small = resize_square(resize_square(views, self.min_size), c.detect_size)
        stats = []
        for base in (views, small):
            for k in range(4):
                rotated = torch.rot90(base, k, dims=(2, 3))
                stats += [self.scan_statistic(rotated), self.scan_statistic(rotated.flip(3))]
        n = len(views) * 16
        g = generator or torch.Generator().manual_seed(c.seed)
        while n < c.calibration_scores:
            cropped = _random_crops(views, c.detect_size, g)
            stats.append(self.scan_statistic(cropped))
            n += len(cropped)
        values = sorted(float(v) for v in torch.cat(stats))
        n = len(values)
        k_max = math.floor(c.fpr * (n + 1)) - 1  # clean scores allowed at or above s
        threshold = values[n - 1 - k_max] if 0 <= k_max < n else None
        self.calibration = {
            "clean_statistics": values, "n_scores": n, "n_images": int(views.shape[0]),
            "source": source, "fpr_target": c.fpr, "threshold_statistic": threshold,
            "note": ("detected iff p=(1+#clean>=s)/(N+1) <= fpr" if threshold is not None
                     else f"only {n} clean scores: p can never reach fpr={c.fpr:g}")}
        return self.calibration

    def p_value(self, statistic: float) -> float:
        """Empirical p-value of a statistic against the clean calibration (1 uncalibrated)."""
        clean = self.calibration.get("clean_statistics")
        if not clean:
            return 1.0
        exceed = len(clean) - bisect.bisect_left(clean, statistic)
        return empirical_p_value(exceed, len(clean))

    def _scan(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """(B statistics, B flat flags, B p-values) of ``B×3×H×W`` images."""
        stats = self.scan_statistic(images)
        views = detection.detection_view(images.to(self.device), self.config.detect_size)
        flat = (views.amax(dim=(1, 2, 3)) - views.amin(dim=(1, 2, 3))).cpu() < 1 / 255
        return stats, flat, [self.p_value(float(s)) for s in stats]

    @torch.no_grad()
    def null_p_values(self, images: torch.Tensor, n_keys: int,
                      generator: torch.Generator) -> torch.Tensor:
        """The p-value of each image under every one of ``n_keys`` keys: ``B×n_keys``.

        The mark is not keyed, so one scan serves every column; NaN marks a flat image.
        """
        check_images(images, self.min_size)
        _, flat, p_values = self._scan(images)
        p = torch.tensor(p_values, dtype=torch.float64).masked_fill(flat, math.nan)
        return p[:, None].expand(-1, n_keys).clone()

    def verify(self, images: torch.Tensor, key: WatermarkKey | None = None) -> list[Verdict]:
        """One ``Verdict`` per image (``B×3×H×W`` in [0, 1], H, W ≥ 16).

        Detected iff the empirical p-value of the template-match statistic against the clean
        calibration is ≤ ``fpr``; ``score`` is the statistic (NCC). The key is ignored.
        """
        check_images(images, self.min_size)
        c = self.config
        stats, flat, p_values = self._scan(images)
        calibrated = bool(self.calibration.get("clean_statistics"))
        verdicts = []
        for i, (stat, p) in enumerate(zip(stats.tolist(), p_values, strict=True)):
            if flat[i]:
                verdicts.append(Verdict.unreadable(
                    "the image has no variation (constant at the detection size): there is "
                    "no mark and nothing to compare"))
                continue
            extra = {"statistic": stat,
                     "calibration_size": len(self.calibration.get("clean_statistics", []))}
            if not calibrated:
                detected = False
                reason = ("detector not calibrated (fit never ran): no false-positive "
                          "guarantee, so never 'detected'; p-value 1")
            elif p <= c.fpr:
                detected = True
                reason = f"visible mark found: NCC {stat:.3f}, p={p:.3g} ≤ fpr target {c.fpr:g}"
            else:
                detected = False
                reason = f"no mark: NCC {stat:.3f}, p={p:.3g} > fpr target {c.fpr:g}"
            verdicts.append(Verdict(
                detected=detected, score=float(stat), p_value=p,
                status=Status.DETECTED if detected else Status.NOT_DETECTED, reason=reason,
                extra=extra))
        return verdicts

    # -- training ----------------------------------------------------------------------------
    def loss_terms(self, work: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss of one GMAN step on a ``B×3×S×S`` batch (W's three, V's, D's).

        Returns:
            ``f``, ``v``, ``d``, ``vis`` (W's ℒ_f, ℒ_v, ℒ_d, ℒ_vis), ``w`` (the GMAN
            combination of the first three plus ``lambda_visibility``·ℒ_vis), ``v_attack``
            (V's own loss) and ``d_disc`` (D's own loss, on a detached w′).
        """
        c = self.config
        marked, _ = self.stamp_working(work)
        static = self.static_working(work)
        s = work.shape[-1]
        support = (self.canvas(1, s, s)[:, 3:] > 0.5).to(work)  # the mark's pixels
        with torch.no_grad():
            clean_logits = self.F(work)
        terms = {
            "f": losses.task_loss(clean_logits, self.F(marked)),
            "v": losses.removal_loss(self.V(marked), marked, work),
            "d": losses.gan_bce(self.D(marked), True),
            "vis": losses.visibility_loss(marked, static, work, support, c.visibility_floor),
        }
        terms["w"] = losses.gman_combine(
            [c.lambda_f * terms["f"], c.lambda_v * terms["v"], c.lambda_d * terms["d"]],
            c.gman_lambda) + c.lambda_visibility * terms["vis"]
        terms["v_attack"] = losses.removal_attack_loss(self.V(marked.detach()), work)
        terms["d_disc"] = (losses.gan_bce(self.D(static), True)
                           + losses.gan_bce(self.D(marked.detach()), False))
        return terms

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """W's GMAN loss + V's and D's own losses on ``images`` (B×3×H×W) at the working size."""
        work = resize_square(images.to(self.device), self.config.working_size)
        terms = self.loss_terms(work)
        return terms["w"] + terms["v_attack"] + terms["d_disc"]

    def fit(self, data: Mapping[str, torch.Tensor],
            callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
        """Train F, then W against F, V and D (GMAN); calibrate; measure the seed's table.

        Args:
            data: ``{"train": N×3×H×W, "val": M×3×H×W}`` in [0, 1], plus
                ``"train_labels"`` / ``"val_labels"`` (int64) when ``task`` is ``labels``;
                optionally ``"test"`` (+ ``"test_labels"``), the held-out images the
                seed's table tests F′ on (default ``val``), and ``"calibration"`` (clean
                K×3×H×W for the detector's null; default ``val``).
            callbacks: progress / metrics / figures sinks.

        Returns:
            Final metrics (classifier accuracy, last GMAN losses, calibration size, and the
            utility/removal figures of ``fit_report``).
        """
        from neuralmark.components.methods.visible_gan.training import fit_visible_gan

        with distributed.sync_batchnorm(self.W, self.V, self.D):  # data-parallel GMAN
            return fit_visible_gan(self, data, Callbacks.of(callbacks))

    # -- method-specific evaluation ------------------------------------------------------------
    def evaluation_rows(self, clean: torch.Tensor, marked: torch.Tensor,
                        seed: int = 0) -> list[dict[str, Any]]:
        """The seed's measurements as tidy rows (see ``evaluation.visible_rows``)."""
        from neuralmark.components.methods.visible_gan.evaluation import visible_rows

        return visible_rows(self, clean, seed)

    def public_remover(self, images: torch.Tensor) -> torch.Tensor:
        """The shipped V run as a ready-made remover (``evaluation.remove_with_v``):
        ``B×3×H×W`` → same, [0, 1]. V ships in the bundle, so this is what anyone with the
        public files can do to a marked photo without training anything (the benchmark's
        white-box removal runs it)."""
        from neuralmark.components.methods.visible_gan.evaluation import remove_with_v

        return remove_with_v(self, images)

    def evaluation_figures(self, clean: torch.Tensor, marked: torch.Tensor) -> dict[str, Any]:
        """Example grid: clean, static, opacity, displacement, DeepStamp, V's removal."""
        from neuralmark.components.methods.visible_gan.evaluation import stamper_grid

        return {"visible_gan_examples": stamper_grid(self, clean)}

    def evaluation_markdown(self) -> str:
        """The seed's Table I in shape and the removal table, from ``fit_report``."""
        from neuralmark.components.methods.visible_gan.evaluation import seed_table_markdown

        return seed_table_markdown(self.fit_report)


def _random_crops(views: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random square crop (60–100 % of the side) per view, resized back: ``B×3×S×S``."""
    b, _, h, w = views.shape
    out = []
    for i in range(b):
        side = int(h * (0.6 + 0.4 * float(torch.rand(1, generator=generator))))
        y0 = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        out.append(resize_square(views[i:i + 1, :, y0:y0 + side, x0:x0 + side], size))
    return torch.cat(out)


def default_null_images(size: int, count: int = 64, seed: int = 0) -> torch.Tensor:
    """Clean images available offline, for calibrating a new mark: ``count×3×size×size``.

    Half procedural images (``neuralmark.components.data.sample``), half random crops of the
    photos that ship in scikit-image / scikit-learn.
    """
    import numpy as np

    from neuralmark.components.data.sample import (
        BUNDLED_PHOTOS,
        load_bundled_photo,
        procedural_image,
        random_crops,
    )

    arrays = [procedural_image(seed + 1000, i, size)[1] for i in range(count // 2)]
    rng = np.random.default_rng(seed)
    photos = [p for p in BUNDLED_PHOTOS if _installed(p)]
    per = max(1, math.ceil((count - len(arrays)) / max(1, len(photos))))
    for photo in photos:
        arrays += random_crops(load_bundled_photo(photo), per, size, 0.35, rng)
    arrays = arrays[:count]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return x.contiguous()


def _installed(photo: Any) -> bool:
    try:
        photo.file()
    except FileNotFoundError:
        return False
    return True
