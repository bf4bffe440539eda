"""``output_mark``: watermark an image-processing model through its outputs (seed 001).

Zhang et al., AAAI'20. A protected model **M** maps domain A (rainy photos,
ribbed radiographs) to domain B (derained, de-boned). An embedder **H** (UNet)
hides one logo δ in every output: B → B′, invisibly. An extractor **R**
(CEILNet-style) recovers δ from B′ and returns a *blank* image for watermark-free
inputs (A, B). A PatchGAN **D** pushes B′ towards B. An attacker who trains a
surrogate **SM** on (A, B′) learns the mark with the task, so R finds δ in the
surrogate's outputs B″. Stage 2 ("adversarial training") trains one surrogate
(UNet, L2) on (A, B′) and fine-tunes R on A, B, B′, B″.

Losses (seed's notation; every λ is 1 except λ3 = 0.01)::

    L_emd = λ1·‖H(b) − b‖² + λ2·ℓ_perc(H(b), b) + λ3·ℓ_adv(D, H(b))
    L_ext = λ4·ℓ_wm + λ5·ℓ_clean + λ6·ℓ_cst,   L = L_emd + λ·L_ext
    ℓ_wm    = ‖R(b′) − δ‖² (+ ‖R(b″) − δ‖² in stage 2)
    ℓ_clean = ‖R(a) − δ0‖² + ‖R(b) − δ0‖²
    ℓ_cst   = mean over pairs x, y ∈ B′ ∪ B″ of ‖R(x) − R(y)‖²

(‖·‖² is the per-pixel mean, the seed's 1/N_c normalisation.)

Choices where the seed is vague (written down here, as promised):

* **Blank image δ0**: the all-ones (white) image, as in the seed's figures.
* **Logo δ**: ``config.logo = "key"`` (default) derives a colourful block
  pattern from the key's secret (HMAC-SHA256 → numpy RNG, ``logo_block`` px
  blocks, each RGB channel 0/1, about half ones, so NC(δ0, δ) ≈ 0.71); or a
  path to an image file (resized to the working size). A logo whose NC with
  the blank is already above the threshold could not be told from "no mark" and
  is refused (``InputError``), as is anything that is not an image.
* **NC**: ``neuralmark.components.metrics.normalized_correlation`` (uncentred, the seed's
  metric); success when NC > ``threshold`` (0.95, the seed's criterion).
* **Domain B**: the outputs of M (what the service releases), i.e. ``M(A)``.
  The clean term also sees the ground-truth targets, which look like the
  outputs of an independently trained model: false positives on them are the
  ones that matter (issue #6).
* **Perceptual loss**: no VGG here; ``perceptual="structural"`` is the
  non-learned substitute of ``neuralmark.components.nets.perceptual`` (1 − SSIM +
  Laplacian-pyramid L1 + Sobel-gradient L1). ``"none"`` drops the term.
* **Heads**: M and H are residual UNets (``clamp(x + r, 0, 1)``, near-identity
  at start); R is a CEILNet with a sigmoid head; D outputs patch logits and is
  trained with the non-saturating BCE GAN loss.
* **Data split**: the seed splits its data into a part for H/R (stage 1 and 2)
  and a disjoint part for the stage-2 surrogate. ``surrogate_fraction`` of the
  training pairs (default 0.5) go to the surrogate; R never sees them, so
  their clean images also serve as held-out null samples for calibration. With
  groups (``set_groups``: the source photo of each pair) the split keeps all
  crops of a photo on one side, so these null samples are as new to R as a
  test photo (crops of one photo are near-duplicates).
* **Photometric jitter** (``jitter``): half of each stage-1/2 batch gets a
  random channel permutation, per-channel gain, brightness, contrast and gamma
  (same draw for A, B, target and the B′ made of them): R must not read tone or
  colour as the mark. No tint for debone (``jitter_tint``): on gray radiographs
  it made stage 1 collapse to an unmarked H (B′ 55 dB, NC on B′ 0.76 = on clean
  B, every cell 0%); without it debone trains (``pipelines/output_mark.py``).
* **Registered name** (``variant``): ``neuralmark-output_mark`` is derain;
  debone and the task-specific variant register as
  ``neuralmark-output_mark-debone[-task_specific]``, each with its own
  champion (a shared name let a debone run replace the derain champion).
* **Stage-2 clean counterpart** (``stage2_clean_surrogate``): the stage-2
  surrogate is also trained on the clean pairs (A, M(A)); its outputs join
  R's clean term, so R learns the mark in B″, not the surrogate's artefacts.
* **Flat images** (``min_contrast``): an input whose channels all have a
  standard deviation below 1/255 cannot carry δ; ``verify`` answers
  *unreadable* and ``verify_model`` skips it (``n_unreadable``).
* **Stage 2** freezes H (the released B′ must not change) and fine-tunes R
  only. The surrogate's head is ``residual`` by default (restoration nets
  usually predict a residual; ``sigmoid`` is available).
* **Task-specific variant** (``task_specific=True``, seed's debone experiment):
  H takes A and must produce the target B with the mark (H *is* the marked M).
  M is still trained, as the plain baseline the seed compares PSNR/SSIM with,
  and its outputs are extra clean samples for calibration.
* **Any resolution**: inputs are resized to ``working_size``²; ``embed`` adds
  H's residual upsampled bilinearly; ``extract`` returns the logo estimate at
  the working size.
* **p-values**: at the end of ``fit`` the NC of R against δ is recorded on
  clean images (val A, B = M(A), ground truth; the surrogate part's A, B,
  ground truth) — the null distribution. ``verify``'s p-value is the empirical
  ``(1 + #{null ≥ NC}) / (n + 1)``; ``calibrate`` adds more null samples (e.g.
  outputs of an independently trained model). Without calibration the p-value
  is ``None`` with the reason.
* **verify_model** decides over a batch of a suspect model's outputs: share of
  outputs with NC > threshold (the seed's success rate); detected when that
  share ≥ ``model_min_share`` and, when calibrated, the binomial p-value of the
  count under the calibrated per-image false-positive rate ≤ ``model_alpha``.

Measured here (2 CPU cores, one thread; ``neuralmark protect --task derain
--profile tiny``: 32² working size, 164 crops of the sample photos split by
photo into 76 H/R + 88 surrogate pairs, 64 test pairs from other photos):

* Table 1: B′ at 44.5 dB / SSIM 0.987 (the seed: 39.98 / 47.89 dB); NC on B′
  0.999, success 100% (stage 1 and 2); clean B: 0% flagged, NC ≤ 0.93 after
  stage 2 (the blank's own NC with a key logo ≈ 0.66–0.71). Outputs of an
  independently trained model: 0% flagged (mean NC 0.674).
* Matrix, success stage-1 R (the seed's †) → stage-2 R: CNet 0 → 5%, Res9
  3 → 98%, Res16 3 → 95%, UNet·L2 2 → 94%, UNet·L1 73 → 100%, UNet·L1+adv
  98 → 100%, UNet·L2+adv 100 → 100%, UNet·perceptual 94 → 100%,
  UNet·perceptual+adv 95 → 100%; mean 52% → 88%. Spread spectrum 0–2%.
* Why the † rows are low only for the L2/CNet/Res cells (measured on the same
  run): the mark's RMS is 0.008 (42 dB), below the surrogates' own error
  (their PSNR to B′ is 31–38 dB), and a surrogate copies only part of it (the
  projection of SM(A) − M(A) on the mark: CNet 0.08–0.25, Res9 0.46, Res16
  0.56–0.65, UNet·L2 0.16 at 150 steps, cosine 0.06–0.24). Stage-1 R needs the
  whole mark; stage 2 teaches it to read the partial copy. Surrogates trained
  with L1, a discriminator or the structural loss keep more high-frequency
  detail and copy the mark well enough for stage-1 R. CNet (no down-sampling)
  copies least and stays below the threshold (NC 0.80); with 600 surrogate
  steps its copy fraction fell (0.25 → 0.08) while Res16's rose (0.56 → 0.65,
  100% with a stage-2 R fine-tuned without the clean counterpart).
* The false positives of the previous tiny run (41% of clean test outputs, all
  crops of ``rocket``, ``retina`` and one procedural image; brightness was not
  the common factor: ``retina`` has mean 0.48) came from R reading colour/tone
  statistics as the mark. Measured fixes, clean-B FPR stage 1 / stage 2:
  none (per-crop split) 33% / 39%; ``jitter`` 0.5 + split by photo: 0% / 9%
  (stage 2 flagged 5 ``rocket`` and 1 ``retina`` crops); plus
  ``stage2_clean_surrogate``: 0% / 0%. The jitter also moved B′ from 32.3 to
  44.5 dB at the same λ1 = 10 (λ1 = 3 with jitter, per-crop split: 44.9 dB but
  11–16% of clean B flagged). A lower ``stage2_lr`` (2e-4, no clean
  counterpart) made stage 2 worse (17%).
* Flat images: a clean pure-red image gave NC 0.99 with the stage-2 R, while
  black, white, grey and near-black noise stay at 0.66; hence ``min_contrast``:
  a flat input is *unreadable* and never counted as a hit.
* Ablations (same run, 800 steps): without ℓ_clean R returns the logo on
  everything (NC 1.0 on clean A and B, 100% flagged); without ℓ_cst the
  UNet·L2 surrogate's success falls to 14% (NC 0.77).
* Wall time: 5 min 55 s for the whole pipeline (nothing cached), 3 min 58 s
  on a rerun with the surrogate cells cached.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator
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
    pick_device,
    resize_square,
)
from neuralmark.components.methods.registry import register
from neuralmark.components.metrics import normalized_correlation, psnr, ssim
from neuralmark.components.nets.ceilnet import CEILNet
from neuralmark.components.nets.image_nets import SURROGATE_ARCHS, SurrogateArch, build_image_net
from neuralmark.components.nets.patchgan import PatchDiscriminator
from neuralmark.components.nets.perceptual import structural_perceptual_loss
from neuralmark.components.nets.unet import UNet
from neuralmark.components.stats import binomial_sf

#: loss terms an attacker's surrogate can combine (seed 001, Table 3)
SURROGATE_LOSS_TERMS: tuple[str, ...] = ("l1", "l2", "perceptual", "adversarial")
#: the seed's Table 3 columns
SURROGATE_LOSSES: tuple[str, ...] = ("l1", "l1+adversarial", "l2", "l2+adversarial",
                                     "perceptual", "perceptual+adversarial")
_FINGERPRINT_DOMAIN = b"neuralmark/output_mark/fingerprint"


# --------------------------------------------------------------------------- config
class SurrogateSettings(BaseModel):
    """How a surrogate SM is trained (stage 2, and each cell of the attack matrix).

    Attributes:
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet``.
        loss: ``+``-joined terms of ``l1``, ``l2``, ``perceptual``, ``adversarial``.
        output: head of the surrogate (``residual`` or ``sigmoid``).
        width: base channels.
        depth: UNet depth.
        steps: optimiser steps.
        batch_size: pairs per step.
        lr: Adam learning rate.
        adv_weight: weight of the adversarial term (pix2pix's 1:100 ratio).
        seed: seeds the init and the batch order.
        device: ``auto`` (cuda when present) or a torch device string.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: SurrogateArch = "unet"
    loss: str = "l2"
    output: Literal["residual", "sigmoid"] = "residual"
    width: int = Field(32, ge=1)
    depth: int = Field(3, ge=1)
    steps: int = Field(2000, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    adv_weight: float = Field(0.01, ge=0)
    seed: int = 0
    device: str = "auto"

    @field_validator("loss")
    @classmethod
    def _known_terms(cls, value: str) -> str:
        parse_loss(value)
        return value


class OutputMarkConfig(MethodConfig):
    """Hyper-parameters of ``output_mark``; profiles override sizes only.

    λ names follow the seed: ``lambda_mse`` λ1, ``lambda_perc`` λ2,
    ``lambda_adv`` λ3 (0.01), ``lambda_ext`` λ, ``lambda_wm`` λ4,
    ``lambda_clean`` λ5, ``lambda_cst`` λ6.

    ``perceptual``: ``"structural"`` = the documented non-learned substitute for
    VGG features (1 − SSIM + Laplacian-pyramid L1 + Sobel-gradient L1, see
    ``neuralmark.components.nets.perceptual``); ``"none"`` drops the term. No downloaded
    weights either way.
    """

    method: Literal["output_mark"] = "output_mark"
    #: host task the pairs come from (a label kept in the bundle; the pipeline picks
    #: the dataset from it: derain → voc_derain, debone → chestxray8)
    task: Literal["derain", "debone"] = "derain"
    #: seed's task-specific variant: H maps A to the marked target (H is M)
    task_specific: bool = False
    working_size: int = Field(256, ge=16)
    # logo
    #: "key" (key-seeded block pattern) or the path of an image file
    logo: str = "key"
    #: secret whose logo fit() hides when no key is passed (the evaluation key's default)
    logo_secret: str = "neuralmark-eval"
    logo_block: int = Field(8, ge=1)
    threshold: float = Field(0.95, gt=0, lt=1)
    #: an input whose every channel has a standard deviation below this (at the working
    #: size) is *unreadable*: a flat image has no spatial content that could carry δ, and
    #: R's answer on one flat colour is one arbitrary point (measured: NC 0.99 on a clean
    #: pure-red image), so verify says "unreadable" instead of guessing
    min_contrast: float = Field(1 / 255, ge=0)
    # networks
    model_width: int = Field(32, ge=1)
    model_depth: int = Field(4, ge=1)
    embed_width: int = Field(32, ge=1)
    embed_depth: int = Field(4, ge=1)
    extract_width: int = Field(32, ge=1)
    extract_blocks: int = Field(9, ge=0)
    disc_width: int = Field(64, ge=1)
    disc_layers: int = Field(3, ge=1)
    # protected model M
    model_steps: int = Field(2000, ge=0)
    model_lr: float = Field(2e-4, gt=0)
    # stage 1 (H, R, D)
    steps: int = Field(4000, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    perceptual: Literal["structural", "none"] = "structural"
    lambda_mse: float = 1.0
    lambda_perc: float = 1.0
    lambda_adv: float = 0.01
    lambda_ext: float = 1.0
    lambda_wm: float = 1.0
    lambda_clean: float = 1.0
    lambda_cst: float = 1.0
    #: share of each stage-1/2 batch given a random photometric jitter (channel
    #: permutation, per-channel gain, brightness, contrast, gamma; the same draw for
    #: an image's A, B, target and the B′ made from it), so the clean term sees
    #: colours and tones the few training photos lack (see :func:`photometric_jitter`)
    jitter: float = Field(0.5, ge=0, le=1)
    #: ablation switches (seed's Figures 5 and 6)
    clean_loss: bool = True
    consistency_loss: bool = True
    # stage 2
    stage2: bool = True
    surrogate_fraction: float = Field(0.5, gt=0, lt=1)
    surrogate: SurrogateSettings = SurrogateSettings()
    stage2_steps: int = Field(2000, ge=0)
    stage2_lr: float = Field(1e-4, gt=0)
    #: stage 2 also trains the same surrogate on the *clean* pairs (A, M(A)) and adds its
    #: outputs to R's clean term, so R learns the mark, not the surrogate's artefacts
    stage2_clean_surrogate: bool = True
    # verification
    model_min_share: float = Field(0.5, gt=0, le=1)
    model_alpha: float = Field(1e-3, gt=0, lt=1)
    calibration_max: int = Field(4096, ge=1)
    eval_batch: int = Field(32, ge=1)
    device: str = "auto"

    @property
    def jitter_tint(self) -> bool:
        """Whether the photometric jitter tints: yes for derain (colour photos), not for
        debone (gray radiographs, where a tint is out of domain)."""
        return self.task != "debone"

    @property
    def variant(self) -> str | None:
        """Registered-model suffix (``neuralmark.runtime.settings.model_name``): ``None`` for
        derain, else the task, plus ``task_specific`` for the seed's variant. Models of
        different tasks answer different questions, so each has its own champion."""
        parts = [] if self.task == "derain" else [self.task]
        parts += ["task_specific"] if self.task_specific else []
        return "-".join(parts) or None


# --------------------------------------------------------------------------- logo
def key_fingerprint(secret: str) -> str:
    """Public fingerprint of a secret (HMAC-SHA256, 32 hex chars); safe to store."""
    return hmac.new(secret.encode(), _FINGERPRINT_DOMAIN, hashlib.sha256).hexdigest()[:32]


def key_logo(secret: str, size: int, block: int = 8) -> torch.Tensor:
    """Key-seeded colourful block pattern: the default logo δ.

    Args:
        secret: the key's secret.
        size: side of the logo (the working size).
        block: block side in px.

    Returns:
        3×size×size float32 in {0, 1}, about half ones per channel.
    """
    digest = hmac.new(secret.encode(), b"neuralmark/output_mark/logo", hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    cells = -(-size // block)
    grid = rng.integers(0, 2, size=(3, cells, cells)).astype(np.float32)
    img = np.repeat(np.repeat(grid, block, axis=1), block, axis=2)[:, :size, :size]
    return torch.from_numpy(np.ascontiguousarray(img))


def _logo_tensor(source: Any) -> torch.Tensor:
    """Any image-like ``source`` → C×H×W float in [0, 1]; ``InputError`` otherwise."""
    hint = ("a logo must be an image: a path to an image file, a PIL image, or a "
            "C×H×W / H×W array in [0, 1] (or uint8)")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"logo file {str(path)!r} does not exist; {hint}")
        try:
            with Image.open(path) as im:
                im.load()
                source = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"logo file {str(path)!r} is not an image ({err}); {hint}") from None
    if isinstance(source, Image.Image):
        source = np.asarray(source.convert("RGB"))
        return torch.from_numpy(source.copy()).permute(2, 0, 1).float() / 255
    if isinstance(source, np.ndarray):
        if source.ndim == 3 and source.shape[-1] in (1, 3) and source.shape[0] not in (1, 3):
            source = np.moveaxis(source, -1, 0)
        source = torch.from_numpy(np.ascontiguousarray(source))
    if not isinstance(source, torch.Tensor):
        raise InputError(f"{hint}; got {type(source).__name__}")
    x = source.detach().cpu()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3) or min(x.shape[-2:]) < 2:
        raise InputError(f"{hint}; got an array of shape {tuple(source.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif not x.is_floating_point():
        raise InputError(f"{hint}; got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise InputError(f"{hint}; got values outside [0, 1]")
    return x.expand(3, -1, -1).contiguous()


def load_logo(source: Any, size: int, threshold: float = 0.95, secret: str | None = None,
              block: int = 8) -> torch.Tensor:
    """The logo δ at the working size.

    Args:
        source: ``"key"`` (key pattern of ``secret``), a path to an image file, a
            PIL image, or an image array/tensor (C×H×W, H×W or H×W×C).
        size: working size.
        threshold: NC success threshold; a logo at least this close to the blank
            (all-ones) image is refused.
        secret: the key's secret (for ``"key"``).
        block: block size of the key pattern.

    Returns:
        3×size×size float32 in [0, 1].

    Raises:
        InputError: not an image, or indistinguishable from the blank image.
    """
    if isinstance(source, str) and source == "key":
        if not secret:
            raise InputError("a key-derived logo needs the key's secret")
        logo = key_logo(secret, size, block)
    else:
        logo = _logo_tensor(source)
        logo = F.interpolate(logo[None], size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0].clamp(0, 1)
    nc_blank = float(normalized_correlation(logo[None], torch.ones_like(logo)[None])[0])
    if nc_blank >= threshold:
        raise InputError(f"the logo is too close to the blank (all-ones) image: NC = "
                         f"{nc_blank:.3f} ≥ threshold {threshold}; use a logo with more dark "
                         "or coloured area")
    return logo


class LogoStore(nn.Module):
    """Holds δ as a buffer (so bundles carry it in ``weights.safetensors``)."""

    def __init__(self, logo: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logo", logo.clone())


# --------------------------------------------------------------------------- helpers
def to_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize B×3×H×W to B×3×size×size (bilinear, antialiased); identity if already there."""
    return resize_square(x, size)


def _cb(callbacks: Callbacks | Sequence[Any]) -> Callbacks:
    return callbacks if isinstance(callbacks, Callbacks) else Callbacks(callbacks)


@torch.no_grad()
def apply_net(net: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              batch_size: int = 32, device: torch.device | None = None) -> torch.Tensor:
    """Run ``net`` over ``x`` (N×3×H×W) in eval mode and batches → N×3×H×W on the CPU."""
    if device is None:
        params = list(net.parameters()) if isinstance(net, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    was = net.training if isinstance(net, nn.Module) else None
    if isinstance(net, nn.Module):
        net.eval()
    out = [net(x[i:i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
    if isinstance(net, nn.Module) and was:
        net.train()
    return torch.cat(out) if out else x[:0].clone()


def photometric_jitter(images: Sequence[torch.Tensor], share: float, g: torch.Generator,
                       tint: bool = True) -> list[torch.Tensor]:
    """One random photometric change per image index, applied alike to every tensor.

    Each of the B images is changed with probability ``share``: channels
    permuted, each channel scaled by a gain in [0.4, 1.6] (only with
    ``tint``), then the whole
    image's brightness scaled by [0.25, 1.2], its contrast around its mean by
    [0.3, 1.3] and a gamma in [0.6, 1.7]; clamped to [0, 1]. The draw for image
    i is the same in every tensor of ``images`` (A, B and target of a pair stay a
    pair). Differentiable in the inputs.

    Args:
        images: tensors of shape B×3×S×S in [0, 1] (same B).
        share: probability that an image is changed.
        g: generator of the draws (CPU).
        tint: permute and scale the channels; off for gray tasks (debone), where
            a tint leaves the domain and measurably made stage 1 collapse to an
            unmarked H (B′ at 55 dB, NC on B′ = NC on clean B = 0.76).

    Returns:
        The changed tensors, same shapes.
    """
    if share <= 0 or not images:
        return list(images)
    n = images[0].shape[0]
    on = (torch.rand(n, generator=g) < share).float().view(n, 1, 1, 1)
    perm = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])          # n 3
    gain = 0.4 + 1.2 * torch.rand(n, 3, 1, 1, generator=g)
    if not tint:
        perm[:] = torch.arange(3)
        gain = gain.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    bright = 0.25 + 0.95 * torch.rand(n, 1, 1, 1, generator=g)
    contrast = 0.3 + torch.rand(n, 1, 1, 1, generator=g)
    gamma = torch.exp(torch.empty(n, 1, 1, 1).uniform_(-0.51, 0.53, generator=g))
    out = []
    for x in images:
        dev = x.device
        y = torch.stack([x[i, perm[i]] for i in range(n)]) * gain.to(dev) * bright.to(dev)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (mean + (y - mean) * contrast.to(dev)).clamp(1e-4, 1).pow(gamma.to(dev))
        w = on.to(dev)
        out.append(w * y.clamp(0, 1) + (1 - w) * x)
    return out


def group_split(groups: Sequence[Any], fraction: float, g: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split item indices in two parts, each group (all crops of a photo) in one part.

    Groups are visited in a random order (``g``) and go to the second part
    until it holds at least ``fraction`` of the items; the first part keeps at
    least one group.

    Returns:
        ``(first, second)`` index tensors (ascending).
    """
    names = [str(x) for x in groups]
    unique = list(dict.fromkeys(names))
    order = [unique[i] for i in torch.randperm(len(unique), generator=g).tolist()]
    target = len(names) * fraction
    second: set[str] = set()
    count = 0
    for name in order[: max(1, len(order) - 1)]:
        if count >= target:
            break
        second.add(name)
        count += names.count(name)
    flags = torch.tensor([x in second for x in names])
    return torch.nonzero(~flags).flatten(), torch.nonzero(flags).flatten()


def _batch(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """``size`` random indices below ``n`` (with replacement)."""
    return torch.randint(0, n, (size,), generator=g)


def _check_pairs(pairs: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(pairs, (tuple, list)) and len(pairs) == 2):
        raise InputError(f"{what} must be a pair (A, B) of N×3×H×W tensors")
    a, b = pairs
    for name, t in (("A", a), ("B", b)):
        check_images(t, 2)
        if t.shape[0] == 0:
            raise InputError(f"{what}: {name} is empty")
    if a.shape != b.shape:
        raise InputError(f"{what}: A and B differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a.float(), b.float()


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def consistency(r: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i ≠ j of the per-pixel mean ``(r_i − r_j)²`` (r: N×3×H×W)."""
    n = r.shape[0]
    if n < 2:
        return r.sum() * 0
    return 2 * n / (n - 1) * (r - r.mean(0, keepdim=True)).pow(2).mean()


# --------------------------------------------------------------------------- public pieces
def parse_loss(loss: str | Sequence[str]) -> frozenset[str]:
    """``"l2+adversarial"`` (or ``["l2", "adversarial"]``) → its set of terms.

    Raises:
        InputError: empty, or a term outside ``l1, l2, perceptual, adversarial``
            (``adv`` / ``perc`` are accepted aliases).
    """
    parts = loss.split("+") if isinstance(loss, str) else list(loss)
    alias = {"adv": "adversarial", "perc": "perceptual", "mse": "l2"}
    terms = {alias.get(p.strip().lower(), p.strip().lower()) for p in parts if p.strip()}
    bad = sorted(terms - set(SURROGATE_LOSS_TERMS))
    if bad or not terms:
        raise InputError(f"unknown surrogate loss term(s) {bad or [loss]}; combine "
                         f"{', '.join(SURROGATE_LOSS_TERMS)} with '+'")
    return frozenset(terms)


def surrogate_matrix_cells() -> list[tuple[str, str]]:
    """The seed's attack matrix: every arch with L2 (Table 2), UNet with every loss (Table 3).

    Returns:
        ``(arch, loss)`` cells, no duplicates, in table order.
    """
    cells = [(arch, "l2") for arch in SURROGATE_ARCHS]
    cells += [("unet", loss) for loss in SURROGATE_LOSSES if ("unet", loss) not in cells]
    return cells


_RECONSTRUCTION: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": lambda out, y: (out - y).abs().mean(),
    "l2": lambda out, y: (out - y).pow(2).mean(),
    "perceptual": structural_perceptual_loss,
}


def train_image_net(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss: str | Sequence[str], steps: int, batch_size: int, lr: float,
                    seed: int, device: torch.device, adv_weight: float = 0.01,
                    disc_width: int = 32, callbacks: Callbacks | Sequence[Any] = (),
                    desc: str = "train") -> nn.Module:
    """Supervised image-to-image training of ``net`` on (inputs, targets) pairs.

    Args:
        net: any B×3×H×W → B×3×H×W network.
        inputs: N×3×S×S in [0, 1].
        targets: N×3×S×S in [0, 1].
        loss: terms (see :func:`parse_loss`); ``adversarial`` trains a PatchGAN
            on targets (real) vs outputs (fake) alongside.
        steps, batch_size, lr, seed: the schedule (Adam, β = (0.5, 0.999)).
        device: where to train.
        adv_weight: weight of the adversarial term.
        disc_width: PatchGAN width when ``adversarial`` is used.
        callbacks: metrics/progress sinks (``{desc}_loss`` every ~10% of steps).
        desc: prefix of the reported metrics.

    Returns:
        ``net``, trained, in eval mode, on ``device``.
    """
    terms = parse_loss(loss)
    cb = _cb(callbacks)
    g = torch.Generator().manual_seed(seed)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    disc = opt_d = None
    if "adversarial" in terms:
        torch.manual_seed(seed + 1)
        disc = PatchDiscriminator(width=disc_width, n_layers=2).to(device).train()
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    n = inputs.shape[0]
    every = max(1, steps // 10)
    for step in range(steps):
        idx = _batch(n, batch_size, g)
        x, y = inputs[idx].to(device), targets[idx].to(device)
        out = net(x)
        total = out.sum() * 0
        parts: dict[str, float] = {}
        for term, fn in _RECONSTRUCTION.items():
            if term in terms:
                value = fn(out, y)
                total = total + value
                parts[term] = float(value.detach())
        if disc is not None and opt_d is not None:
            adv = _bce(disc(out), True)
            total = total + adv_weight * adv
            parts["adversarial"] = float(adv.detach())
        opt.zero_grad()
        total.backward()
        opt.step()
        if disc is not None and opt_d is not None:
            d_loss = 0.5 * (_bce(disc(y), True) + _bce(disc(out.detach()), False))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        if step % every == 0 or step == steps - 1:
            cb.on_metrics(step, {f"{desc}_loss": float(total.detach()),
                                 **{f"{desc}_{k}": v for k, v in parts.items()}})
            cb.on_progress(step + 1, steps, desc)
    return net.eval()


def _surrogate_settings(config: Any) -> SurrogateSettings:
    if config is None:
        return SurrogateSettings()
    if isinstance(config, OutputMarkConfig):
        return config.surrogate
    if isinstance(config, SurrogateSettings):
        return config
    if isinstance(config, Mapping):
        return SurrogateSettings.model_validate(dict(config))
    raise InputError(f"surrogate config must be SurrogateSettings, OutputMarkConfig or a dict, "
                     f"got {type(config).__name__}")


def train_surrogate(inputs: torch.Tensor, targets: torch.Tensor, arch: str | None = None,
                    loss: str | Sequence[str] | None = None,
                    config: SurrogateSettings | OutputMarkConfig | Mapping[str, Any] | None = None,
                    callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
    """The attacker: train a surrogate SM on the protected service's (input, output) pairs.

    Args:
        inputs: N×3×S×S domain-A images in [0, 1].
        targets: N×3×S×S outputs of the service (B′ when marked) in [0, 1].
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet`` (default: the config's).
        loss: ``+``-joined ``l1``, ``l2``, ``perceptual``, ``adversarial`` (default: the config's).
        config: ``SurrogateSettings`` (or an ``OutputMarkConfig``, whose
            ``surrogate`` part is used, or a dict).
        callbacks: metrics/progress sinks.

    Returns:
        The trained surrogate (eval mode; B×3×H×W → B×3×H×W in [0, 1]).

    Raises:
        InputError: bad tensors, unknown arch or loss term.
    """
    s = _surrogate_settings(config)
    a, b = _check_pairs((inputs, targets), "train_surrogate")
    arch = arch or s.arch
    if arch not in SURROGATE_ARCHS:
        raise InputError(f"unknown surrogate architecture {arch!r}; expected one of "
                         f"{list(SURROGATE_ARCHS)}")
    loss = loss or s.loss
    parse_loss(loss)
    torch.manual_seed(s.seed)
    net = build_image_net(arch, s.width, s.output, s.depth)
    name = loss if isinstance(loss, str) else "+".join(loss)
    return train_image_net(net, a, b, loss, s.steps, s.batch_size, s.lr, s.seed,
                           pick_device(s.device), s.adv_weight, callbacks=callbacks,
                           desc=f"surrogate_{arch}_{name.replace('+', '_')}")


def train_protected_model(pairs: tuple[torch.Tensor, torch.Tensor], config: OutputMarkConfig,
                          callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
    """Train the protected model M (residual UNet, L2) on (A, B) pairs.

    Args:
        pairs: ``(A, B)`` N×3×H×W in [0, 1] (resized to ``working_size``).
        config: the method config (``model_width``, ``model_depth``,
            ``model_steps``, ``model_lr``, ``batch_size``, ``seed``, ``device``).
        callbacks: metrics/progress sinks (``model_loss``).

    Returns:
        M in eval mode.
    """
    a, b = _check_pairs(pairs, "train_protected_model")
    s = config.working_size
    torch.manual_seed(config.seed)
    net = UNet(width=config.model_width, depth=config.model_depth, output="residual")
    return train_image_net(net, to_size(a, s), to_size(b, s), "l2", config.model_steps,
                           config.batch_size, config.model_lr, config.seed,
                           pick_device(config.device), callbacks=callbacks, desc="model")


@torch.no_grad()
def extraction_nc(extractor: nn.Module, outputs: torch.Tensor, logo: torch.Tensor,
                  batch_size: int = 32) -> torch.Tensor:
    """NC between R's extraction and the logo, per image.

    Args:
        extractor: R (B×3×S×S → B×3×S×S).
        outputs: N×3×H×W images in [0, 1] (resized to the logo's size).
        logo: 3×S×S δ.
        batch_size: images per forward pass.

    Returns:
        N NC values in [-1, 1].
    """
    size = logo.shape[-1]
    rec = apply_net(extractor, to_size(outputs.float(), size), batch_size)
    return normalized_correlation(rec, logo[None].cpu())


def success_rate(extractor: nn.Module, outputs: torch.Tensor, logo: torch.Tensor,
                 threshold: float = 0.95, batch_size: int = 32) -> float:
    """Seed 001's SR: share of ``outputs`` (N×3×H×W) whose extraction has NC > ``threshold``."""
    return float((extraction_nc(extractor, outputs, logo, batch_size) > threshold)
                 .float().mean())


class MarkedModel(nn.Module):
    """The watermarked service: ``H ∘ M`` (or ``H`` alone in the task-specific variant).

    Shapes: ``B×3×H×W`` → ``B×3×H×W`` in [0, 1], any size (H runs at the working
    size, its residual is upsampled).
    """

    def __init__(self, base: nn.Module | None, embedder: nn.Module, working_size: int) -> None:
        super().__init__()
        self.base, self.embedder, self.working_size = base, embedder, working_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x) if self.base is not None else x
        yw = to_size(y, self.working_size)
        residual = self.embedder(yw) - yw
        if tuple(residual.shape[-2:]) != tuple(y.shape[-2:]):
            residual = F.interpolate(residual, size=y.shape[-2:], mode="bilinear",
                                     align_corners=False)
        return (y + residual).clamp(0, 1)


# --------------------------------------------------------------------------- method
@register("output_mark")
class OutputMark(WatermarkMethod):
    """Seed 001's model watermark through outputs. See the module docstring."""

    own_pipeline = ("neuralmark protect --task derain|debone (neuralmark.pipelines.output_mark."
                    "output_mark_pipeline, configs/output_mark_pipeline.yaml)")

    Config = OutputMarkConfig
    config: OutputMarkConfig
    kind = "model"
    #: verify decides by NC > threshold (the seed's rule), not at a p-value level
    detection_alpha_field = None
    min_size = 16
    smoke_config = {"working_size": 32, "model_width": 4, "model_depth": 2, "embed_width": 4,
                    "embed_depth": 2, "extract_width": 4, "extract_blocks": 1, "disc_width": 4,
                    "disc_layers": 2, "model_steps": 2, "steps": 2, "batch_size": 2,
                    "stage2_steps": 2,
                    "surrogate": {"width": 4, "depth": 2, "steps": 2, "batch_size": 2}}

    def __init__(self, config: OutputMarkConfig) -> None:
        super().__init__(config)
        c = config
        torch.manual_seed(c.seed)
        self.M = UNet(width=c.model_width, depth=c.model_depth, output="residual")
        self.H = UNet(width=c.embed_width, depth=c.embed_depth, output="residual")
        self.R = CEILNet(width=c.extract_width, n_blocks=c.extract_blocks)
        self.D = PatchDiscriminator(width=c.disc_width, n_layers=c.disc_layers)
        self.logo_store = LogoStore(load_logo(c.logo, c.working_size, c.threshold,
                                              c.logo_secret, c.logo_block))
        self.fingerprint = key_fingerprint(c.logo_secret)
        self.null_scores: list[float] = []
        self.calibration_sources: list[str] = []
        self.train_groups: list[str] | None = None
        self.trained = False
        for m in self.modules().values():
            m.eval()

    # -- state ---------------------------------------------------------------
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

    def reference_logo(self, key: WatermarkKey) -> tuple[torch.Tensor, bool]:
        """(δ to compare against, whether ``key`` is the key the mark was trained for)."""
        if key_fingerprint(key.secret) == self.fingerprint:
            return self.logo.cpu(), True
        return key_logo(key.secret, self.config.working_size, self.config.logo_block), False

    def _working(self, x: torch.Tensor) -> torch.Tensor:
        return to_size(x.float(), self.config.working_size)

    # -- embedding and extraction ----------------------------------------------
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

    def hits(self, images: torch.Tensor, key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nc, hit)`` per image: hit = readable and NC > threshold (the seed's success)."""
        ncs = self.nc(images, key)
        return ncs, self._hit(ncs, images)

    def _hit(self, ncs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """B bools: NC above the threshold on a readable image (the seed's success)."""
        return (ncs > self.config.threshold) & self.readable(images)

    # -- p-values ----------------------------------------------------------------
    def calibrate(self, clean: torch.Tensor, source: str = "clean",
                  key: WatermarkKey | None = None) -> list[float]:
        """Add NC scores of watermark-free images (N×3×H×W) to the null distribution.

        Args:
            clean: images that carry no mark (A, B, outputs of an independent model).
            source: a label kept in ``calibration_sources``.
            key: key whose logo is the reference (default: the trained one).

        Returns:
            The N new null scores.
        """
        ref = self.logo.cpu() if key is None else self.reference_logo(key)[0]
        clean = clean[self.readable(clean).to(clean.device)]  # flat images are not scored
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
        """Forget the null scores (``fit`` recalibrates from scratch)."""
        self.null_scores, self.calibration_sources = [], []

    def p_value(self, score: float) -> tuple[float | None, str]:
        """Empirical p-value of one NC under the calibrated null, or ``None`` and why."""
        if not self.null_scores:
            return None, "no calibration: fit() or calibrate() has not run"
        n = len(self.null_scores)
        above = n - int(np.searchsorted(np.asarray(self.null_scores), score, side="left"))
        return (1 + above) / (n + 1), f"empirical over {n} clean images"

    def per_image_fpr(self) -> float | None:
        """Calibrated rate of clean images with NC > threshold (add-one estimate)."""
        if not self.null_scores:
            return None
        null = np.asarray(self.null_scores)
        return float((1 + (null > self.config.threshold).sum()) / (len(null) + 1))

    # -- verification ------------------------------------------------------------
    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        """One ``Verdict`` per image: NC of R's extraction with ``key``'s logo.

        ``detected`` iff NC > ``threshold``; ``p_value`` empirical (calibrated in fit).
        A flat image (see :meth:`readable`) is ``unreadable``.
        """
        check_images(images, self.min_size)
        ref, own = self.reference_logo(key)
        ncs = normalized_correlation(self.extract(images), ref[None]).tolist()
        ok = self.readable(images).tolist()
        t = self.config.threshold
        verdicts = []
        for score, readable in zip(ncs, ok, strict=True):
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

    def _outputs(self, model_or_outputs: Any, inputs: torch.Tensor | None) -> list[torch.Tensor]:
        if isinstance(model_or_outputs, nn.Module):
            if inputs is None:
                raise InputError("verify_model needs inputs= (domain-A images) to query a model")
            check_images(inputs, self.min_size)
            out = apply_net(model_or_outputs, inputs, self.config.eval_batch, None)
            return [out.clamp(0, 1)]
        if isinstance(model_or_outputs, torch.Tensor):
            check_images(model_or_outputs, self.min_size)
            return [model_or_outputs]
        if isinstance(model_or_outputs, (list, tuple)) and model_or_outputs:
            items = []
            for i, t in enumerate(model_or_outputs):
                if not isinstance(t, torch.Tensor):
                    raise InputError(f"output {i} is a {type(t).__name__}, not an image tensor")
                t = t[None] if t.ndim == 3 else t
                try:
                    check_images(t, self.min_size)
                except InputError as err:
                    raise InputError(f"output {i}: {err}") from None
                items.append(self._working(t))  # mixed sizes → one working size
            return items
        raise InputError("verify_model takes a model (with inputs=), a B×3×H×W tensor of its "
                         "outputs, or a list of output images; got "
                         f"{type(model_or_outputs).__name__}")

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
            ``score`` = share of outputs with NC > threshold (success rate);
            ``p_value`` = P(at least that many | clean model), binomial under the
            calibrated per-image FPR (``None`` without calibration);
            ``extra`` = the evidence (per-image NC, mean, median, counts).
        """
        outs = torch.cat(self._outputs(model_or_outputs, inputs))
        ok = self.readable(outs)
        n_flat = int((~ok).sum())
        if n_flat == outs.shape[0]:
            return Verdict.unreadable(f"all {n_flat} outputs are flat images (every channel's "
                                      f"std < {self.config.min_contrast:.4g}): none can carry "
                                      "the logo")
        outs = outs[ok.to(outs.device)]
        ref, own = self.reference_logo(key)
        ncs = normalized_correlation(self.extract(outs), ref[None])
        t, n = self.config.threshold, int(ncs.numel())
        k = int((ncs > t).sum())
        share = k / n
        fpr = self.per_image_fpr()
        p = binomial_sf(k, n, fpr) if fpr is not None else None
        detected = share >= self.config.model_min_share and (p is None or
                                                            p <= self.config.model_alpha)
        reason = f"{k}/{n} outputs carry the logo (NC > {t}); share {share:.2f} " \
                 f"{'≥' if share >= self.config.model_min_share else '<'} " \
                 f"{self.config.model_min_share}"
        reason += (f"; p={p:.3g} under a per-image clean rate of {fpr:.3g}" if p is not None
                   else "; p-value: no calibration (fit() or calibrate() has not run)")
        if n_flat:
            reason += f"; {n_flat} flat output(s) skipped (unreadable)"
        if not own:
            reason += "; the key is not the one this model was trained for"
        return Verdict(
            detected=detected, score=share, p_value=p,
            status=Status.DETECTED if detected else Status.NOT_DETECTED, reason=reason,
            extra={"success_rate": share, "n_outputs": n, "n_marked": k, "threshold": t,
                   "nc": [round(float(v), 5) for v in ncs], "nc_mean": float(ncs.mean()),
                   "nc_median": float(ncs.median()), "per_image_fpr": fpr,
                   "n_unreadable": n_flat,
                   "key_matches": own})

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

    # -- losses -------------------------------------------------------------------
    def _blank(self, like: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(like)

    def _embed_loss(self, h_out: torch.Tensor, h_ref: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_emd = λ1 MSE + λ2 perceptual + λ3 adversarial (B′ vs its reference)."""
        c = self.config
        mse = (h_out - h_ref).pow(2).mean()
        perc = structural_perceptual_loss(h_out, h_ref) if c.perceptual == "structural" \
            else mse * 0
        adv = _bce(self.D(h_out), True)
        loss = c.lambda_mse * mse + c.lambda_perc * perc + c.lambda_adv * adv
        return loss, {"h_mse": float(mse.detach()), "h_perc": float(perc.detach()),
                      "h_adv": float(adv.detach())}

    def _extract_loss(self, marked: list[torch.Tensor], clean: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_ext = λ4 ℓ_wm + λ5 ℓ_clean + λ6 ℓ_cst (one R forward over all images).

        ``marked``: batches that must give δ (B′, B″). ``clean``: K equally sized
        batches that must give the blank (A, B, targets). To halve R's cost, the
        clean term sees one *mixed* batch — image i taken from a random one of
        the K sources — scaled by K, an unbiased estimate of the seed's sum.
        """
        c = self.config
        mixed: list[torch.Tensor] = []
        if c.clean_loss and clean:
            pick = torch.randint(0, len(clean), (clean[0].shape[0],))
            mixed = [torch.stack(clean)[pick, torch.arange(pick.numel())]]     # b 3 s s
        sizes = [x.shape[0] for x in marked + mixed]
        rec = self.R(torch.cat(marked + mixed)).split(sizes)
        logo = self.logo[None].to(rec[0])
        r_marked = rec[: len(marked)]
        wm = sum((r - logo).pow(2).mean() for r in r_marked)
        cln = len(clean) * (rec[-1] - 1.0).pow(2).mean() if mixed else wm * 0
        cst = consistency(torch.cat(r_marked)) if c.consistency_loss else wm * 0
        loss = c.lambda_wm * wm + c.lambda_clean * cln + c.lambda_cst * cst
        return loss, {"r_wm": float(wm.detach()), "r_clean": float(cln.detach()),
                      "r_cst": float(cst.detach())}

    def _disc_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (_bce(self.D(real), True) + _bce(self.D(fake.detach()), False))

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """One differentiable loss over M, H, R and D on a batch (images serve as A and B)."""
        a = self._working(images.to(self.device))
        gt = a.flip(-1)  # any target: the contract only checks that gradients flow
        m_out = self.M(a)
        m_loss = (m_out - gt).pow(2).mean()
        h_in, h_ref = (a, gt) if self.config.task_specific else (m_out, m_out.detach())
        b_prime = self.H(h_in)
        emd, _ = self._embed_loss(b_prime, h_ref)
        ext, _ = self._extract_loss([b_prime], [a, h_ref])
        return m_loss + emd + self.config.lambda_ext * ext + self._disc_loss(h_ref, b_prime)

    # -- training -----------------------------------------------------------------
    def set_groups(self, groups: Sequence[Any] | None) -> None:
        """Remember the source group of each training pair (e.g. its photo) for the split."""
        self.train_groups = None if groups is None else [str(x) for x in groups]

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the H/R part and of the surrogate part of ``n`` training pairs.

        The seed's disjoint split (``surrogate_fraction`` to the surrogate),
        seeded by ``config.seed``; without stage 2 (or n < 2) both are everything.
        With groups (:meth:`set_groups`: n of them, at least two distinct) whole
        groups go to one part (:func:`group_split`), so the surrogate part holds
        photos R never saw and the null NC scores calibrated on it are honest
        for new photos (crops of one photo are near-duplicates to R).
        """
        g = torch.Generator().manual_seed(self.config.seed + 7)
        if not self.config.stage2 or n < 2:
            perm = torch.randperm(n, generator=g)
            return perm, perm
        groups = self.train_groups
        if groups is not None and len(groups) == n and len(set(groups)) >= 2:
            return group_split(groups, self.config.surrogate_fraction, g)
        perm = torch.randperm(n, generator=g)
        k = min(n - 1, max(1, round(n * self.config.surrogate_fraction)))
        return perm[k:], perm[:k]

    def working_pairs(self, pairs: Any, what: str = "pairs") -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``(A, B)`` (N×3×H×W in [0, 1]) and resize both to the working size."""
        a, b = _check_pairs(pairs, what)
        return to_size(a, self.config.working_size), to_size(b, self.config.working_size)

    def train_model(self, a: torch.Tensor, gt: torch.Tensor,
                    callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
        """Train M on (A, targets) (N×3×S×S) with :func:`train_protected_model`; keep it."""
        self.M = train_protected_model((a, gt), self.config, callbacks).to(self.device)
        return self.M

    def model_outputs(self, a: torch.Tensor) -> torch.Tensor:
        """Domain B: M's outputs on N×3×S×S inputs (no grad, batches, CPU)."""
        return apply_net(self.M, a, self.config.eval_batch, self.device)

    def marked_outputs(self, a: torch.Tensor) -> torch.Tensor:
        """B′: what the watermarked service returns for N×3×S×S inputs (H∘M, or H)."""
        h_in = a if self.config.task_specific else self.model_outputs(a)
        return apply_net(self.H, h_in, self.config.eval_batch, self.device)

    def train_embedder(self, a: torch.Tensor, b: torch.Tensor, gt: torch.Tensor,
                       callbacks: Callbacks | Sequence[Any] = (), step0: int = 0
                       ) -> dict[str, float]:
        """Stage 1: train H, R (jointly) and D.

        Args:
            a: N×3×S×S domain-A inputs.
            b: N×3×S×S M's outputs (H's input; ignored when task-specific).
            gt: N×3×S×S ground-truth targets (H's reference when task-specific).
            callbacks: metrics/progress sinks.
            step0: offset of the reported step numbers.

        Returns:
            The last reported metrics.
        """
        c, cb = self.config, _cb(callbacks)
        dev = self.device
        g = torch.Generator().manual_seed(c.seed + 1)
        opt = torch.optim.Adam(list(self.H.parameters()) + list(self.R.parameters()), lr=c.lr,
                               betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=(0.5, 0.999))
        self.H.train(), self.R.train(), self.D.train()
        every = max(1, c.steps // 20)
        metrics: dict[str, float] = {}
        for step in range(c.steps):
            idx = _batch(a.shape[0], c.batch_size, g)
            xa, xb, xg = photometric_jitter([a[idx].to(dev), b[idx].to(dev), gt[idx].to(dev)],
                                            c.jitter, g, tint=c.jitter_tint)
            h_in, h_ref = (xa, xg) if c.task_specific else (xb, xb)
            clean = [xa, xg] if c.task_specific else [xa, xb, xg]
            b_prime = self.H(h_in)
            emd, m1 = self._embed_loss(b_prime, h_ref)
            ext, m2 = self._extract_loss([b_prime], clean)
            loss = emd + c.lambda_ext * ext
            opt.zero_grad()
            loss.backward()
            opt.step()
            d_loss = self._disc_loss(h_ref, b_prime)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            if step % every == 0 or step == c.steps - 1:
                metrics = {"stage1_loss": float(loss.detach()), "d_loss": float(d_loss.detach()),
                           **m1, **m2}
                cb.on_metrics(step0 + step, metrics)
                cb.on_progress(step + 1, c.steps, "stage 1: H, R, D")
        self.H.eval(), self.R.eval(), self.D.eval()
        return metrics

    def finetune_extractor(self, a: torch.Tensor, b: torch.Tensor, gt: torch.Tensor,
                           b_prime: torch.Tensor, b_second: torch.Tensor,
                           callbacks: Callbacks | Sequence[Any] = (), step0: int = 0,
                           b_clean_second: torch.Tensor | None = None) -> dict[str, float]:
        """Stage 2: fine-tune R on the mix A, B, B′, B″ (H frozen).

        Args:
            a, b, gt: N×3×S×S inputs, M's outputs, targets (clean; ``b`` unused
                when task-specific).
            b_prime: N×3×S×S marked outputs H(·).
            b_second: N×3×S×S surrogate outputs SM(a).
            callbacks: metrics/progress sinks.
            step0: offset of the reported step numbers.
            b_clean_second: N×3×S×S outputs of the same surrogate trained on clean
                pairs (``stage2_clean_surrogate``): extra clean images.

        Returns:
            The last reported metrics.
        """
        c, cb = self.config, _cb(callbacks)
        dev = self.device
        g = torch.Generator().manual_seed(c.seed + 2)
        opt = torch.optim.Adam(self.R.parameters(), lr=c.stage2_lr, betas=(0.5, 0.999))
        self.R.train()
        every = max(1, c.stage2_steps // 20)
        metrics: dict[str, float] = {}
        for step in range(c.stage2_steps):
            idx = _batch(a.shape[0], c.batch_size, g)
            xa, xb, xg = (x[idx].to(dev) for x in (a, b, gt))
            xp = b_prime[idx].to(dev)
            if c.jitter > 0:  # jittered images and the B′ H makes of them (H is frozen)
                xa, xb, xg = photometric_jitter([xa, xb, xg], c.jitter, g, tint=c.jitter_tint)
                with torch.no_grad():
                    xp = self.H(xa if c.task_specific else xb)
            clean = [xa, xg] if c.task_specific else [xa, xb, xg]
            if b_clean_second is not None:
                clean.append(b_clean_second[idx].to(dev))
            loss, m = self._extract_loss([xp, b_second[idx].to(dev)], clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % every == 0 or step == c.stage2_steps - 1:
                metrics = {"stage2_loss": float(loss.detach()),
                           **{f"stage2_{k}": v for k, v in m.items()}}
                cb.on_metrics(step0 + step, metrics)
                cb.on_progress(step + 1, c.stage2_steps, "stage 2: fine-tune R")
        self.R.eval()
        return metrics

    def clean_surrogate_outputs(self, a: torch.Tensor, b: torch.Tensor, sur: torch.Tensor,
                                hr: torch.Tensor, callbacks: Callbacks | Sequence[Any] = ()
                                ) -> torch.Tensor | None:
        """Stage 2's clean counterpart of B″: the stage-2 surrogate trained on (A, M(A)).

        Args:
            a, b: N×3×S×S inputs and M's outputs.
            sur, hr: the surrogate and H/R parts (:meth:`split_indices`).
            callbacks: metrics/progress sinks.

        Returns:
            Its outputs on ``a[hr]`` (len(hr)×3×S×S), or ``None`` when
            ``stage2_clean_surrogate`` is off.
        """
        c = self.config
        if not c.stage2_clean_surrogate:
            return None
        sm = train_surrogate(a[sur], b[sur], config=c.surrogate.model_copy(
            update={"seed": c.surrogate.seed + 1}), callbacks=callbacks)
        return apply_net(sm, a[hr], c.eval_batch).clamp(0, 1)

    def quality(self, a: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """Table-1 numbers on held-out pairs (N×3×S×S): PSNR/SSIM of B′ vs B, NC, SR, clean NC."""
        c = self.config
        b = self.model_outputs(a)
        h_ref = gt if c.task_specific else b
        bp = self.marked_outputs(a)
        logo = self.logo.cpu()
        nc_marked = extraction_nc(self.R, bp, logo, c.eval_batch)
        out = {"psnr_marked": float(psnr(bp, h_ref).clamp(max=100).mean()),
               "ssim_marked": float(ssim(bp, h_ref).mean()),
               "nc_marked": float(nc_marked.mean()),
               "sr_marked": float(self._hit(nc_marked, bp).float().mean())}
        for name, x in (("A", a), ("B", b), ("target", gt)):
            ncs = extraction_nc(self.R, x, logo, c.eval_batch)
            out[f"nc_clean_{name}_mean"] = float(ncs.mean())
            out[f"nc_clean_{name}_max"] = float(ncs.max())
            out[f"fpr_clean_{name}"] = float(self._hit(ncs, x).float().mean())
        if c.task_specific:
            out["psnr_task_marked"] = float(psnr(bp, gt).clamp(max=100).mean())
            out["ssim_task_marked"] = float(ssim(bp, gt).mean())
            out["psnr_task_baseline"] = float(psnr(b, gt).clamp(max=100).mean())
            out["ssim_task_baseline"] = float(ssim(b, gt).mean())
        return out

    def fit(self, data: Mapping[str, Any], callbacks: Callbacks | Sequence[Any] = (),
            key: WatermarkKey | None = None) -> dict[str, float]:
        """M → H/R/D (stage 1) → surrogate SM + fine-tune R (stage 2) → calibration.

        Args:
            data: ``{"train": (A, B), "val": (A, B)}``, N×3×H×W tensors in
                [0, 1] (resized to ``working_size``); ``val`` optional (then the
                surrogate part of train is used for the held-out numbers).
            callbacks: metrics/progress sinks.
            key: whose logo to hide when ``config.logo == "key"`` (default
                ``config.logo_secret``).

        Returns:
            Final metrics: Table-1 numbers on val (``psnr_marked``, ``nc_marked``,
            ``sr_marked``), clean NC/FPR, surrogate SR before/after stage 2,
            timings.
        """
        c, cb = self.config, _cb(callbacks)
        if not isinstance(data, Mapping) or "train" not in data:
            raise InputError("output_mark.fit needs data={'train': (A, B), 'val': (A, B)}")
        a, gt = self.working_pairs(data["train"], "data['train']")
        if key is not None:
            self.set_logo(c.logo, key)
        self.to(pick_device(c.device))
        start = time.time()
        metrics: dict[str, float] = {}
        # 1. the protected model M (the plain baseline in the task-specific variant)
        self.train_model(a, gt, cb)
        metrics["time_model_s"] = time.time() - start
        hr, sur = self.split_indices(a.shape[0])
        b = self.model_outputs(a)
        # 2. stage 1 on the H/R part
        self.train_embedder(a[hr], b[hr], gt[hr], cb, step0=c.model_steps)
        metrics["time_stage1_s"] = time.time() - start - metrics["time_model_s"]
        if data.get("val") is not None:
            va, vgt = self.working_pairs(data["val"], "data['val']")
        else:
            va, vgt = a[sur], gt[sur]
        vb = self.model_outputs(va)
        metrics.update(self.quality(va, vgt))
        # 3. stage 2: the attacker's surrogate on the other part, then fine-tune R
        if c.stage2:
            marked = self.marked_outputs(a)
            sm = train_surrogate(a[sur], marked[sur], config=c.surrogate, callbacks=cb)
            b2 = apply_net(sm, a[hr], c.eval_batch)
            vb2 = apply_net(sm, va, c.eval_batch)
            b2_clean = self.clean_surrogate_outputs(a, b, sur, hr, cb)
            logo = self.logo.cpu()
            before = extraction_nc(self.R, vb2, logo, c.eval_batch)
            self.finetune_extractor(a[hr], b[hr], gt[hr], marked[hr], b2, cb,
                                    step0=c.model_steps + c.steps, b_clean_second=b2_clean)
            after = extraction_nc(self.R, vb2, logo, c.eval_batch)
            metrics.update({
                "nc_surrogate_before": float(before.mean()),
                "sr_surrogate_before": float((before > c.threshold).float().mean()),
                "nc_surrogate_after": float(after.mean()),
                "sr_surrogate_after": float((after > c.threshold).float().mean())})
            metrics.update({f"final_{k}": v for k, v in self.quality(va, vgt).items()})
        metrics["time_total_s"] = time.time() - start
        # 4. calibration of the null NC distribution on clean images R never trained on
        self.reset_calibration()
        for name, x in (("val_A", va), ("val_B", vb), ("val_target", vgt)):
            self.calibrate(x, name)
        if c.stage2 and not torch.equal(sur, hr):
            for name, x in (("heldout_A", a[sur]), ("heldout_B", b[sur]),
                            ("heldout_target", gt[sur])):
                self.calibrate(x, name)
        metrics["calibration_n"] = float(len(self.null_scores))
        metrics["calibrated_fpr"] = float(self.per_image_fpr() or 0.0)
        self.trained = True
        cb.on_metrics(c.model_steps + c.steps + c.stage2_steps, metrics)
        return metrics


__all__ = [
    "SURROGATE_LOSSES", "SURROGATE_LOSS_TERMS", "MarkedModel", "OutputMark", "OutputMarkConfig",
    "SurrogateSettings", "extraction_nc", "group_split", "key_logo", "load_logo", "parse_loss",
    "photometric_jitter", "success_rate",
    "surrogate_matrix_cells", "train_image_net", "train_protected_model", "train_surrogate",
]

