"""``AntiForwardConfig``: the hyper-parameters of ``anti_forward`` (contract: the package doc)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from neuralmark.components.attacks.stochastic import StochasticAugConfig
from neuralmark.components.methods.base import MethodConfig


class AntiForwardConfig(MethodConfig):
    """Hyper-parameters of ``anti_forward``; profiles override sizes only."""

    method: Literal["anti_forward"] = "anti_forward"
    variant: Literal["baseline", "rs", "rs_aug"] = "rs_aug"
    # nets
    working_size: int = 128
    encoder_width: int = 32
    scanner_width: int = 32
    #: largest change of a pixel value the stamp may make (tanh output × strength)
    strength: float = Field(0.1, gt=0.0, le=1.0)
    #: None (default): the stamp's size is whatever the encoder and the image loss make it.
    #: A number (dB): every stamp residual is rescaled, per image at the scanner's view, to
    #: the RMS 10^(−target_psnr / 20) of that PSNR (images in [0, 1]; clipping to [0, 1]
    #: only lowers the error), in training and at stamping, so a fine-tune (adversarial or
    #: not, joint encoder + scanner) moves where the stamp is, not how large it is. |stamp|
    #: may then exceed ``strength``, which still bounds the output before the rescaling
    target_psnr: float | None = Field(None, gt=0.0, le=80.0)
    #: where the stamp is made. "stretch" (the seed's one-image pipeline): on the
    #: working-size view, the residual stretched bilinearly to the photo. "tiles" / "conv":
    #: at the photo's resolution: the photo is read as a grid of working_size² tiles
    #: (resized to the nearest whole grid first when its sides are not multiples of
    #: working_size) and the scanner averages its logits over the tiles; "tiles" stamps
    #: each tile on its own (blended across the borders: ``tile_margin``), "conv" runs the (fully
    #: convolutional) encoder over the whole grid at once (no seams). Default "stretch":
    #: with the shipped weights re-calibrated on tile grids (a tiled deployment needs its
    #: own calibration) the photo-resolution modes detect none of the held-out stamped
    #: photos at fpr 1e-3 (model card, issue #18)
    stamp_mode: Literal["stretch", "tiles", "conv"] = "stretch"
    #: "tiles" only: px of real context each tile is stamped with beyond each of its
    #: borders (the grid's outer border: reflected); two neighbours' stamps are then
    #: blended linearly across a band of 2·tile_margin px centred on their shared border
    #: (weights summing to 1, so |stamp| ≤ strength still), so the shaping's edge effects
    #: fall where the weight is low and no border is a seam. 0: abutting tiles, each
    #: stamped alone (the stamp thins at every tile border: a faint grid, measured in
    #: the card). A multiple of 4, below working_size / 2 (checked in "tiles" mode)
    tile_margin: int = Field(16, ge=0)
    # training
    #: True: train the scanner alone; the encoder (so the stamp and its PSNR) stays as loaded
    #: and the image loss is not used. For fine-tuning a shipped scanner on the view it is
    #: deployed on (``fit`` trains on ``to_grid`` views: in "tiles" / "conv" mode, whole tile
    #: grids, stamped as deployed, with their logits averaged over the tiles)
    train_scanner_only: bool = False
    #: adversarial training (off at 0, the default, so every figure of a bundle trained
    #: without it keeps its meaning): the L∞ budget (images in [0, 1], at the scanner's view)
    #: of SmoothAdv PGD on the scanner's inputs (``training.adversarial_views``): a share
    #: ``adversarial_fraction`` of each batch's stamped views pushed toward "clean" and as
    #: many clean views toward "stamped", then noised and trained on like the rest
    adversarial_eps: float = Field(0.0, ge=0.0, le=0.25)
    #: share of the batch's stamped views attacked (and as many clean ones), in (0, 1]
    adversarial_fraction: float = Field(0.5, gt=0.0, le=1.0)
    #: PGD iterations of the inner attack (step size 2.5·ε / steps, random start)
    adversarial_steps: int = Field(4, ge=1)
    #: noise draws of σ averaged in the attacked soft classifier (SmoothAdv's m; 1 costs
    #: what plain PGD costs); the attack has no noise when the variant trains without (σ 0)
    adversarial_noise_samples: int = Field(1, ge=1)
    #: steps over which the training ε ramps linearly from 0 to ``adversarial_eps`` (0: full
    #: from the first step)
    adversarial_ramp: int = Field(0, ge=0)
    steps: int = Field(20000, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    #: augmentation curriculum (rs_aug): strength 0 until aug_start, full at aug_end
    aug_start: int = Field(5000, ge=0)
    aug_end: int = Field(100000, ge=0)
    aug: StochasticAugConfig = StochasticAugConfig()
    #: Gaussian noise σ of randomized smoothing (training for rs/rs_aug, and certify)
    sigma: float = Field(0.5, ge=0.0)
    sigma_warmup: int = Field(0, ge=0)
    #: steps of detection-only training (no noise, no image loss) before the σ and
    #: image-loss ramps start: a stamp constrained by ``residual_highpass`` /
    #: ``residual_window`` starts too weak for the scanner to find it under noise, and
    #: the image loss erased it first (measured)
    warmup_start: int = Field(0, ge=0)
    # smoothing at inference
    smoothing: bool = True
    n0: int = Field(100, ge=1)
    n: int = Field(1000, ge=1)
    #: certification level: each certificate of ``certify`` fails with probability at
    #: most this (Cohen et al.'s α; bundles written before the rename call it ``alpha``)
    certify_alpha: float = Field(1e-3, gt=0.0, lt=1.0)
    score_noise_samples: int = Field(8, ge=1)
    #: how ``scan_statistic`` reduces the scanner's logit margins over the
    #: ``score_noise_samples`` noise draws (noise-trained variants): "mean_margin" (the
    #: mean of l₁ − l₀, every bundle before af11), "mean_probability" (the mean of
    #: sigmoid(l₁ − l₀): a draw far on either side counts at most 1), "vote_share" (the
    #: share of draws with l₁ > l₀, the smoothed classifier's vote). The calibration is
    #: of one reduction: change it only with ``calibrate`` (af11 measured them under
    #: APGD-EoT: the card's "Session af11")
    score_aggregation: Literal["mean_margin", "mean_probability", "vote_share"] = "mean_margin"
    # payload (beyond the seed)
    payload_bits: int = Field(0, ge=0)
    message_bits: int = Field(0, ge=0)
    bch_t: int = Field(0, ge=0)
    payload_alpha: float = Field(1e-3, gt=0.0, lt=1.0)
    # detection
    #: p-value level of ``verify`` (the method's ``detection_alpha``): the target
    #: false-positive rate the scan statistic is calibrated for
    fpr: float = Field(1e-3, gt=0.0, lt=1.0)
    calibration_scores: int = Field(1000, ge=1)
    # losses
    detection_weight: float = Field(1.0, ge=0.0)
    payload_weight: float = Field(1.0, ge=0.0)
    mse_weight: float = Field(10.0, ge=0.0)
    ssim_weight: float = Field(1.0, ge=0.0)
    #: weight of the stamp's low-frequency energy (MSE of the residual blurred with a
    #: Gaussian of σ = lowfreq_sigma px at the working size): bands and colour casts
    lowfreq_weight: float = Field(0.0, ge=0.0)
    lowfreq_sigma: float = Field(3.0, gt=0.0)
    #: 0: the MSE weighs every pixel alike; 1: by texture masking (∝ 1 / (local std + 0.02)
    #: of the image's luma in a 7×7 window, mean 1 per image), so the stamp goes where
    #: texture hides it; in between: a mix
    texture_masking: float = Field(0.0, ge=0.0, le=1.0)
    #: weight of the RMS of the local stamp energy (r² averaged over 9×9 windows, relative
    #: to its mean): the same total energy costs more when it is concentrated in one region
    peak_weight: float = Field(0.0, ge=0.0)
    #: > 0: the encoder's output is high-passed before scaling (minus its Gaussian blur of
    #: this σ in px at the working size, clamped to ±1), so the stamp has no local mean:
    #: no colour cast or smooth band can form whatever the losses do (0: off, the seed)
    residual_highpass: float = Field(0.0, ge=0.0)
    #: > 0: the stamp's energy is spread evenly: the (high-passed) output is divided by its
    #: local RMS over windows of this many px and multiplied by its global RMS, so the
    #: encoder chooses the pattern and the total energy but cannot pile it into one region
    #: (a band at one edge is what the unconstrained encoder learned here)
    residual_window: int = Field(0, ge=0)
    #: 0: even energy; 1: energy ∝ the image's local luma std (7×7, + 0.02, mean 1 per
    #: image), i.e. more stamp where texture hides it; in between: a mix (needs
    #: ``residual_window``)
    residual_masking: float = Field(0.0, ge=0.0, le=1.0)
    image_loss_ramp: int = Field(0, ge=0)
    #: stop training after this many seconds (0: no limit); the steps done are recorded
    max_train_seconds: float = Field(0.0, ge=0.0)
    # logging
    log_every: int = Field(50, ge=1)
    figure_every: int = Field(0, ge=0)
    device: str = "auto"

    @model_validator(mode="before")
    @classmethod
    def _migrate_alpha(cls, data: Any) -> Any:
        """Read a config written before the rename: its ``alpha`` is ``certify_alpha``.

        Such a config is recognised by ``fpr`` beside ``alpha`` (a bundle's
        ``config.json`` holds every field). A bare ``alpha`` is refused: across methods
        ``alpha`` names the detection level, which is ``fpr`` here.
        """
        if not isinstance(data, Mapping) or "alpha" not in data:
            return data
        if "fpr" not in data or "certify_alpha" in data:
            raise ValueError(
                "anti_forward has no field 'alpha': its detection level is 'fpr' and its "
                "certification level 'certify_alpha' (configs written before the rename, "
                "with 'alpha' beside 'fpr', are read with alpha as certify_alpha)")
        migrated = {k: v for k, v in data.items() if k != "alpha"}
        migrated["certify_alpha"] = data["alpha"]
        return migrated

    @field_validator("working_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v < 32 or v % 16:
            raise ValueError(f"working_size must be a multiple of 16 and >= 32 (differentiable "
                             f"JPEG works on 16×16 macroblocks), got {v}")
        return v

    @model_validator(mode="after")
    def _tile_margin_fits(self) -> AntiForwardConfig:
        if self.stamp_mode == "tiles" and (self.tile_margin % 4
                                           or 2 * self.tile_margin >= self.working_size):
            raise ValueError(f"stamp_mode 'tiles' needs a tile_margin that is a multiple of "
                             f"4 (the encoder needs sides "
                             f"divisible by 8) below working_size / 2 = "
                             f"{self.working_size // 2}, got {self.tile_margin}")
        return self

    @property
    def train_sigma(self) -> float:
        """σ of the training noise: 0 for ``baseline``."""
        return 0.0 if self.variant == "baseline" else self.sigma

    @property
    def augmented(self) -> bool:
        return self.variant == "rs_aug"
