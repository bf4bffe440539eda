"""Parametric rain-streak synthesis for the derain task (domain A of ``voc_derain``).

Seed 001 builds its rainy inputs with the synthesis of Zhang & Patel (CVPR 2018,
DID-MDN), which follows the classic Photoshop recipe used for the Rain100 /
Rain1200 sets: *add noise → Gaussian blur → motion blur → levels → screen blend*.
This module renders exactly that chain as a few tensor ops:

1. **drops** (``density``): each pixel starts a drop with probability
   ``density``; a drop's brightness is uniform in ``[0.5, 1]``;
2. **streaks** (``width``, ``length``, ``angle``, ``motion_blur``): the drop map is
   convolved (FFT) with one anti-aliased streak kernel — a segment of ``length``
   px at ``angle`` degrees from vertical, a Gaussian cross-profile of FWHM
   ``width`` px, and Gaussian-tapered ends of σ = ``motion_blur`` px (the
   exposure smear of a falling drop); the kernel peaks at 1, so a lone streak is
   as bright as its drop;
3. **levels** (``intensity``): ``S = intensity · min(streaks, 1)``;
4. **screen blend**: ``R = 1 − (1 − J)(1 − S)`` — never exceeds 1, never darkens;
5. **haze** (optional, ``haze`` = 1 − t, ``airlight`` = A): the atmospheric
   scattering model ``I = R·t + A·(1 − t)`` (the heavy-rain model of Li et al.,
   CVPR 2019, with constant transmission t).

Why not ``kornia.augmentation.RandomRain``: it draws 1-px-wide aliased lines
whose slant is an integer pixel offset, overwrites pixels with the constant
``200/255`` (no intensity, no blending, so it *darkens* bright skies), has no
motion blur or haze, and takes its randomness from torch's global RNG (no
per-call seed), so it cannot give reproducible per-image pairs. Only its
``number_of_drops`` and ``drop_height`` map onto our density and length.

Determinism: the only randomness is a ``torch.Generator`` seeded with ``seed``,
and the streak layer is computed on the CPU in float64, so the same
``(image, params, seed)`` gives the same bytes (also across torch thread
counts). ``item_seed(item_id)`` turns a dataset id into that seed. Its cost and
the PSNR of the drawn rain are measured in the README ("Measured figures outside
the model cards").

Shapes: tensors are ``3×H×W`` or ``B×3×H×W`` (1 channel also works), float in
``[0, 1]``; PIL images in mode ``RGB`` or ``L`` round-trip as the same mode.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

#: Reference resolution of the sampling ranges (seed 001 / 004 work at 400²).
REFERENCE_SIZE = 400


@dataclass(frozen=True)
class RainParams:
    """One rain condition (all lengths in pixels of the image it is applied to).

    Attributes:
        density: probability that a pixel starts a drop, in ``[0, 1]``.
        angle: streak direction in degrees from vertical; positive leans the
            top of the streak to the right.
        length: streak length in px (distance a drop falls during exposure).
        width: streak thickness in px (FWHM of the cross-profile).
        intensity: peak brightness of the streak layer, in ``[0, 1]``.
        motion_blur: σ in px of the Gaussian taper at the streak ends; ``0``
            gives hard ends.
        haze: ``1 − t``, the share of the scene replaced by airlight, in ``[0, 1)``;
            ``0`` disables haze.
        airlight: the atmospheric light ``A`` in ``[0, 1]``: above the scene's
            brightness haze brightens it, below it darkens it.
    """

    density: float = 0.004
    angle: float = 0.0
    length: float = 20.0
    width: float = 1.5
    intensity: float = 0.6
    motion_blur: float = 1.5
    haze: float = 0.0
    airlight: float = 0.85

    def __post_init__(self) -> None:
        checks = {
            "density": 0.0 <= self.density <= 1.0,
            "length": self.length >= 1.0,
            "width": self.width > 0.0,
            "intensity": 0.0 <= self.intensity <= 1.0,
            "motion_blur": self.motion_blur >= 0.0,
            "haze": 0.0 <= self.haze < 1.0,
            "airlight": 0.0 <= self.airlight <= 1.0,
            "angle": math.isfinite(self.angle),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid RainParams field(s) {bad}: {self}")


#: Zhang & Patel's DID-MDN training set has three rain-density levels (light,
#: medium, heavy) with varied streak orientation and scale; these are the
#: per-pixel drop probabilities we give each level at 400² (see
#: ``sample_rain_params``).
DENSITY_LEVELS: dict[str, tuple[float, float]] = {
    "light": (0.0008, 0.002),
    "medium": (0.002, 0.004),
    "heavy": (0.004, 0.007),
}


def item_seed(item_id: str, salt: int | str = 0) -> int:
    """A stable 63-bit seed from a dataset item id (and a run-level salt).

    Args:
        item_id: e.g. ``"2008_000123"``.
        salt: ``PrepareConfig.seed`` or any other run-level value.

    Returns:
        A non-negative int, identical across processes and platforms.
    """
    digest = hashlib.sha256(f"{salt}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def sample_rain_params(seed: int, *, scale: float = 1.0, haze: bool = False) -> RainParams:
    """Draw one rain condition, Zhang & Patel style.

    Ranges (at 400²; lengths are multiplied by ``scale`` and the density is
    adjusted so the area streaks cover does not depend on size): density level
    uniform over light / medium / heavy (``DENSITY_LEVELS``), then density
    uniform inside it; angle U(−30°, 30°); length U(12, 40) px; width
    U(1.0, 2.5) px; intensity U(0.35, 0.75); motion blur U(0.5, 3) px. With
    ``haze``: haze U(0.1, 0.4) and airlight U(0.7, 1.0); otherwise no haze.
    The ranges aim between Rain100L-like light and Rain100H-like heavy rain at
    any size.

    Args:
        seed: any int; the same seed gives the same parameters.
        scale: image size / 400, so streaks keep their proportions at other sizes.
        haze: whether to draw a haze component.

    Returns:
        The drawn ``RainParams``.
    """
    gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    u = torch.rand(9, generator=gen, dtype=torch.float64).tolist()

    def uniform(i: int, lo: float, hi: float) -> float:
        return lo + (hi - lo) * u[i]

    lo, hi = list(DENSITY_LEVELS.values())[min(int(u[0] * 3), 2)]
    at_reference = RainParams(
        density=uniform(1, lo, hi),
        angle=uniform(2, -30.0, 30.0),
        length=uniform(3, 12.0, 40.0),
        width=uniform(4, 1.0, 2.5),
        intensity=uniform(5, 0.35, 0.75),
        motion_blur=uniform(6, 0.5, 3.0),
    )
    params = at_reference
    if scale != 1.0:
        scale = max(float(scale), 1e-3)
        params = replace(at_reference, length=max(1.0, at_reference.length * scale),
                         width=max(0.5, at_reference.width * scale),
                         motion_blur=at_reference.motion_blur * scale)
        # keep the covered area (density × streak area) as at 400²
        ratio = float(streak_kernel(at_reference).sum() / streak_kernel(params).sum())
        params = replace(params, density=min(1.0, at_reference.density * ratio))
    if haze:
        params = replace(params, haze=uniform(7, 0.1, 0.4), airlight=uniform(8, 0.7, 1.0))
    return params


def streak_kernel(params: RainParams) -> torch.Tensor:
    """The anti-aliased streak one drop leaves, peak 1.

    Args:
        params: uses ``length``, ``width``, ``angle`` and ``motion_blur``.

    Returns:
        ``K×K`` float32 kernel, ``K`` odd.
    """
    sigma_w = max(params.width / 2.3548, 0.3)
    half_len = params.length / 2.0
    reach = half_len + 3.0 * params.motion_blur + 3.0 * sigma_w + 1.0
    radius = int(math.ceil(reach))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    theta = math.radians(params.angle)
    # unit vector along the streak (pointing down the image): (dx, dy) = (-sin, cos)
    along = -x * math.sin(theta) + y * math.cos(theta)
    across = x * math.cos(theta) + y * math.sin(theta)
    beyond = (along.abs() - half_len).clamp(min=0.0)
    if params.motion_blur > 0:
        profile_along = torch.exp(-0.5 * (beyond / params.motion_blur) ** 2)
    else:  # hard ends, anti-aliased over one pixel
        profile_along = (1.0 - beyond).clamp(0.0, 1.0)
    kernel = profile_along * torch.exp(-0.5 * (across / sigma_w) ** 2)
    return (kernel / kernel.max()).to(torch.float32)


def rain_layer(height: int, width: int, params: RainParams, seed: int,
               batch: int = 1) -> torch.Tensor:
    """The streak layer ``S`` (before blending).

    Args:
        height: image height H.
        width: image width W.
        params: the rain condition.
        seed: seeds the drop positions and brightness.
        batch: number of independent layers B (drawn in order from one generator).

    Returns:
        ``B×1×H×W`` float32 in ``[0, intensity]``.
    """
    gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    kernel = streak_kernel(params).to(torch.float64)
    k = kernel.shape[-1]
    r = k // 2
    # drops may start outside the frame and streak into it: draw on a padded canvas
    ph, pw = height + 2 * r, width + 2 * r
    starts = torch.rand(batch, ph, pw, generator=gen, dtype=torch.float64) < params.density
    bright = 0.5 + 0.5 * torch.rand(batch, ph, pw, generator=gen, dtype=torch.float64)
    drops = torch.where(starts, bright, torch.zeros((), dtype=torch.float64))
    # linear convolution via FFT on a canvas of size (ph + k - 1, pw + k - 1)
    fh, fw = ph + k - 1, pw + k - 1
    spec = torch.fft.rfft2(drops, s=(fh, fw)) * torch.fft.rfft2(kernel, s=(fh, fw))
    full = torch.fft.irfft2(spec, s=(fh, fw))
    # 'full' index (i + r) is centred on canvas pixel i; the frame starts at canvas r
    streaks = full[:, 2 * r: 2 * r + height, 2 * r: 2 * r + width]
    layer = params.intensity * streaks.clamp(0.0, 1.0)
    return layer.unsqueeze(1).to(torch.float32)


def _rain_tensor(images: torch.Tensor, params: RainParams, seed: int) -> torch.Tensor:
    """Rain on ``B×C×H×W`` floats in [0, 1]; returns the same shape/dtype."""
    b, _, h, w = images.shape
    layer = rain_layer(h, w, params, seed, batch=b).to(images.device, images.dtype)
    rainy = 1.0 - (1.0 - images) * (1.0 - layer)  # screen blend
    if params.haze > 0:
        t = 1.0 - params.haze
        rainy = rainy * t + params.airlight * (1.0 - t)
    return rainy.clamp(0.0, 1.0)


def add_rain(image: torch.Tensor | Image.Image, params: RainParams,
             seed: int) -> torch.Tensor | Image.Image:
    """Synthesise rain on a clean image (domain B → domain A).

    Args:
        image: ``C×H×W`` or ``B×C×H×W`` float tensor in ``[0, 1]``, or a PIL
            image (``RGB`` or ``L`` kept; other modes are converted to ``RGB``).
        params: the rain condition (see ``sample_rain_params``).
        seed: seeds drop positions; same seed → byte-identical output.

    Returns:
        The rainy image, same type and shape as ``image`` (PIL: same mode, or
        ``RGB`` for other modes).

    Raises:
        TypeError: ``image`` is neither a tensor nor a PIL image.
        ValueError: the tensor is not 3-D/4-D.
    """
    if isinstance(image, Image.Image):
        img = image if image.mode in ("RGB", "L") else image.convert("RGB")
        arr = np.asarray(img, dtype=np.float32) / 255.0
        chw = torch.from_numpy(arr.reshape(img.height, img.width, -1)).permute(2, 0, 1)
        out = _rain_tensor(chw.unsqueeze(0), params, seed)[0]
        out8 = (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(out8[..., 0] if img.mode == "L" else out8, img.mode)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"add_rain expects a tensor or PIL image, got {type(image).__name__}")
    if image.ndim == 3:
        return _rain_tensor(image.unsqueeze(0), params, seed)[0]
    if image.ndim == 4:
        return _rain_tensor(image, params, seed)
    raise ValueError(f"add_rain expects C×H×W or B×C×H×W, got shape {tuple(image.shape)}")
