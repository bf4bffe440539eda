"""Trigger K, initial verification image S0 = G(K), and the verification measures d and NCC.

Everything here is a pure function of the owner's secret (through HMAC-SHA256 seeds,
``components/payload.key_seed``) and of tensors:

* :func:`trigger` — K ~ U(0, 1), ``C×t×t`` (the seed: 40×40 denoising, 20×20 SR).
* :func:`gradient_kernel` — the keyed ∇: a zero-mean 3×3 derivative kernel drawn from the
  key's HMAC stream, scaled to the L2 norm of the seed's ∇ (√6). **The uniqueness fix**:
  with the seed's fixed ∇ a marked host learns G as a function on noise, so
  ``M(K′) ≈ G(K′)`` for *every* K′ and any key "verifies"; with a keyed ∇ a host marked
  for key A maps K_B to ``G_A(K_B)``, far from ``G_B(K_B)``. The seed's ∇ (forward
  differences ∂x + ∂y) is one member of the family and is what ``keyed=False`` gives (the ablation).
* :func:`verification_target` — S0 = G(K): denoise ``K − ∇K``; SR ``K̂ + ∇K̂`` with K̂ the
  bilinear ``scale``× upsample of K; clamped to [0, 1] (the choice: the seed normalises S
  before comparing; a target in the image range keeps ℓ_w on the host's output range).
* :func:`band_trigger` / :func:`band_frequency` — the opt-in ``band`` key family
  (``TriggerKeyConfig.key_family``, issue #13, tk9): K is narrow-band noise around a keyed
  spatial frequency ±ω_key (Gaussian spectral window of width ``BAND_WIDTH``, |ω_key| in
  ``BAND_RADIUS``, any orientation), 0.5 + ``BAND_AMPLITUDE``·z/std(z), and S0 = G(K) with
  the same keyed ∇. The choice (why this family): a host fitting G on K learns its response
  *near ω_key only* (an 11×11 receptive field resolves ≈ 1/11 cycle/px), so another key's
  embedding retrains other frequencies, not the owner's, and a host marked for another key
  answers the owner's K with its natural response unless the two bands overlap — against
  the ``filter`` family, where every key's white-noise K trains the same (all) frequencies.
  Measured on the tiny DnCNN (MODEL_CARD, session tk9): cross-key matches 1.5 % against
  6.5 %, but the mark survives neither overwriting nor one epoch of fine-tuning: not a fix.
* :func:`midband_kernel` — the opt-in ``midband`` family (tk10): K is the ``filter``
  family's white U(0, 1) trigger, and S0 = K − ∇_mid K with ∇_mid a keyed zero-DC 7×7 Gabor
  kernel (radial frequency in ``MIDBAND_RADIUS``, any orientation and phase; Gaussian
  envelope σ ``MIDBAND_ENVELOPE`` px) of the seed's ∇ norm √6, so the mark S0 − K has the
  ``filter`` family's energy on white noise but in the 0.1–0.2 cycle/px output band instead
  of the 3×3 derivative's high band. The choice (why): the drift spectrum of the tiny DnCNN
  (MODEL_CARD, session tk10) — the unmarked host's response to white noise moves least at
  output frequencies 0.1–0.2 under fine-tuning on original and new data and overwriting, and
  most above 0.4, where a 3×3 derivative puts the ``filter`` mark. Measured on the tiny
  DnCNN (MODEL_CARD, session tk10): cheaper (0.45 / 0.55 dB) and more of the mark kept after
  new-data fine-tuning, but keyed Gabors in one band align (η falls to 0.51 / 0.68) and the
  overwrite is worse: it survives nothing the ``filter`` family does not; not a fix.
* :func:`negative_inputs` — white U(0, 1) noise of the trigger's shape: the negatives of the
  opt-in contrastive embedding (``TriggerKeyConfig.contrastive_negatives``, tk14).
* :func:`host_input` — what the host is fed for K: K (denoise) or K̂ (SR, the VDSR input
  convention).
* :func:`distance` — the seed's eq. (1): ``d = ‖S′ − S‖₂ / (M·N)`` with S, S′ clamped to
  [0, 1] (the normalisation); for C channels divided by ``√C·M·N`` so that d of a colour
  host is on the grey scale.
* :func:`ncc` — the normalised correlation coefficient (centred, Pearson) of S′ and S.

Shapes: K ``C×t×t``; host input and S ``C×T×T`` (T = t, or t·scale for SR); batched
versions take ``B×C×T×T``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neuralmark.components import noise
from neuralmark.components.errors import InputError
from neuralmark.components.payload import key_fingerprint, key_seed

DOMAIN = "neuralmark/trigger_key"
#: the key families: ``filter`` (K white U(0, 1), the default) and ``band`` (module doc)
KEY_FAMILIES = ("filter", "band", "midband")
#: ``band``: |ω_key| is drawn uniformly in this range (cycles per pixel); below it the keyed
#: ∇ (zero mean) barely differs from the identity, above it lies Nyquist
BAND_RADIUS = (0.15, 0.45)
#: ``band``: standard deviation of the Gaussian spectral window around ±ω_key (cycles/px)
BAND_WIDTH = 0.03
#: ``band``: standard deviation of K around 0.5 (U(0, 1) has 0.289; 0.2 clips ≈ 1 %)
BAND_AMPLITUDE = 0.2
#: ``midband``: the keyed Gabor's radial frequency is uniform in this range (cycles/px)
MIDBAND_RADIUS = (0.1, 0.2)
#: ``midband``: side of the keyed kernel and σ of its Gaussian envelope (px)
MIDBAND_SIZE = 7
MIDBAND_ENVELOPE = 2.0
#: the seed's ∇: forward differences ∂x + ∂y as one 3×3 kernel (L2 norm √6)
SEED_GRADIENT = torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.0, 1.0], [0.0, 1.0, 0.0]])


def keyed_generator(secret: str, what: str) -> torch.Generator:
    """A CPU generator seeded from ``secret`` by HMAC, one stream per ``what``."""
    return torch.Generator().manual_seed(key_seed(secret, f"{DOMAIN}/{what}"))


def fingerprint(secret: str) -> str:
    """Public fingerprint of the key a mark was made for (stored in bundles)."""
    return key_fingerprint(secret, DOMAIN)


def trigger(secret: str, size: int, channels: int) -> torch.Tensor:
    """The trigger K ~ U(0, 1) of the key: ``channels×size×size`` float32."""
    if size < 1 or channels not in (1, 3):
        raise InputError(f"trigger: need size >= 1 and 1 or 3 channels, got {size}, {channels}")
    return torch.rand((channels, size, size), generator=keyed_generator(secret, "trigger"))


def band_frequency(secret: str) -> tuple[float, float]:
    """The ``band`` family's keyed frequency ω_key = (f_y, f_x) in cycles per pixel:
    radius uniform in ``BAND_RADIUS``, orientation uniform in [0, π)."""
    u = torch.rand(2, generator=keyed_generator(secret, "band/frequency"), dtype=torch.float64)
    lo, hi = BAND_RADIUS
    r, theta = lo + (hi - lo) * float(u[0]), math.pi * float(u[1])
    return r * math.sin(theta), r * math.cos(theta)


def band_trigger(secret: str, size: int, channels: int) -> torch.Tensor:
    """The ``band`` family's trigger: ``channels×size×size`` float32 in [0, 1].

    White Gaussian noise from the key's stream, filtered in the Fourier domain by a Gaussian
    window (σ ``BAND_WIDTH``) around ±``band_frequency(secret)`` (real output), scaled to
    std ``BAND_AMPLITUDE`` around 0.5 (per channel) and clamped to [0, 1] (:func:`band_noise`).
    """
    if size < 1 or channels not in (1, 3):
        raise InputError(f"trigger: need size >= 1 and 1 or 3 channels, got {size}, {channels}")
    return band_noise(band_frequency(secret), size, channels,
                      keyed_generator(secret, "band/trigger"))


def band_noise(frequency: tuple[float, float], size: int, channels: int,
               generator: torch.Generator, width: float = BAND_WIDTH,
               amplitude: float = BAND_AMPLITUDE) -> torch.Tensor:
    """Narrow-band noise around ±``frequency`` = (f_y, f_x) cycles/px: ``channels×size×size``
    float32, 0.5 + ``amplitude``·z/std(z) clamped to [0, 1], z white Gaussian noise (from
    ``generator``) filtered by a Gaussian spectral window of σ ``width`` (one image of the
    shared :func:`components.noise.band_noise`)."""
    return noise.band_noise(torch.tensor([frequency], dtype=torch.float64), size, channels,
                            generator, width=width, amplitude=amplitude)[0]


def gradient_kernel(secret: str, keyed: bool = True) -> torch.Tensor:
    """The 3×3 derivative kernel of ∇: zero mean, the L2 norm of the seed's (√6); keyed or
    the seed's own."""
    if not keyed:
        return SEED_GRADIENT.clone()
    w = torch.randn((3, 3), generator=keyed_generator(secret, "gradient"))
    w = w - w.mean()
    return w / w.norm() * SEED_GRADIENT.norm()


