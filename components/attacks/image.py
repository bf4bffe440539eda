"""Evaluation attacks on images, built on the ``ImageAttack`` sample/apply split.

Every attack takes ``x`` of shape B×C×H×W (float, values in [0, 1]) and returns
a batch with the same B and C, values in [0, 1]. Only ``Resize`` and ``Crop``
change H×W (methods' ``verify`` accepts any size). Random draws live in
``sample`` (``Crop`` offsets, ``GaussianNoise`` seeds), so ``apply(x, params)``
replays one draw exactly.

Codecs (``JPEG``, ``WebP``) run the real PIL encoder per image through a uint8
round trip and pass gradients straight through (``x + (y - x).detach()``), so a
PGD signer can still differentiate through them. The geometric and value
attacks are plain differentiable torch/kornia ops.

Each attack has a ``name`` (registry key, see ``neuralmark.components.attacks.registry``)
and a ``strength`` (its one knob, ``None`` where it has none).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import rotate as kornia_rotate
from PIL import Image

from neuralmark.components.attacks.base import ImageAttack, Params, uniform

__all__ = [
    "JPEG", "WebP", "Resize", "Crop", "Rotate", "GaussianBlur", "GaussianNoise",
    "Brightness", "Contrast", "Combo", "Identity",
]


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"an attack expects a B×C×H×W tensor, got {shape}")


class Identity(ImageAttack):
    """No attack: the reference row (``none``) of every suite."""

    name = "none"
    differentiable = True

    def __init__(self) -> None:
        self.strength: float | None = None

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Return ``x`` unchanged (B×C×H×W)."""
        _check_batch(x)
        return x


# -- codecs --------------------------------------------------------------------


