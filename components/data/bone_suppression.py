"""A classical *approximation* of rib suppression for chest radiographs.

This is **not** the bone-suppression network seed 001 used (Yang et al. 2017,
"Cascade of multi-scale CNNs for bone suppression of chest radiographs in
gradient domain"): those weights cannot be downloaded here. When a user has real
bone-suppressed images, the ChestX-ray8 recipe uses them instead
(``--targets DIR``); otherwise targets come from this module, every prepared
row says so (``extra["target_kind"] == TARGET_KIND``) and so must any report
built on them. It is a stand-in so the debone *task* (an image-to-image mapping
that removes rib-like structure and keeps soft tissue) can be trained and
watermarked end to end; it is not a clinical bone-suppression method.

What it does, on a grayscale radiograph ``x`` (``B×1×H×W`` in ``[0, 1]``):

1. **Rib scale.** Ribs repeat with a period of roughly 1/16 of the image height
   in a PA radiograph (≈ 25 mm on a 35–43 cm field), so the centre period is
   ``P = rib_period_fraction · min(H, W)`` pixels and every other length below
   scales with ``P``: the method works at any size.
2. **Oriented band.** A bank of ``K`` analytic log-Gabor filters (radial
   bandwidth ≈ 1.5 octaves around ``1/P``; raised-cosine angular windows that sum
   to one, so the bank reconstructs the band exactly) is applied in the Fourier
   domain after reflect padding. Each filter gives a complex response ``C_k``.
3. **Rib prior.** Rib axes run within ``max_tilt_deg`` (60°) of horizontal, so
   only filters whose stripe normal lies within that angle of vertical
   contribute to the bone layer (vertical edges such as the heart border and
   the spine are left alone).
4. **Elongation gate.** The local orientation coherence
   ``κ = |Σ_k E_k e^{2iθ_k}| / Σ_k E_k`` of the smoothed energies
   ``E_k = |C_k|²`` is ≈ 1 on stripe-like (elongated) structure and ≈ 0 on
   isotropic texture (vessels crossing, nodules, noise); the bone layer is
   gated by a smooth step of ``κ`` between ``coherence_low`` and
   ``coherence_high``.
5. **Lung fields.** A soft mask of the dark lung fields: the image blurred at
   scale ``P`` (ribs averaged out), thresholded at its Otsu level, softened.
6. **Subtraction.** ``bone = 2·Re(Σ_k prior_k C_k) · gate · mask`` and the
   output is ``clamp(x − strength · bone, 0, 1)``. The log-Gabor filters have
   zero response at DC and fall off fast below ``1/P``, so low-frequency soft
   tissue (lung density, heart, diaphragm) is preserved.

Contract, checked on the synthetic phantom of ``tests/test_readers_cxr8.py``
(smooth lungs + tilted sinusoidal ribs): the rib-scale oriented band inside the
lung fields loses most of its energy (it falls by a factor of at most
``1/(1 − strength)²``, reached where gate = mask = 1), the low-passed image (Gaussian σ = P) is kept, and vertical
stripes of the rib period or isotropic texture lose little: the orientation
prior and the coherence gate make it selective. The measured figures are in the
README ("Measured figures outside the model cards"). On real radiographs expect
less: ribs are not sinusoids, so their sharp cortical edges (harmonics above the
band) partly remain, and crossing anterior/posterior ribs lower the coherence gate.

Deterministic: pure tensor arithmetic and CPU pocketfft; no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: The marker a prepared row carries when its B image came from this module.
TARGET_KIND = "classical-approximation"


@dataclass(frozen=True)
class RibSuppressionParams:
    """Knobs of :func:`suppress_ribs` (defaults are the ones documented above).

    Attributes:
        rib_period_fraction: rib period as a fraction of ``min(H, W)``.
        bandwidth: log-Gabor σ ratio (0.65 ≈ 1.5 octaves full width at half max).
        n_orientations: filters in the bank over 180°.
        max_tilt_deg: rib axes are taken to lie within this angle of horizontal.
        strength: fraction of the estimated bone layer that is subtracted.
        coherence_low: below this orientation coherence nothing is removed.
        coherence_high: above it the full ``strength`` applies.
        use_lung_mask: restrict suppression to the (soft) lung-field mask.
    """

    rib_period_fraction: float = 1 / 16
    bandwidth: float = 0.65
    n_orientations: int = 12
    max_tilt_deg: float = 60.0
    strength: float = 0.85
    coherence_low: float = 0.3
    coherence_high: float = 0.6
    use_lung_mask: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.rib_period_fraction < 0.5:
            raise ValueError(f"rib_period_fraction must be in (0, 0.5), got "
                             f"{self.rib_period_fraction}")
        if not 0 < self.bandwidth < 1:
            raise ValueError(f"bandwidth must be in (0, 1), got {self.bandwidth}")
        if self.n_orientations < 4:
            raise ValueError(f"n_orientations must be >= 4, got {self.n_orientations}")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if not 0 <= self.coherence_low < self.coherence_high <= 1:
            raise ValueError("need 0 <= coherence_low < coherence_high <= 1, got "
                             f"{self.coherence_low}, {self.coherence_high}")


def rib_period(height: int, width: int, params: RibSuppressionParams | None = None) -> float:
    """The rib period ``P`` in pixels for an image of this size."""
    params = params or RibSuppressionParams()
    return max(4.0, params.rib_period_fraction * min(height, width))


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a B×C×H×W tensor, got shape {tuple(x.shape)}")
    if x.shape[-2] < 8 or x.shape[-1] < 8:
        raise ValueError(f"image too small for rib suppression: {tuple(x.shape[-2:])}")


def _pad(x: torch.Tensor, period: float) -> tuple[torch.Tensor, int]:
    """Reflect-pad by ~2 periods (B×C×H×W → B×C×(H+2p)×(W+2p)) against FFT wrap-around."""
    pad = int(min(round(2 * period), x.shape[-2] - 1, x.shape[-1] - 1))
    return F.pad(x, (pad, pad, pad, pad), mode="reflect"), pad


def _freq_grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Radius (cycles/pixel) and direction (radians) of each FFT bin, both h×w."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fx**2 + fy**2), torch.atan2(fy.expand(h, w), fx.expand(h, w))


def _gaussian_transfer(rho: torch.Tensor, sigma: float) -> torch.Tensor:
    """Fourier transfer of a Gaussian blur of std ``sigma`` px (h×w)."""
    return torch.exp(-2 * math.pi**2 * sigma**2 * rho**2)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur via FFT with reflect padding: B×C×H×W → B×C×H×W."""
    xp, pad = _pad(x, sigma)
    h, w = xp.shape[-2:]
    rho, _ = _freq_grid(h, w)
    out = torch.fft.ifft2(torch.fft.fft2(xp.double()) * _gaussian_transfer(rho, sigma)).real
    return out[..., pad:pad + x.shape[-2], pad:pad + x.shape[-1]].to(x.dtype)


