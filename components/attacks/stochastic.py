"""DeepRAFT's stochastic concatenation of augmentations (seed 004), differentiable.

Six kornia augmentations, each applied to each image with probability ``p``
(0.75 in the seed), in an order drawn at random for every call:

=====================  ==========================================  ===========================
augmentation           full strength (``strength = 1``)            kornia
=====================  ==========================================  ===========================
random resized crop    scale U(0.7, 1), aspect U(3/4, 4/3), back   ``RandomResizedCrop``
                       to the input size
rotation               U(−30°, 30°), zero fill                     ``RandomRotation``
colour jitter          brightness / contrast / saturation ≤ 0.3,   own ``color_jitter``
                       hue ≤ 0.1 (see below)                       (kornia colour ops)
Gaussian blur          odd kernel k ∈ {3, 5, 7}, σ ~ U(0.1, k/3)   ``RandomGaussianBlur``
perspective            distortion scale 0.1                        ``RandomPerspective``
JPEG                   quality U(50, 100), differentiable          ``RandomJPEG``'s draw, the
                                                                   codec ``jpeg_impl`` of
                                                                   ``attacks/jpeg_codec``
=====================  ==========================================  ===========================

``strength`` ∈ [0, 1] is the seed's curriculum (``aug_start`` → ``aug_end``):
every range shrinks linearly towards the identity (crop scale → 1, angle → 0,
jitter → 0, largest kernel → 3 and σ → 0.1, distortion → 0, quality → 100).
At strength 0 the chain is the identity.

Choices where the seed is vague (its README names the augmentations only):

* **Hue**: "colour jitter ≤ 0.3" is read as brightness, contrast and saturation
  factors in [0.7, 1.3]; hue (kornia's unit: fraction of a full turn) is capped
  at 0.1, because 0.3 would rotate colours by ±108°, which no forwarding path does.
* **Order**: one random permutation per call (per batch), each augmentation
  switched on per image with probability ``p``.
* **Blur kernel**: one kernel size per call (kornia fixes it per module), σ per image.

Own code, and why: kornia's augmentation modules draw from the global torch
RNG and have no ``generator`` argument, and their ranges are fixed when built.
This wrapper (a) seeds each draw from the caller's ``generator`` inside
``torch.random.fork_rng`` so a draw is reproducible and leaves the global RNG
alone, (b) keeps the house ``sample`` / ``apply`` split (kornia's own
``params=`` replay), and (c) rebuilds the modules for each curriculum strength.
The colour jitter is our own (``color_jitter``): kornia's ``ColorJitter``
adjusts hue and saturation through ``rgb_to_hsv``, whose backward divides by
``max − min`` and returns NaN on every grey pixel (anti_forward's training
diverged to NaN with it; README, "Measured figures outside the model cards"). Ours
keeps the same factor ranges but rotates hue in YIQ space and blends saturation with
the luma (both linear, finite gradients everywhere). The JPEG is kornia's ``RandomJPEG``
(draw, gate, replay) with the codec of ``jpeg_codec.jpeg_differentiable``: kornia's by
default (``StochasticAugConfig.jpeg_impl``; every anti_forward figure was measured with
it), or the block-DCT codec (~3× cheaper on CPU, pgd_signer card session ps7).
Everything else is kornia.
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from neuralmark.components.attacks.base import ImageAttack
from neuralmark.components.attacks.jpeg_codec import JpegImpl, jpeg_differentiable

NAMES = ("resized_crop", "rotation", "color_jitter", "blur", "perspective", "jpeg")


class StochasticAugConfig(BaseModel):
    """Full-strength ranges of the chain (the seed's values by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p: float = Field(0.75, ge=0.0, le=1.0)
    crop_scale_min: float = Field(0.7, gt=0.0, le=1.0)
    rotation_deg: float = Field(30.0, ge=0.0)
    jitter: float = Field(0.3, ge=0.0, lt=1.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)
    blur_kernel_max: int = Field(7, ge=3)
    perspective: float = Field(0.1, ge=0.0, le=1.0)
    jpeg_quality_min: float = Field(50.0, ge=1.0, le=100.0)
    #: the differentiable JPEG codec (``jpeg_codec.JPEG_IMPLS``): kornia's (the default,
    #: every anti_forward figure) or ``blockdct`` (~3× cheaper on CPU)
    jpeg_impl: JpegImpl = "kornia"
    enabled: tuple[str, ...] = NAMES


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


class StochasticAugmentation(ImageAttack):
    """The seed's chain at curriculum ``strength``.

    Shapes: ``x`` is B×3×H×W float in [0, 1] → B×3×H×W in [0, 1] (same size;
    JPEG pads H, W to multiples of 16 by reflection and crops back).
    Differentiable end to end with respect to ``x``.

    Args:
        config: full-strength ranges.
        strength: curriculum position in [0, 1] (0: identity, 1: full ranges).
    """

    name = "stochastic_aug"
    differentiable = True

    def __init__(self, config: StochasticAugConfig | None = None, strength: float = 1.0) -> None:
        self.config = config or StochasticAugConfig()
        unknown = sorted(set(self.config.enabled) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; valid: {list(NAMES)}")
        self.strength = float(min(1.0, max(0.0, strength)))

    def with_strength(self, strength: float) -> StochasticAugmentation:
        """Same ranges at another curriculum position."""
        return StochasticAugmentation(self.config, strength)

    def _modules(self, size: tuple[int, int], kernel: int) -> dict[str, Any]:
        """kornia modules at the current strength (``kernel``: blur size of this call)."""
        c, t = self.config, self.strength
        p = c.p
        mods: dict[str, Any] = {}
        if t <= 0 or p <= 0:
            return mods
        aspect = _lerp(1.0, 4 / 3, t)
        mods["resized_crop"] = K.RandomResizedCrop(
            size, scale=(_lerp(1.0, c.crop_scale_min, t), 1.0), ratio=(1 / aspect, aspect),
            p=p)
        mods["rotation"] = K.RandomRotation(c.rotation_deg * t, p=p)
        mods["color_jitter"] = ColorJitterYIQ(c.jitter * t, c.hue * t, p=p)
        mods["blur"] = K.RandomGaussianBlur(kernel, (0.1, _lerp(0.1, kernel / 3, t)), p=p)
        mods["perspective"] = K.RandomPerspective(c.perspective * t, p=p)
        mods["jpeg"] = CodecJPEG((_lerp(100.0, c.jpeg_quality_min, t), 100.0), p=p,
                                 impl=c.jpeg_impl)
        return {k: v for k, v in mods.items() if k in c.enabled}

    def _kernel(self, generator: torch.Generator | None) -> int:
        largest = 3 + 2 * round((self.config.blur_kernel_max - 3) / 2 * self.strength)
        choices = list(range(3, largest + 1, 2))
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               size: tuple[int, int] = (256, 256)) -> dict[str, Any]:
        """Draw one call: order, blur kernel, and every module's kornia params.

        Args:
            batch_size: B.
            generator: seeds the draw (the global RNG is left untouched).
            size: H, W of the images the draw is for.

        Returns:
            ``{"order": [names], "kernel": int, "seed": int, "params": {name: kornia params}}``.
        """
        kernel = self._kernel(generator)
        mods = self._modules(size, kernel)
        order_idx = torch.randperm(len(mods), generator=generator).tolist()
        names = list(mods)
        order = [names[i] for i in order_idx]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        params: dict[str, Any] = {}
        shape = (batch_size, 3, *size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in order:
                params[name] = mods[name].forward_parameters(torch.Size(shape))
        return {"order": order, "kernel": kernel, "seed": seed, "params": params,
                "size": size}

    def apply(self, x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """Replay a draw on ``x`` (B×3×H×W, H×W as sampled)."""
        if not params["order"]:
            return x
        if tuple(x.shape[-2:]) != tuple(params["size"]):
            raise ValueError(f"draw was for {params['size']}, got {tuple(x.shape[-2:])}")
        mods = self._modules(tuple(params["size"]), params["kernel"])
        for name in params["order"]:
            p = {k: (v.to(x.device) if isinstance(v, torch.Tensor) else v)
                 for k, v in params["params"][name].items()}
            if name == "jpeg":
                x = _jpeg(mods[name], x, p)
            else:
                x = mods[name](x, params=p)
            x = x.clamp(0, 1)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator, tuple(x.shape[-2:])))


class ColorJitterYIQ:
    """Brightness, contrast, saturation factors U(1 ± j) and hue rotation U(± hue turns).

    Same interface as a kornia augmentation for this chain
    (``forward_parameters(shape)`` draws from the global RNG, ``__call__(x, params=)``
    replays); every op is linear in ``x``, so gradients are finite everywhere.
    Shapes: B×3×H×W in [0, 1] → same.
    """

    # RGB → YIQ (NTSC); hue is a rotation of the (I, Q) chroma plane
    _RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                             [0.596, -0.274, -0.322],
                             [0.211, -0.523, 0.312]])

    def __init__(self, jitter: float, hue: float, p: float) -> None:
        self.jitter, self.hue, self.p = jitter, hue, p

    def forward_parameters(self, shape: torch.Size) -> dict[str, torch.Tensor]:
        b = shape[0]

        def factor() -> torch.Tensor:
            return 1 + self.jitter * (2 * torch.rand(b) - 1)

        return {"brightness": factor(), "contrast": factor(), "saturation": factor(),
                "hue": self.hue * (2 * torch.rand(b) - 1),
                "batch_prob": (torch.rand(b) < self.p).float()}

    def __call__(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        on = params["batch_prob"].to(x).view(-1, 1, 1, 1)

        def mix(v: torch.Tensor) -> torch.Tensor:  # factor 1 where switched off
            return 1 + (v.to(x).view(-1, 1, 1, 1) - 1) * on

        y = x * mix(params["brightness"])
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * mix(params["contrast"]) + mean
        m = self._RGB2YIQ.to(x)
        yiq = torch.einsum("ij,bjhw->bihw", m, y)                        # b 3 h w
        sat = mix(params["saturation"])
        angle = (params["hue"].to(x) * 2 * torch.pi).view(-1, 1, 1) * on.view(-1, 1, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)                    # b 1 1
        i, q = yiq[:, 1] * sat[:, 0], yiq[:, 2] * sat[:, 0]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq)


