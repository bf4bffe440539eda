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

import torch
import torch.nn.functional as F

from neuralmark.components.errors import InputError
from neuralmark.components.payload import key_fingerprint, key_seed

DOMAIN = "neuralmark/trigger_key"
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


def gradient_kernel(secret: str, keyed: bool = True) -> torch.Tensor:
    """The 3×3 derivative kernel of ∇: zero mean, the L2 norm of the seed's (√6); keyed or
    the seed's own."""
    if not keyed:
        return SEED_GRADIENT.clone()
    w = torch.randn((3, 3), generator=keyed_generator(secret, "gradient"))
    w = w - w.mean()
    return w / w.norm() * SEED_GRADIENT.norm()


def apply_gradient(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """∇x: the 3×3 ``kernel`` on every channel of ``B×C×H×W`` ``x`` (replicate padding)."""
    c = x.shape[1]
    weight = kernel.to(x)[None, None].expand(c, 1, 3, 3)  # c 1 3 3
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=c)


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
                 keyed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(host input for K, S0 = G(K))`` of a key, each ``1×C×T×T``."""
    k = trigger(secret, size, channels)[None]  # 1 c t t
    kernel = gradient_kernel(secret, keyed)
    return host_input(k, task, scale), verification_target(k, kernel, task, scale)


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


__all__ = ["DOMAIN", "SEED_GRADIENT", "apply_gradient", "distance", "fingerprint",
           "gradient_kernel", "host_input", "key_material", "keyed_generator", "ncc",
           "trigger", "verification_target"]