def lowpass(x: torch.Tensor, params: RibSuppressionParams | None = None) -> torch.Tensor:
    """The soft-tissue scale of ``x``: Gaussian blur with σ = one rib period.

    Args:
        x: images, ``B×C×H×W``.
        params: only ``rib_period_fraction`` is used.

    Returns:
        ``B×C×H×W``, same dtype.
    """
    _check(x)
    return _blur(x, rib_period(x.shape[-2], x.shape[-1], params))


def _otsu(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu threshold of a 1-D tensor of values."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-8:
        return hi
    hist = torch.histc(values.double(), bins=bins, min=lo, max=hi)
    centers = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    m0 = torch.cumsum(hist * centers, 0)
    mu0 = m0 / w0.clamp_min(1e-12)
    mu1 = (m0[-1] - m0) / w1.clamp_min(1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(torch.argmax(between))])


def lung_field_mask(x: torch.Tensor,
                    params: RibSuppressionParams | None = None) -> torch.Tensor:
    """A soft mask of the dark lung fields of grayscale radiographs.

    The image is blurred at the rib period (so ribs average out), thresholded at
    its Otsu level (lungs are the dark class), passed through a sigmoid of width
    a tenth of the blurred image's spread and softened by a blur of half a period.

    Args:
        x: radiographs, ``B×1×H×W`` in ``[0, 1]``.
        params: only ``rib_period_fraction`` is used.

    Returns:
        ``B×1×H×W`` in ``[0, 1]`` (1 = lung field).
    """
    _check(x)
    period = rib_period(x.shape[-2], x.shape[-1], params)
    smooth = _blur(x.double(), period)
    masks = []
    for s in smooth:
        t = _otsu(s.flatten())
        tau = max(0.1 * float(s.std()), 1e-3)
        masks.append(torch.sigmoid((t - s) / tau))
    return _blur(torch.stack(masks), period / 2).clamp(0, 1).to(x.dtype)