def _unit_clamp(x: torch.Tensor) -> torch.Tensor:
    """``x.clamp(0, 1)`` with an identity gradient on the closed range [0, 1] (kornia's
    ``RandomJPEG`` clamps so: ``torch.clamp``'s derivative at a bound differs by version)."""
    return torch.where((x >= 0) & (x <= 1), x, x.clamp(0, 1))


class CodecJPEG(K.RandomJPEG):
    """kornia's ``RandomJPEG`` — its quality draw, probability gate and ``params=`` replay —
    with the codec ``impl`` of :func:`jpeg_codec.jpeg_differentiable` (``kornia``: the same
    round trip as ``RandomJPEG``, bit for bit).

    Shapes: B×3×H×W in [0, 1] → same (H, W multiples of 16 for the chain's ``_jpeg``).
    """

    def __init__(self, jpeg_quality: tuple[float, float], p: float,
                 impl: JpegImpl = "kornia") -> None:
        super().__init__(jpeg_quality, p=p)
        self.impl = impl

    def apply_transform(self, input: torch.Tensor, params: dict[str, torch.Tensor],
                        flags: dict[str, Any], transform: torch.Tensor | None = None
                        ) -> torch.Tensor:
        if params["jpeg_quality"].numel() == 0 and input.shape[0] == 0:
            return input.clone()
        return jpeg_differentiable(_unit_clamp(input), params["jpeg_quality"], self.impl)


def _jpeg(module: Any, x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """The differentiable JPEG codecs work on whole 16×16 MCUs: reflect-pad, crop back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    if not (ph or pw):
        return module(x, params=params)
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return module(xp, params=params)[..., :h, :w]