def midband_kernel(secret: str) -> torch.Tensor:
    """The ``midband`` family's keyed ``MIDBAND_SIZE``² kernel ∇_mid: a Gabor
    ``exp(−|x|²/2σ²)·cos(2π ω·x + φ)`` with |ω| uniform in ``MIDBAND_RADIUS``, orientation
    uniform in [0, π) and phase φ uniform in [0, 2π) from the key's HMAC stream, its DC
    removed under the envelope (zero mean, as ∇), scaled to the seed's ∇ norm (√6)."""
    u = torch.rand(3, generator=keyed_generator(secret, "midband/kernel"), dtype=torch.float64)
    lo, hi = MIDBAND_RADIUS
    r, theta, phase = lo + (hi - lo) * float(u[0]), math.pi * float(u[1]), 2 * math.pi * float(u[2])
    half = MIDBAND_SIZE // 2
    pos = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = pos[:, None], pos[None, :]
    env = torch.exp(-(yy ** 2 + xx ** 2) / (2 * MIDBAND_ENVELOPE ** 2))
    wave = torch.cos(2 * math.pi * r * (yy * math.sin(theta) + xx * math.cos(theta)) + phase)
    h = env * (wave - (env * wave).sum() / env.sum())  # zero DC under the envelope
    h = h - h.mean()
    return (h / h.norm() * SEED_GRADIENT.norm()).float()