def _bank(x: torch.Tensor, params: RibSuppressionParams, *, gated: bool
          ) -> torch.Tensor:
    """Rib-orientation band of ``x`` (B×1×H×W → B×1×H×W), optionally coherence-gated."""
    h0, w0 = x.shape[-2:]
    period = rib_period(h0, w0, params)
    xp, pad = _pad(x.double(), period)
    h, w = xp.shape[-2:]
    rho, phi = _freq_grid(h, w)
    f0 = 1.0 / period
    log_ratio = torch.log(rho.clamp_min(1e-12) / f0)
    radial = torch.exp(-log_ratio**2 / (2 * math.log(params.bandwidth) ** 2))
    radial[0, 0] = 0.0
    spectrum = torch.fft.fft2(xp)

    k_total = params.n_orientations
    step = math.pi / k_total
    band = torch.zeros_like(xp)
    z = torch.zeros_like(xp, dtype=torch.complex128)
    energy = torch.zeros_like(xp)
    for k in range(k_total):
        theta = k * step  # direction of the stripe normal (frequency vector), in [0, π)
        delta = torch.remainder(phi - theta + math.pi, 2 * math.pi) - math.pi
        window = torch.where(delta.abs() < step, torch.cos(math.pi * delta / (2 * step)) ** 2,
                             torch.zeros_like(delta))
        response = torch.fft.ifft2(spectrum * (radial * window))  # analytic, B×1×h×w
        # rib prior: the normal within max_tilt of vertical, tapering over one step
        tilt = abs(math.degrees(theta) - 90.0)
        prior = min(1.0, max(0.0, (params.max_tilt_deg + math.degrees(step) - tilt)
                             / math.degrees(step)))
        if prior > 0:
            band += prior * 2 * response.real
        if gated:
            e = response.real**2 + response.imag**2
            energy += e
            z += e * complex(math.cos(2 * theta), math.sin(2 * theta))
    if gated:
        sigma = period / 2
        z = torch.complex(_blur(z.real, sigma), _blur(z.imag, sigma))
        energy = _blur(energy, sigma)
        floor = 1e-2 * energy.mean(dim=(-2, -1), keepdim=True) + 1e-12
        coherence = z.abs() / (energy + floor)
        t = ((coherence - params.coherence_low)
             / (params.coherence_high - params.coherence_low)).clamp(0, 1)
        band = band * (t * t * (3 - 2 * t))  # smoothstep
    return band[..., pad:pad + h0, pad:pad + w0]


def rib_band(x: torch.Tensor, params: RibSuppressionParams | None = None) -> torch.Tensor:
    """The rib-scale, rib-oriented band-pass of ``x`` (linear, no gate, no mask).

    This is the measuring stick for tests and reports: its energy over the lung
    fields is what :func:`suppress_ribs` reduces.

    Args:
        x: grayscale images, ``B×1×H×W``.
        params: suppression parameters (scale, bandwidth, orientations, tilt).

    Returns:
        ``B×1×H×W`` float32, zero-mean band component.
    """
    _check(x)
    return _bank(x, params or RibSuppressionParams(), gated=False).float()


def bone_layer(x: torch.Tensor, params: RibSuppressionParams | None = None) -> torch.Tensor:
    """The estimated rib (bone) layer that :func:`suppress_ribs` subtracts, before ``strength``.

    Args:
        x: grayscale radiographs, ``B×1×H×W`` in ``[0, 1]``.
        params: suppression parameters.

    Returns:
        ``B×1×H×W`` float32: ``2·Re(Σ_k prior_k C_k) · coherence gate · lung mask``.
    """
    _check(x)
    params = params or RibSuppressionParams()
    bone = _bank(x, params, gated=True)
    if params.use_lung_mask:
        bone = bone * lung_field_mask(x, params).double()
    return bone.float()


def suppress_ribs(x: torch.Tensor, params: RibSuppressionParams | None = None) -> torch.Tensor:
    """Classical rib-suppression approximation (see the module docstring).

    Args:
        x: radiographs, ``B×C×H×W`` in ``[0, 1]``; ``C`` = 1, or 3 for gray
            replicated to RGB (each channel is processed; identical channels stay
            identical). Any ``H, W ≥ 8``.
        params: suppression parameters; defaults documented on
            :class:`RibSuppressionParams`.

    Returns:
        ``B×C×H×W`` float32 in ``[0, 1]``: ``clamp(x − strength·bone_layer(x))``.
    """
    _check(x)
    params = params or RibSuppressionParams()
    b, c, h, w = x.shape
    flat = x.float().reshape(b * c, 1, h, w)
    out = flat - params.strength * bone_layer(flat, params)
    return out.clamp(0, 1).reshape(b, c, h, w)


def band_energy(x: torch.Tensor, weight: torch.Tensor | None = None,
                params: RibSuppressionParams | None = None) -> torch.Tensor:
    """Mean energy of :func:`rib_band` of ``x``, optionally weighted per pixel.

    Args:
        x: grayscale images, ``B×1×H×W``.
        weight: ``B×1×H×W`` or ``1×1×H×W`` non-negative weights (e.g. a lung mask).
        params: suppression parameters.

    Returns:
        ``B`` energies (mean of the squared band over the weighted pixels).
    """
    band = rib_band(x, params)
    if weight is None:
        return band.pow(2).mean(dim=(1, 2, 3))
    weight = weight.expand_as(band)
    return (band.pow(2) * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-12)