def _pil_roundtrip(img: torch.Tensor, fmt: str, quality: int) -> torch.Tensor:
    """Encode and decode one image with PIL.

    Args:
        img: C×H×W float in [0, 1], C in {1, 3}.
        fmt: PIL format name (``"JPEG"`` or ``"WEBP"``).
        quality: encoder quality in [1, 100].

    Returns:
        C×H×W float32 in [0, 1] on the CPU, multiples of 1/255.
    """
    arr = (img.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # c h w
    if arr.shape[0] == 1:
        pil = Image.fromarray(arr[0].numpy(), mode="L")
    elif arr.shape[0] == 3:
        pil = Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")
    else:
        raise ValueError(f"{fmt} needs 1 or 3 channels, got {arr.shape[0]}")
    buf = io.BytesIO()
    pil.save(buf, format=fmt, quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = np.asarray(decoded.convert(pil.mode), dtype=np.uint8).copy()
    out_t = torch.from_numpy(out).float() / 255  # h w [c]
    return out_t.unsqueeze(0) if out_t.ndim == 2 else out_t.permute(2, 0, 1)  # c h w


class _Codec(ImageAttack):
    """Real lossy codec per image with a straight-through gradient."""

    differentiable = False  # the codec is not, the STE passes an identity gradient
    _format: str = "JPEG"

    def __init__(self, quality: float = 75) -> None:
        if not 1 <= float(quality) <= 100:
            raise ValueError(f"{self.name} quality must lie in [1, 100], got {quality}")
        self.strength = float(quality)

    @property
    def quality(self) -> int:
        return int(round(self.strength))

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Compress and decompress every image.

        Args:
            x: B×C×H×W float in [0, 1], C in {1, 3}.
            params: unused (codecs are deterministic).

        Returns:
            B×C×H×W decoded images; forward value = codec output, gradient = identity.
        """
        _check_batch(x)
        y = torch.stack([_pil_roundtrip(img, self._format, self.quality) for img in x])  # b c h w
        y = y.to(device=x.device, dtype=x.dtype)
        return x + (y - x).detach()


class JPEG(_Codec):
    """PIL JPEG at ``quality`` (1–100; lower = stronger), straight-through gradient."""

    name = "jpeg"
    _format = "JPEG"


class WebP(_Codec):
    """PIL WebP (lossy) at ``quality`` (1–100; lower = stronger), straight-through gradient."""

    name = "webp"
    _format = "WEBP"


# -- geometry ------------------------------------------------------------------


class Resize(ImageAttack):
    """Rescale both sides by ``scale`` (antialiased bilinear); the output keeps the new size."""

    name = "resize"

    def __init__(self, scale: float = 0.5) -> None:
        if float(scale) <= 0:
            raise ValueError(f"resize scale must be positive, got {scale}")
        self.strength = float(scale)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Resize.

        Args:
            x: B×C×H×W float in [0, 1].
            params: unused.

        Returns:
            B×C×round(s·H)×round(s·W) (at least 1 px a side), values in [0, 1].
        """
        _check_batch(x)
        h, w = x.shape[-2:]
        size = (max(1, round(h * self.strength)), max(1, round(w * self.strength)))
        if size == (h, w):
            return x
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return y.clamp(0, 1)  # b c h' w'


class Crop(ImageAttack):
    """Keep ``fraction`` of each side at a random offset (drawn in ``sample``)."""

    name = "crop"

    def __init__(self, fraction: float = 0.9) -> None:
        if not 0 < float(fraction) <= 1:
            raise ValueError(f"crop fraction must lie in (0, 1], got {fraction}")
        self.strength = float(fraction)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        """Offsets as fractions of the free margin.

        Returns:
            ``{"offset": B×2}`` with (top, left) in [0, 1); independent of image size.
        """
        return {"offset": uniform(0.0, 1.0, 2 * batch_size, generator).view(batch_size, 2)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Crop every image at its own offset.

        Args:
            x: B×C×H×W float in [0, 1].
            params: ``{"offset": B×2}`` from ``sample``.

        Returns:
            B×C×round(f·H)×round(f·W).
        """
        _check_batch(x)
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * self.strength)), max(1, round(w * self.strength))
        offsets = params["offset"].tolist()
        if len(offsets) != x.shape[0]:
            raise ValueError(f"crop params are for {len(offsets)} images, batch has {x.shape[0]}")
        crops = []
        for img, (u_top, u_left) in zip(x, offsets, strict=True):
            top = min(int(u_top * (h - ch + 1)), h - ch)
            left = min(int(u_left * (w - cw + 1)), w - cw)
            crops.append(img[:, top:top + ch, left:left + cw])  # c ch cw
        return torch.stack(crops)  # b c ch cw


class Rotate(ImageAttack):
    """Rotate by ``degrees`` (counter-clockwise) about the centre, same size out.

    Corners that come from outside the image are filled with zeros (black), as a
    photo editor's rotate-without-crop does. Reflection padding would hand the
    decoder mirrored copies of the mark, which flatters robustness.
    """

    name = "rotate"
    padding_mode = "zeros"

    def __init__(self, degrees: float = 5.0) -> None:
        self.strength = float(degrees)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Rotate.

        Args:
            x: B×C×H×W float in [0, 1].
            params: unused.

        Returns:
            B×C×H×W rotated images (bilinear), values in [0, 1].
        """
        _check_batch(x)
        if self.strength == 0:
            return x
        angle = torch.full((x.shape[0],), self.strength, device=x.device, dtype=x.dtype)  # b
        y = kornia_rotate(x, angle, mode="bilinear", padding_mode=self.padding_mode)
        return y.clamp(0, 1)


# -- filters and values --------------------------------------------------------


class GaussianBlur(ImageAttack):
    """Gaussian blur of standard deviation ``sigma`` px, kernel 2·ceil(3σ)+1."""

    name = "blur"

    def __init__(self, sigma: float = 1.0) -> None:
        if float(sigma) < 0:
            raise ValueError(f"blur sigma must be non-negative, got {sigma}")
        self.strength = float(sigma)

    @property
    def kernel_size(self) -> int:
        return 2 * math.ceil(3 * self.strength) + 1

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Blur (reflect borders; replicate when the kernel outgrows the image).

        Args:
            x: B×C×H×W float in [0, 1].
            params: unused.

        Returns:
            B×C×H×W blurred images.
        """
        _check_batch(x)
        if self.strength == 0:
            return x
        k = self.kernel_size
        border = "reflect" if k // 2 < min(x.shape[-2:]) else "replicate"
        y = gaussian_blur2d(x, (k, k), (self.strength, self.strength), border_type=border)
        return y.clamp(0, 1)


class GaussianNoise(ImageAttack):
    """Additive white Gaussian noise of standard deviation ``std``, then clamp.

    ``sample`` draws one integer seed per image, so the noise replays exactly
    and does not depend on the image size known only at ``apply`` time.
    """

    name = "noise"

    def __init__(self, std: float = 0.02) -> None:
        if float(std) < 0:
            raise ValueError(f"noise std must be non-negative, got {std}")
        self.strength = float(std)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        """Returns ``{"seed": B}`` int64 seeds."""
        return {"seed": torch.randint(0, 2**62, (batch_size,), generator=generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Add the seeded noise.

        Args:
            x: B×C×H×W float in [0, 1].
            params: ``{"seed": B}`` from ``sample``.

        Returns:
            B×C×H×W noisy images clamped to [0, 1].
        """
        _check_batch(x)
        seeds = params["seed"].tolist()
        if len(seeds) != x.shape[0]:
            raise ValueError(f"noise params are for {len(seeds)} images, batch has {x.shape[0]}")
        noise = torch.stack([
            torch.randn(tuple(x.shape[1:]), generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]).to(device=x.device, dtype=x.dtype)  # b c h w
        return (x + self.strength * noise).clamp(0, 1)


class Brightness(ImageAttack):
    """Multiply every pixel by ``factor`` (>1 brighter), then clamp."""

    name = "brightness"

    def __init__(self, factor: float = 1.3) -> None:
        if float(factor) < 0:
            raise ValueError(f"brightness factor must be non-negative, got {factor}")
        self.strength = float(factor)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Returns B×C×H×W ``clamp(factor · x, 0, 1)``."""
        _check_batch(x)
        return (x * self.strength).clamp(0, 1)


class Contrast(ImageAttack):
    """Scale deviations from the image's mean grey by ``factor`` (torchvision's rule), clamp."""

    name = "contrast"

    def __init__(self, factor: float = 1.3) -> None:
        if float(factor) < 0:
            raise ValueError(f"contrast factor must be non-negative, got {factor}")
        self.strength = float(factor)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Returns B×C×H×W ``clamp(m + factor · (x − m), 0, 1)``, m = per-image mean luma."""
        _check_batch(x)
        if x.shape[1] == 3:
            weights = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            grey = (x * weights).sum(1, keepdim=True)  # b 1 h w
        else:
            grey = x.mean(1, keepdim=True)  # b 1 h w
        mean = grey.mean(dim=(2, 3), keepdim=True)  # b 1 1 1
        return (mean + self.strength * (x - mean)).clamp(0, 1)


# -- combination ---------------------------------------------------------------


class Combo(ImageAttack):
    """``JPEG(quality) ∘ Crop(fraction) ∘ Brightness(factor)``: brighten, crop, then compress.

    Params of the stages are namespaced (``"crop.offset"``) so one draw replays.
    """

    name = "combo"
    differentiable = False

    def __init__(self, quality: float = 75, fraction: float = 0.9,
                 brightness: float = 1.2) -> None:
        self.strength: float | None = None
        self.stages: list[ImageAttack] = [Brightness(brightness), Crop(fraction), JPEG(quality)]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        """Returns the stages' params, keys prefixed with the stage name."""
        return {
            f"{stage.name}.{k}": v
            for stage in self.stages
            for k, v in stage.sample(batch_size, generator).items()
        }

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply the stages in order.

        Args:
            x: B×C×H×W float in [0, 1].
            params: from ``sample``.

        Returns:
            B×C×round(f·H)×round(f·W).
        """
        _check_batch(x)
        for stage in self.stages:
            prefix = f"{stage.name}."
            own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            x = stage.apply(x, own)
        return x
