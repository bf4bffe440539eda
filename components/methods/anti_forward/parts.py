"""``StampParts``: the nets of ``anti_forward`` and what training and detection share.

The encoder, the scanner, the working-size view, the stamp residual, the scan statistic and
its clean-score calibration. :mod:`.training` trains these parts; :mod:`.method` adds
embedding, certification and verification on top (``AntiForward``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from neuralmark.components.attacks.stochastic import StochasticAugmentation
from neuralmark.components.methods.anti_forward import shaping
from neuralmark.components.methods.anti_forward.config import AntiForwardConfig
from neuralmark.components.methods.base import (
    InputError,
    WatermarkKey,
    WatermarkMethod,
    resize_square,
)
from neuralmark.components.nets.stamp import Scanner, StampEncoder
from neuralmark.components.payload import PayloadCodec
from neuralmark.components.stats import clustered_rate


class _ScannerClassifier(torch.nn.Module):
    """``forward(images) = method.scanner_logits(images)`` (B×3×H×W → B×2), for torchattacks."""

    def __init__(self, method: StampParts) -> None:
        super().__init__()
        self.scanner = method.scanner  # registered: .eval() / .to() reach it
        self._method = [method]        # a list: not registered as a submodule

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._method[0].scanner_logits(images)


class StampParts(WatermarkMethod):
    """Encoder + scanner with the residual, scan statistic and calibration (no verdicts)."""

    config: AntiForwardConfig

    def __init__(self, config: AntiForwardConfig) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        self.encoder = StampEncoder(config.encoder_width, config.payload_bits)
        self.scanner = Scanner(config.scanner_width, config.payload_bits)
        self.codec = (PayloadCodec(config.payload_bits, config.message_bits, config.bch_t,
                                   domain="neuralmark/anti_forward")
                      if config.payload_bits else None)
        self.calibration: dict[str, Any] = {}
        self.encoder.eval()
        self.scanner.eval()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder, "scanner": self.scanner}

    def extra_state(self) -> dict[str, Any]:
        return {"calibration": self.calibration}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.calibration = dict(state.get("calibration", {}))

    # -- helpers -------------------------------------------------------------
    def to_working(self, x: torch.Tensor) -> torch.Tensor:
        """The working-size view the scanner reads and ``certify`` adds its noise to.

        B×3×H×W → B×3×S×S (S = ``working_size``; antialiased bilinear, differentiable,
        no clamp).
        """
        return resize_square(x.to(self.device), self.config.working_size, clamp=False)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The view the encoder stamps and the scanner reads: B×3×(gh·S)×(gw·S).

        ``stamp_mode`` "stretch": the working-size view (gh = gw = 1). Else: the photo itself when
        its sides are multiples of S, else resized (antialiased bilinear, differentiable,
        no clamp) to the nearest whole grid of S² tiles, at least one.
        """
        c = self.config
        if c.stamp_mode == "stretch":
            return self.to_working(x)
        s, (h, w) = c.working_size, x.shape[-2:]
        size = (max(1, round(h / s)) * s, max(1, round(w / s)) * s)
        x = x.to(self.device)
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def tiles(self, grid: torch.Tensor) -> torch.Tensor:
        """B×C×(gh·S)×(gw·S) → (B·gh·gw)×C×S×S, tiles of one image consecutive (row-major)."""
        s = self.config.working_size
        b, ch, h, w = grid.shape
        return (grid.reshape(b, ch, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5)
                .reshape(-1, ch, s, s))

    def untile(self, tiles: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """Inverse of ``tiles``: (B·gh·gw)×C×S×S → B×C×h×w (h, w: the grid's size)."""
        s, ch = self.config.working_size, tiles.shape[1]
        return (tiles.reshape(b, h // s, w // s, ch, s, s).permute(0, 3, 1, 4, 2, 5)
                .reshape(b, ch, h, w))

    def tiled_residual(self, grid: torch.Tensor, bits: torch.Tensor | None,
                       chunk: int = 64) -> torch.Tensor:
        """Stamp residual of a ``to_grid`` view made tile by tile: B×3×(gh·S)×(gw·S).

        Each S² tile is stamped with ``tile_margin`` = m px of context on every side (the
        grid's outer border reflected), an (S + 2m)² image; the stamps are blended with a
        separable trapezoid window (0 → 1 over the first 2m px, 1 inside, 1 → 0 over the
        last 2m), whose shifted copies at a stride of S sum to 1, divided by the summed
        weights: a convex mix (|residual| ≤ strength) that is each tile's own stamp
        away from its borders and crosses over linearly within m px of them. m = 0:
        abutting tiles, each stamped alone. (``unfold`` / ``fold`` overlap-add: kornia has
        none.) ``bits``: B×k payload words (one per image) or ``None``; ``chunk``: tiles
        per encoder call.
        """
        s, m, (b, _, h, w) = self.config.working_size, self.config.tile_margin, grid.shape
        k = s + 2 * m
        padded = F.pad(grid, (m, m, m, m), mode="reflect") if m else grid
        patches = F.unfold(padded, k, stride=s)                            # b (3 k k) L
        n_tiles = patches.shape[-1]
        t = patches.transpose(1, 2).reshape(b * n_tiles, 3, k, k)          # (b L) 3 k k
        tile_bits = None if bits is None else bits.repeat_interleave(n_tiles, dim=0)
        r = torch.cat([self.residual(t[i:i + chunk], None if tile_bits is None
                                     else tile_bits[i:i + chunk])
                       for i in range(0, t.shape[0], chunk)])             # (b L) 3 k k
        if not m:
            return self.untile(r, b, h, w)
        pos = torch.arange(k, dtype=grid.dtype, device=grid.device) + 0.5
        win1 = torch.minimum(pos, k - pos).div(2 * m).clamp(max=1.0)       # k, > 0
        win = (win1[:, None] * win1[None, :]).flatten()                    # (k k)
        r = r.reshape(b, n_tiles, 3, k * k)
        size = (h + 2 * m, w + 2 * m)

        def overlap_add(v: torch.Tensor) -> torch.Tensor:                  # b L 3 (k k)
            return F.fold((v * win).reshape(v.shape[0], n_tiles, -1).transpose(1, 2), size,
                          k, stride=s)                                     # b 3 h+2m w+2m

        den = overlap_add(torch.ones(1, n_tiles, 1, k * k, dtype=r.dtype, device=r.device))
        mix = overlap_add(r) / den
        # neighbours' stamps of the same pixels differ (each tile's GroupNorm and shaping see
        # its own extent), and a plain mix of unlike patterns halves the energy mid-band (a
        # seam again, measured); so each value keeps the mix's sign and takes the weighted
        # RMS of the stamps as its size: the energy of either stamp, no more than strength
        rms = (overlap_add(r * r) / den).sqrt()
        return (torch.sign(mix) * rms)[..., m:m + h, m:m + w]

    def stamp_residual(self, grid: torch.Tensor, bits: torch.Tensor | None) -> torch.Tensor:
        """The deployed stamp of a ``to_grid`` view: B×3×H×W, |value| ≤ strength.

        "tiles": ``tiled_residual`` (each tile with its margin, blended); "stretch" (the
        working-size view) and "conv" (the whole grid at once): ``residual``.
        """
        if self.config.stamp_mode == "tiles":
            return self.tiled_residual(grid, bits)
        return self.residual(grid, bits)

    def grid_logits(self, grid: torch.Tensor) -> torch.Tensor:
        """Scanner logits of a ``to_grid`` view, averaged over its tiles: B×(2 + k)."""
        t = self.tiles(grid)
        return self.scanner(t).reshape(grid.shape[0], t.shape[0] // grid.shape[0], -1).mean(1)

    def _bits(self, key: WatermarkKey | None, batch: int) -> torch.Tensor | None:
        """Keyed payload word repeated over the batch (B×k) or ``None`` without payload."""
        if self.codec is None:
            return None
        if key is None:
            raise InputError("this anti_forward model carries a payload: stamping needs a key")
        word = torch.from_numpy(self.codec.encode(key)).float().to(self.device)
        return word.unsqueeze(0).expand(batch, -1)

    def residual(self, xw: torch.Tensor, bits: torch.Tensor | None) -> torch.Tensor:
        """Stamp residual at the working size: B×3×S×S, |value| ≤ strength (with
        ``target_psnr``: each image's residual at the RMS of that PSNR instead)."""
        c = self.config
        t = self.encoder(xw, bits)
        if c.residual_highpass > 0:
            t = t - shaping.blur(t, c.residual_highpass, "reflect")
        if c.residual_window > 0:
            energy = t.pow(2).mean(dim=1, keepdim=True)                          # b 1 s s
            local = shaping.local_mean(energy, c.residual_window)
            overall = energy.mean(dim=(2, 3), keepdim=True)
            # relative floor: a region the encoder left (almost) empty gains at most 100×
            t = t * (overall / (local + 1e-4 * overall + 1e-12)).sqrt()
            if c.residual_masking > 0:
                t = t * shaping.texture_weight(xw, c.residual_masking, power=0.5)
        r = c.strength * t.clamp(-1.0, 1.0)
        if c.target_psnr is not None:  # every image's stamp at one RMS (one PSNR)
            rms = r.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()              # b 1 1 1
            r = r * (10 ** (-c.target_psnr / 20) / (rms + 1e-12))
        return r

    def _noise_bank(self, h: int, w: int) -> torch.Tensor:
        """The fixed Gaussian draws of the scan statistic: K×3×h×w (seeded by config.seed)."""
        g = torch.Generator().manual_seed(self.config.seed + 7919)
        k = self.config.score_noise_samples
        return torch.randn(k, 3, h, w, generator=g).to(self.device)

    # -- public scanner API ----------------------------------------------------
    def scanner_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Scanner class logits, no noise: B×3×H×W in [0,1] → B×2 (class 1 = stamped).

        Resizes to the working size (or the tile grid, ``stamp_mode``) inside;
        differentiable w.r.t. ``images``.
        """
        return self.grid_logits(self.to_grid(images))[:, :2]

    def classifier_module(self) -> torch.nn.Module:
        """An ``nn.Module`` whose ``forward`` is ``scanner_logits`` (for torchattacks)."""
        return _ScannerClassifier(self)

    @torch.no_grad()
    def scan_margins(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """The scanner's logit margins ``l₁ − l₀`` that ``scan_statistic`` reduces.

        Args:
            images: B×3×H×W in [0, 1].
            batch_size: scanner forwards per call.

        Returns:
            B×K margins on the CPU: K = ``score_noise_samples`` fixed noise draws of σ for
            noise-trained variants, K = 1 (no noise) otherwise; with a tile grid
            (``stamp_mode``) the logits are averaged over the tiles first.
        """
        c = self.config
        out = []
        bank = None
        for i in range(0, images.shape[0], batch_size):
            xw = self.to_grid(images[i:i + batch_size])
            if c.train_sigma <= 0:
                logits = self.grid_logits(xw)[:, :2]
                out.append((logits[:, 1] - logits[:, 0])[:, None])           # b 1
                continue
            if bank is None or bank.shape[-2:] != xw.shape[-2:]:
                bank = self._noise_bank(*xw.shape[-2:])
            b, k = xw.shape[0], bank.shape[0]
            noisy = (xw[:, None] + c.sigma * bank[None]).flatten(0, 1)  # (b k) 3 h w
            margins = []
            for j in range(0, noisy.shape[0], batch_size):
                logits = self.grid_logits(noisy[j:j + batch_size])[:, :2]
                margins.append(logits[:, 1] - logits[:, 0])
            out.append(torch.cat(margins).view(b, k))                          # b k
        return torch.cat(out).cpu()

    def scan_statistic(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """The calibrated statistic: B×3×H×W → B values, ``score_aggregation`` of
        ``scan_margins`` (default: the mean logit margin over the noise bank).
        """
        return aggregate_margins(self.scan_margins(images, batch_size),
                                 self.config.score_aggregation)

    @torch.no_grad()
    def calibrate(self, clean: torch.Tensor, generator: torch.Generator | None = None,
                  source: str = "val", groups: Sequence[str] | None = None,
                  kinds: Sequence[str] | None = None) -> dict[str, Any]:
        """Set the clean-score calibration from held-out clean images.

        Args:
            clean: N×3×H×W clean images in [0, 1].
            generator: seeds the augmented views.
            source: where the images come from (recorded).
            groups: N labels, the distinct source each image comes from (crops of one
                photo share one); optional, default: every image its own.
            kinds: N labels, the kind of image (e.g. "photo", "procedural"); with them
                the record gets ``by_kind`` (``kind_calibration``): the threshold and the
                group-level false-positive rate of each kind and of all together, and the
                per-image scores with their labels (``image_statistics``, ``image_groups``,
                ``image_kinds``). The deployed threshold stays the pooled one either way.

        Returns:
            The calibration record (also stored in ``extra_state``): sorted clean
            statistics (the image itself plus views through the full-strength
            augmentation chain, ``ceil(calibration_scores / N)`` per image).

        Raises:
            InputError: ``groups`` or ``kinds`` not one label per image.
        """
        c = self.config
        n_images = clean.shape[0]
        for name, labels in (("groups", groups), ("kinds", kinds)):
            if labels is not None and len(labels) != n_images:
                raise InputError(f"calibrate: {name} has {len(labels)} labels for "
                                 f"{n_images} images (one per image)")
        if kinds is not None and "all" in kinds:
            raise InputError('calibrate: "all" is reserved for the pooled row of by_kind; '
                             "name that kind otherwise")
        xw = self.to_grid(clean).clamp(0, 1)
        views = max(1, math.ceil(c.calibration_scores / n_images))
        chain = StochasticAugmentation(c.aug, 1.0)
        per_view = [self.scan_statistic(xw)]                                   # views × n
        for _ in range(views - 1):
            per_view.append(torch.cat([self.scan_statistic(chain(xw[i:i + 64], generator))
                                       for i in range(0, n_images, 64)]))
        scores = torch.stack(per_view, dim=1)                                  # n views
        values = sorted(float(v) for v in scores.flatten())
        n = len(values)
        threshold = threshold_at(values, c.fpr)
        self.calibration = {
            "clean_statistics": values, "n_scores": n, "n_images": int(n_images),
            "views_per_image": views, "source": source, "fpr_target": c.fpr,
            "threshold_statistic": threshold,
            "note": ("detected iff p=(1+#clean>=s)/(N+1) <= fpr; threshold_statistic: s must "
                     "exceed it" if threshold is not None else
                     f"only {n} clean scores: p can never reach fpr={c.fpr:g}"),
        }
        if kinds is not None:
            labels = list(groups) if groups is not None else [str(i) for i in range(n_images)]
            per_image = scores.tolist()
            self.calibration["by_kind"] = kind_calibration(per_image, labels, list(kinds),
                                                           c.fpr, threshold)
            # kept so any other threshold can be judged by kind later (kind_calibration)
            self.calibration.update(image_statistics=per_image, image_groups=labels,
                                    image_kinds=list(kinds))
        return self.calibration


def aggregate_margins(margins: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce B×K logit margins ``l₁ − l₀`` (one per noise draw) to B statistics.

    ``how``: "mean_margin" (their mean), "mean_probability" (the mean of their sigmoid,
    P(stamped) per draw: a draw pushed far below 0 lowers it by at most 1/K),
    "vote_share" (the share of draws with a positive margin).

    Raises:
        ValueError: an unknown ``how`` or margins that are not B×K.
    """
    if margins.ndim != 2 or margins.shape[1] == 0:
        raise ValueError(f"margins must be B×K with K ≥ 1, got {tuple(margins.shape)}")
    if how == "mean_margin":
        return margins.mean(dim=1)
    if how == "mean_probability":
        return torch.sigmoid(margins).mean(dim=1)
    if how == "vote_share":
        return (margins > 0).float().mean(dim=1)
    raise ValueError(f"unknown score aggregation {how!r}; valid: mean_margin, "
                     "mean_probability, vote_share")


def threshold_at(values: Sequence[float], fpr: float) -> float | None:
    """The statistic a score must exceed for ``p = (1 + #clean ≥ s) / (N + 1) ≤ fpr``.

    ``values``: the N clean scores, sorted ascending. ``None`` when N is too small for any
    score to reach ``fpr``.
    """
    n = len(values)
    k_max = math.floor(fpr * (n + 1)) - 1   # clean scores allowed at or above s
    return values[n - 1 - k_max] if 0 <= k_max < n else None


def kind_calibration(scores: Sequence[Sequence[float]], groups: Sequence[str],
                     kinds: Sequence[str], fpr: float,
                     deployed: float | None) -> dict[str, dict[str, Any]]:
    """Per kind of image (and ``"all"``): its own threshold and its group-level FPR.

    Args:
        scores: N lists, the clean scores of each image (itself and its views).
        groups: N distinct-source labels (a group is one photo, one synthetic image).
        kinds: N kind labels.
        fpr: the level.
        deployed: the pooled threshold (``threshold_statistic``), or ``None``.

    Returns:
        ``{kind: {"n_images", "n_groups", "n_scores", "threshold_statistic" (this kind's
        own, at fpr over its scores), "max_statistic", "at_own" / "at_deployed": the
        scores above that threshold ("scores_above") and the groups with any score above
        it, counted once each (``stats.clustered_rate``: its interval bounds the
        per-image rate by the number of groups, not of scores)}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind in [*sorted(set(kinds)), "all"]:
        rows = [i for i, k in enumerate(kinds) if kind in ("all", k)]
        flat = [(float(s), groups[i]) for i in rows for s in scores[i]]
        values = sorted(s for s, _ in flat)
        own = threshold_at(values, fpr)
        entry: dict[str, Any] = {
            "n_images": len(rows), "n_groups": len({groups[i] for i in rows}),
            "n_scores": len(values), "threshold_statistic": own,
            "max_statistic": values[-1]}
        for name, thr in (("at_own", own), ("at_deployed", deployed)):
            if thr is None:
                entry[name] = None
                continue
            flags = [s > thr for s, _ in flat]
            entry[name] = {"threshold": thr, "scores_above": sum(flags),
                           **clustered_rate(flags, [g for _, g in flat])}
        out[kind] = entry
    return out
