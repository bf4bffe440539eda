"""Noise images with a controlled spectrum, shared by the methods and the attacks.

* :func:`band_noise` — narrow-band noise: white Gaussian noise filtered in the Fourier
  domain by a Gaussian window around ±ω (one frequency per image), standardised to
  ``0.5 ± amplitude`` and clamped to [0, 1]. ``trigger_key``'s ``band`` key family draws
  its trigger K with it (one image, the key's frequency); the keyless ``fine_tune_noise``
  attack draws its narrow-band inputs with it (a batch, random frequencies).

Written with ``torch.fft`` rather than kornia's noise augmentations: those perturb an
image; this makes images that are nothing but noise.

Shapes: frequencies ``N×2`` (f_y, f_x) cycles/px; images ``N×C×S×S`` float32 in [0, 1].
"""

from __future__ import annotations

import torch

from neuralmark.components.errors import InputError


def band_noise(
    frequencies: torch.Tensor,
    size: int,
    channels: int,
    generator: torch.Generator,
    width: float | torch.Tensor = 0.03,
    amplitude: float = 0.2,
) -> torch.Tensor:
    """Narrow-band noise, one image per frequency, every draw from ``generator``.

    Each image: white Gaussian noise z (``channels×size×size``, float64) times the Gaussian
    spectral window ``Σ_± exp(−|ν ∓ ω|² / 2 width²)`` (symmetric in ±ω: a real filter),
    back to space, then per channel ``0.5 + amplitude · (z − mean) / std`` clamped to [0, 1].

    Args:
        frequencies: ``N×2`` (or ``2``) frequencies ω = (f_y, f_x) in cycles per pixel
            (used in float64: pass float64 values where ω must be exact).
        size: side S (pixels).
        channels: C (each channel its own draw).
        generator: the draws (CPU); the same state gives the same images.
        width: σ of the spectral window in cycles/px: one value, or ``N`` (one per image).
        amplitude: standard deviation around 0.5 before clamping.

    Returns:
        ``N×C×S×S`` float32 in [0, 1].

    Raises:
        InputError: frequencies not ``N×2``, ``size`` or ``channels`` below 1, a width that
            is not positive or not one per image, a negative amplitude.
    """
    freq = torch.as_tensor(frequencies, dtype=torch.float64)
    if freq.ndim == 1:
        freq = freq[None]
    if freq.ndim != 2 or freq.shape[1] != 2 or freq.shape[0] < 1:
        raise InputError(
            f"band_noise: frequencies must be N×2 (f_y, f_x), got shape {tuple(freq.shape)}"
        )
    n = int(freq.shape[0])
    if size < 1 or channels < 1:
        raise InputError(f"band_noise: need size >= 1 and channels >= 1, got {size}, {channels}")
    if isinstance(width, torch.Tensor):
        w = width.to(torch.float64).reshape(-1)
        if w.numel() not in (1, n) or not bool((w > 0).all()):
            raise InputError(
                f"band_noise: width must be positive, one value or one per "
                f"image ({n}), got {w.numel()} values"
            )
        width_term = (2 * w**2).view(-1, 1, 1, 1)  # n 1 1 1
    else:
        if not width > 0:
            raise InputError(f"band_noise: width must be positive, got {width}")
        width_term = 2 * width**2
    if amplitude < 0:
        raise InputError(f"band_noise: amplitude must be >= 0, got {amplitude}")
    z = torch.randn((n, channels, size, size), generator=generator, dtype=torch.float64)
    fy, fx = freq[:, 0].view(n, 1, 1, 1), freq[:, 1].view(n, 1, 1, 1)
    ny = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]  # s 1, cycles/px
    nx = torch.fft.fftfreq(size, dtype=torch.float64)[None, :]  # 1 s
    window = sum(
        torch.exp(-((ny - sign * fy) ** 2 + (nx - sign * fx) ** 2) / width_term)
        for sign in (1.0, -1.0)
    )  # n 1 s s
    z = torch.fft.ifft2(torch.fft.fft2(z) * window).real  # n c s s
    z = z - z.mean(dim=(-2, -1), keepdim=True)
    z = z / z.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (0.5 + amplitude * z).clamp(0, 1).float()


__all__ = ["band_noise"]