def apply_gradient(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """∇x: the k×k ``kernel`` (k odd: 3, or ``MIDBAND_SIZE``) on every channel of
    ``B×C×H×W`` ``x`` (replicate padding, same size out)."""
    c, k = x.shape[1], kernel.shape[-1]
    weight = kernel.to(x)[None, None].expand(c, 1, k, k)  # c 1 k k
    return F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate"), weight, groups=c)


def _upsample(k: torch.Tensor, scale: int) -> torch.Tensor:
    side = k.shape[-1] * scale
    return F.interpolate(k, size=(side, side), mode="bilinear", align_corners=False)


def host_input(k: torch.Tensor, task: str, scale: int = 2) -> torch.Tensor:
    """What the host sees for ``B×C×t×t`` triggers: K (denoise) or K̂ (SR, ``B×C×st×st``)."""
    if task == "denoise":
        return k
    if task == "sr":
        return _upsample(k, scale)
    raise InputError(f"unknown task {task!r}; expected denoise or sr")


def verification_target(k: torch.Tensor, kernel: torch.Tensor, task: str,
                        scale: int = 2) -> torch.Tensor:
    """S0 = G(K) for ``B×C×t×t`` triggers, clamped to [0, 1]: ``B×C×T×T``."""
    if task == "denoise":
        return (k - apply_gradient(k, kernel)).clamp(0, 1)
    up = host_input(k, task, scale)
    return (up + apply_gradient(up, kernel)).clamp(0, 1)


def key_material(secret: str, size: int, channels: int, task: str, scale: int = 2,
                 keyed: bool = True, family: str = "filter"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(host input for K, S0 = G(K))`` of a key, each ``1×C×T×T``; ``family`` picks K and
    ∇: ``filter`` (:func:`trigger`, keyed 3×3 ∇; the default), ``band`` (:func:`band_trigger`,
    keyed 3×3 ∇) or ``midband`` (:func:`trigger`, :func:`midband_kernel`; ``keyed=False``
    gives the seed's ∇ in every family, the ablation)."""
    if family in ("filter", "midband"):
        k = trigger(secret, size, channels)[None]  # 1 c t t
    elif family == "band":
        k = band_trigger(secret, size, channels)[None]  # 1 c t t
    else:
        raise InputError(f"unknown key family {family!r}; expected one of {KEY_FAMILIES}")
    kernel = midband_kernel(secret) if family == "midband" and keyed else \
        gradient_kernel(secret, keyed)
    return host_input(k, task, scale), verification_target(k, kernel, task, scale)


def negative_inputs(generator: torch.Generator, n: int, size: int, channels: int, task: str,
                    scale: int = 2) -> torch.Tensor:
    """``n`` host inputs of white U(0, 1) noise of the trigger's shape (the contrastive
    embedding's negatives, tk14): ``n×C×T×T``, the SR host's upsample like K's."""
    if n < 1 or size < 1 or channels not in (1, 3):
        raise InputError(f"negative_inputs: need n, size >= 1 and 1 or 3 channels, got {n}, "
                         f"{size}, {channels}")
    return host_input(torch.rand((n, channels, size, size), generator=generator), task, scale)


def distance(s_prime: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """d(S, S′) = ‖S′ − S‖₂ / (√C·M·N) per item, both clamped to [0, 1] first.

    Args:
        s_prime: ``B×C×M×N`` (or ``C×M×N``) triggered outputs.
        s: the verification image(s), same shape or broadcastable.

    Returns:
        ``B`` distances (a 0-d tensor for unbatched input).
    """
    a, b = torch.broadcast_tensors(s_prime.float().clamp(0, 1), s.float().clamp(0, 1))
    c, m, n = a.shape[-3:]
    return (a - b).flatten(-3).norm(dim=-1) / (c ** 0.5 * m * n)


def ncc(s_prime: torch.Tensor, s: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalised correlation coefficient (centred) of S′ and S per item, in [−1, 1]."""
    a, b = torch.broadcast_tensors(s_prime.float().clamp(0, 1), s.float().clamp(0, 1))
    a, b = a.flatten(-3), b.flatten(-3)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


__all__ = ["BAND_AMPLITUDE", "BAND_RADIUS", "BAND_WIDTH", "DOMAIN", "KEY_FAMILIES",
           "MIDBAND_ENVELOPE", "MIDBAND_RADIUS", "MIDBAND_SIZE", "SEED_GRADIENT",
           "apply_gradient", "band_frequency", "band_noise", "band_trigger", "distance",
           "fingerprint", "gradient_kernel", "host_input", "key_material", "keyed_generator",
           "midband_kernel", "ncc", "negative_inputs", "trigger", "verification_target"]
