"""Differentiable attacks (kornia) for training and Expectation over Transformation.

Each attack draws per-image parameters in ``sample`` and applies them in
``apply``; an image whose ``on`` flag is 0 passes unchanged, so one batched call
applies a random *subset* of the chain to every image.

kornia is imported inside the ``apply`` methods that call it: methods import this module
for its config (``EoTConfig``) even where they only verify, and importing kornia costs a
noticeable part of a one-photo ``neuralmark verify``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from neuralmark.components.attacks.base import ImageAttack, Params, select_rows, uniform


def _switch(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).float()


def _blend(x: torch.Tensor, y: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    on = on.to(x.device).view(-1, 1, 1, 1)
    return on * y + (1 - on) * x


class DiffRotate(ImageAttack):
    """Rotation by U(−max_deg, max_deg) about the centre, zero fill."""

    name = "rotate"

    def __init__(self, max_deg: float = 10.0, p: float = 0.5) -> None:
        self.max_deg, self.p = max_deg, p

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {"angle": uniform(-self.max_deg, self.max_deg, batch_size, generator),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        import kornia

        angle = (params["angle"] * params["on"]).to(x)
        return kornia.geometry.transform.rotate(x, angle, padding_mode="zeros")


class DiffZoom(ImageAttack):
    """Isotropic zoom by U(lo, hi) about the centre (size kept; zero fill when < 1)."""

    name = "zoom"

    def __init__(self, lo: float = 0.8, hi: float = 1.2, p: float = 0.5) -> None:
        self.lo, self.hi, self.p = lo, hi, p

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {"factor": uniform(self.lo, self.hi, batch_size, generator),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        import kornia

        f = (1 + (params["factor"] - 1) * params["on"]).to(x)
        return kornia.geometry.transform.scale(x, f.view(-1, 1).repeat(1, 2))


class DiffResize(ImageAttack):
    """Down-sample by U(lo, 1) then back up: the resolution loss of a resize attack."""

    name = "resize"

    def __init__(self, lo: float = 0.5, p: float = 0.5) -> None:
        self.lo, self.p = lo, p

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        # one factor per call: interpolate needs a single output size
        return {"factor": uniform(self.lo, 1.0, 1, generator).repeat(batch_size),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        h, w = x.shape[-2:]
        f = float(params["factor"][0])
        small = F.interpolate(x, size=(max(8, round(h * f)), max(8, round(w * f))),
                              mode="bilinear", antialias=True, align_corners=False)
        back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        return _blend(x, back, params["on"])


class DiffCrop(ImageAttack):
    """Keep a random window of U(lo, 1) of each side, resized back to full size."""

    name = "crop"

    def __init__(self, lo: float = 0.8, p: float = 0.5) -> None:
        self.lo, self.p = lo, p

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        frac = uniform(self.lo, 1.0, batch_size, generator)
        return {"frac": frac, "ox": torch.rand(batch_size, generator=generator),
                "oy": torch.rand(batch_size, generator=generator),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        import kornia

        b, _, h, w = x.shape
        frac = 1 - (1 - params["frac"]) * params["on"]
        cw, ch = frac * (w - 1), frac * (h - 1)
        x0, y0 = params["ox"] * (w - 1 - cw), params["oy"] * (h - 1 - ch)
        boxes = torch.stack([
            torch.stack([x0, y0], -1), torch.stack([x0 + cw, y0], -1),
            torch.stack([x0 + cw, y0 + ch], -1), torch.stack([x0, y0 + ch], -1),
        ], dim=1).to(x)  # b 4 2
        return kornia.geometry.transform.crop_and_resize(x, boxes, (h, w))


class DiffNoise(ImageAttack):
    """Additive Gaussian noise with σ ~ U(0, max_std)."""

    name = "noise"

    def __init__(self, max_std: float = 0.03, p: float = 0.5) -> None:
        self.max_std, self.p = max_std, p

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        # "row" / "n": which rows of the drawn noise each image takes, so a process of a
        # data-parallel job (``select_rows``) adds the noise one process would add
        return {"std": uniform(0, self.max_std, batch_size, generator),
                "on": _switch(batch_size, self.p, generator),
                "seed": torch.randint(0, 2**31 - 1, (1,), generator=generator),
                "row": torch.arange(batch_size), "n": torch.tensor([batch_size])}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(int(params["seed"][0]))
        if "row" in params:  # the noise of the draw's whole batch, this draw's rows
            shape = (int(params["n"][0]), *x.shape[1:])
            noise = torch.randn(shape, generator=g)[params["row"]].to(x)
        else:                # a draw made before "row" existed
            noise = torch.randn(x.shape, generator=g).to(x)
        std = (params["std"] * params["on"]).to(x).view(-1, 1, 1, 1)
        return (x + std * noise).clamp(0, 1)


def gaussian_blur_rows(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with one σ per image, as one depthwise convolution per axis.

    The same filter as ``kornia.filters.gaussian_blur2d(x, kernel, sigma)`` (taps
    exp(−t²/2σ²) at t = −k//2 … k//2, normalised; reflect border, separable) written as two
    grouped ``conv2d`` calls over all images and channels at once, without kornia's
    per-call checks and kernel set-up.

    Shapes: ``x`` B×C×H×W, ``sigma`` B → B×C×H×W. ``kernel`` odd, ≤ min(H, W).
    """
    if kernel % 2 != 1:
        raise ValueError(f"blur kernel must be odd, got {kernel}")
    b, c, h, w = x.shape
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    taps = torch.exp(-(t**2) / (2 * sigma.to(x).view(-1, 1) ** 2))          # b k
    taps = (taps / taps.sum(dim=1, keepdim=True)).repeat_interleave(c, 0)   # (b c) k
    r = kernel // 2
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, taps.view(b * c, 1, 1, kernel), groups=b * c)          # 1 (b c) h+2r w
    y = F.conv2d(y, taps.view(b * c, 1, kernel, 1), groups=b * c)          # 1 (b c) h w
    return y.view(b, c, h, w)


class DiffBlur(ImageAttack):
    """Gaussian blur with σ ~ U(0.1, max_sigma), kernel 2·⌈3·max_sigma⌉+1.

    ``impl`` "kornia": ``kornia.filters.gaussian_blur2d``; "conv": :func:`gaussian_blur_rows`
    (the same filter as two depthwise convolutions, cheaper per call).
    """

    name = "blur"

    def __init__(self, max_sigma: float = 1.5, p: float = 0.5,
                 impl: Literal["kornia", "conv"] = "kornia") -> None:
        if impl not in ("kornia", "conv"):
            raise ValueError(f"DiffBlur impl must be 'kornia' or 'conv', got {impl!r}")
        self.max_sigma, self.p, self.impl = max_sigma, p, impl

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {"sigma": uniform(0.1, self.max_sigma, batch_size, generator),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        k = 2 * int(torch.ceil(torch.tensor(3 * self.max_sigma))) + 1
        if self.impl == "conv":
            return _blend(x, gaussian_blur_rows(x, k, params["sigma"]), params["on"])
        import kornia

        sigma = params["sigma"].to(x).view(-1, 1).repeat(1, 2)
        return _blend(x, kornia.filters.gaussian_blur2d(x, k, sigma), params["on"])


class DiffBrightnessContrast(ImageAttack):
    """Multiplicative brightness U(1±b) then contrast about the image mean U(1±c)."""

    name = "brightness_contrast"

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, p: float = 0.5) -> None:
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {"b": uniform(1 - self.brightness, 1 + self.brightness, batch_size, generator),
                "c": uniform(1 - self.contrast, 1 + self.contrast, batch_size, generator),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        on = params["on"]
        b = (1 + (params["b"] - 1) * on).to(x).view(-1, 1, 1, 1)
        c = (1 + (params["c"] - 1) * on).to(x).view(-1, 1, 1, 1)
        y = x * b
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        return ((y - mean) * c + mean).clamp(0, 1)


class DiffJPEG(ImageAttack):
    """Differentiable JPEG, quality U(lo, hi).

    ``impl`` "kornia": ``kornia.enhance.jpeg_codec_differentiable``; "blockdct":
    :func:`~neuralmark.components.attacks.jpeg_codec.jpeg_blockdct` (the same round trip
    with the quantisation folded into one DCT matrix product per view, ~3× cheaper on CPU;
    its agreement with kornia and PIL is in the pgd_signer model card, session ps7).
    Both need H, W divisible by 16: other sizes are padded by reflection and cropped back.
    """

    name = "jpeg"

    def __init__(self, lo: float = 50.0, hi: float = 95.0, p: float = 0.5,
                 impl: Literal["kornia", "blockdct"] = "kornia") -> None:
        if impl not in ("kornia", "blockdct"):
            raise ValueError(f"DiffJPEG impl must be 'kornia' or 'blockdct', got {impl!r}")
        self.lo, self.hi, self.p, self.impl = lo, hi, p, impl

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {"quality": uniform(self.lo, self.hi, batch_size, generator),
                "on": _switch(batch_size, self.p, generator)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if not bool(params["on"].any()):
            return x
        h, w = x.shape[-2:]
        ph, pw = (-h) % 16, (-w) % 16
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        from neuralmark.components.attacks.jpeg_codec import jpeg_differentiable

        y = jpeg_differentiable(xp, params["quality"].to(x), self.impl)[..., :h, :w]
        return _blend(x, y.clamp(0, 1), params["on"])


def _inside(u: torch.Tensor, size: int) -> torch.Tensor:
    """Weight a bilinear, zero-padded sample at pixel coordinate ``u`` takes from inside a
    frame of ``size`` pixels (1 inside, falling to 0 one pixel outside)."""
    return (1 - F.relu(-u) - F.relu(u - (size - 1))).clamp(0, 1)


class FusedWarp(ImageAttack):
    """Crop, zoom and rotate of one draw as one affine resampling per image.

    ``EoTChain``'s three geometric attacks run as three kornia calls, each a full bilinear
    resampling with its own grid set-up. Here the three pixel maps (all affine, all about the
    same pixel grid, ``align_corners=True`` as kornia's) are applied in turn to the output
    pixel grid, point by point (cheap: 2×2 per pixel), and the image is resampled once
    (``F.grid_sample``). What the three calls' zero fill does (a zoom out or a rotation
    shows black where its input frame ends) is kept by weighting each output pixel by how
    far inside the frame its point lands after the rotation and after the zoom (the weight a
    bilinear, zero-padded sample takes), the point then clamped to that frame: each of the
    three alone is its kornia call up to float rounding. Composed, it differs
    from the three calls by their extra interpolations (one bilinear resampling instead of
    three, so slightly less smoothing); ``tests/test_attacks_eot_fused.py`` bounds it.

    ``params``: the three attacks' draws, keys ``"crop.*"``, ``"zoom.*"``, ``"rotate.*"``
    (as ``EoTChain.stages`` builds them), and ``"on"``: any of the three on.
    Shapes: ``x`` B×C×H×W → B×C×H×W, differentiable in ``x``.
    """

    name = "warp"

    def __init__(self, crop: DiffCrop, zoom: DiffZoom, rotate: DiffRotate) -> None:
        self.crop, self.zoom, self.rotate = crop, zoom, rotate

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        draws = {a: getattr(self, a).sample(batch_size, generator)
                 for a in ("crop", "zoom", "rotate")}
        params = {f"{a}.{k}": v for a, d in draws.items() for k, v in d.items()}
        params["on"] = torch.stack([d["on"] for d in draws.values()]).amax(dim=0)
        return params

    @staticmethod
    def matrices(params: Params, h: int, w: int) -> torch.Tensor:
        """Output-to-input pixel maps of the rotation, the zoom and the crop (B×3×2×3, in
        the order a point goes back through them)."""
        def get(a: str, k: str) -> torch.Tensor:
            return params[f"{a}.{k}"].double()

        cx, cy = (w - 1) / 2, (h - 1) / 2
        b = params["crop.on"].shape[0]
        maps = torch.zeros(b, 3, 2, 3, dtype=torch.float64)
        # rotation (kornia.geometry.transform.rotate: OpenCV's getRotationMatrix2D about the
        # centre, dst − c = [[cos, sin], [−sin, cos]] (src − c)); inverse = transpose
        theta = torch.deg2rad(get("rotate", "angle") * get("rotate", "on"))
        cos, sin = torch.cos(theta), torch.sin(theta)
        maps[:, 0, 0, 0], maps[:, 0, 0, 1], maps[:, 0, 0, 2] = cos, -sin, cx - cos * cx + sin * cy
        maps[:, 0, 1, 0], maps[:, 0, 1, 1], maps[:, 0, 1, 2] = sin, cos, cy - sin * cx - cos * cy
        # zoom (kornia.geometry.transform.scale about the centre): src = (dst − c) / f + c
        f = 1 + (get("zoom", "factor") - 1) * get("zoom", "on")
        maps[:, 1, 0, 0], maps[:, 1, 0, 2] = 1 / f, cx - cx / f
        maps[:, 1, 1, 1], maps[:, 1, 1, 2] = 1 / f, cy - cy / f
        # crop (DiffCrop's box, kornia.geometry.transform.crop_and_resize): src = frac·dst + o
        frac = 1 - (1 - get("crop", "frac")) * get("crop", "on")
        maps[:, 2, 0, 0], maps[:, 2, 0, 2] = frac, get("crop", "ox") * (w - 1) * (1 - frac)
        maps[:, 2, 1, 1], maps[:, 2, 1, 2] = frac, get("crop", "oy") * (h - 1) * (1 - frac)
        return maps

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        b, _, h, w = x.shape
        maps = self.matrices(params, h, w)                                       # b 3 2 3
        ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                                torch.arange(w, dtype=x.dtype, device=x.device),
                                indexing="ij")
        px, py = xs.reshape(1, h * w), ys.reshape(1, h * w)                      # 1 hw
        weight = None
        eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=maps.dtype)
        for i in range(3):
            m = maps[:, i]
            if bool((m == eye).all()):
                continue  # this stage is off for every image: nothing to map or fill
            # back through one stage (element-wise: a B×HW×2 @ 2×2 matmul is slower)
            c = [m[:, r, k].to(x).view(b, 1) for r in range(2) for k in range(3)]
            px, py = c[0] * px + c[1] * py + c[2], c[3] * px + c[4] * py + c[5]
            if i < 2:
                # a point past the stage's input frame is zero-filled there (kornia's zero
                # padding: the weight falls to 0 one pixel out); the stage before it reads
                # that frame's edge (its pixels are all on the grid); the crop's box lies
                # inside the image, so the last stage back fills nothing
                inside = _inside(px, w) * _inside(py, h)
                weight = inside if weight is None else weight * inside
                px, py = px.clamp(0, w - 1), py.clamp(0, h - 1)
        # grid_sample's align_corners=True: −1 … 1 spans pixels 0 … n−1
        grid = torch.stack([px * (2 / (w - 1)) - 1, py * (2 / (h - 1)) - 1], -1)
        out = F.grid_sample(x, grid.expand(b, -1, -1).view(b, h, w, 2), mode="bilinear",
                            padding_mode="border", align_corners=True)
        return out if weight is None else out * weight.view(b, 1, h, w)


class EoTConfig(BaseModel):
    """Strengths of the transformation distribution used for EoT and training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p: float = 0.5
    rotate_deg: float = 10.0
    zoom: tuple[float, float] = (0.8, 1.2)
    resize_min: float = 0.5
    crop_min: float = 0.8
    noise_std: float = 0.03
    blur_sigma: float = 1.5
    brightness: float = 0.3
    contrast: float = 0.3
    jpeg: tuple[float, float] = (50.0, 95.0)
    #: differentiable JPEG of the chain: the block-DCT codec (``jpeg_blockdct``, ~3× cheaper),
    #: or kornia's; "blockdct" since session ps7 passed its acceptance rule (pgd_signer card)
    jpeg_impl: Literal["kornia", "blockdct"] = "blockdct"
    #: run crop, zoom and rotate as one composed affine resampling (``FusedWarp``) instead
    #: of three kornia calls; the draws are the same (session ps8, pgd_signer card)
    fused_warp: bool = False
    #: Gaussian blur: kornia's ``gaussian_blur2d`` or the same filter as two depthwise
    #: convolutions (``gaussian_blur_rows``; session ps8)
    blur_impl: Literal["kornia", "conv"] = "kornia"


class EoTChain(ImageAttack):
    """Random chain: each attack applied to each image with probability ``p``.

    Order: geometric (crop, zoom, rotate, resize), photometric (brightness /
    contrast, blur), then noise and JPEG last, as a real pipeline would.
    """

    name = "eot"

    def __init__(self, config: EoTConfig | None = None) -> None:
        c = config or EoTConfig()
        self.attacks: list[ImageAttack] = [
            DiffCrop(c.crop_min, c.p), DiffZoom(*c.zoom, c.p), DiffRotate(c.rotate_deg, c.p),
            DiffResize(c.resize_min, c.p), DiffBrightnessContrast(c.brightness, c.contrast, c.p),
            DiffBlur(c.blur_sigma, c.p, c.blur_impl), DiffNoise(c.noise_std, c.p),
            DiffJPEG(*c.jpeg, c.p, c.jpeg_impl),
        ]
        self.warp = FusedWarp(*self.attacks[:3]) if c.fused_warp else None

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               per_view: int = 0, shared: bool = False) -> Params:
        """Draw the chain's parameters for ``batch_size`` images.

        Args:
            per_view: stochastic EoT: each image keeps ``per_view`` of the chain's n attacks,
                drawn uniformly without replacement, and switches each kept attack on with
                probability min(1, p·n / per_view), so an attack is on for an image at the
                chain's rate p while ``per_view`` ≥ p·n (fewer attacks per image: the EoT
                expectation is estimated from fewer compositions, each attack as often); the
                other attacks are off. 0 or ≥ n: the chain's own draw, unchanged (nothing
                more is drawn from ``generator``).
            shared: with ``per_view``, every image keeps the same ``per_view`` attacks (one
                composition per call, each with its own per-image parameters and switch), so
                the sparse chain makes ``per_view`` attack calls instead of up to n.
        """
        n = len(self.attacks)
        if per_view < 0:
            raise ValueError(f"per_view must be ≥ 0 (0: all attacks), got {per_view}")
        if shared and not 0 < per_view < n:
            raise ValueError(f"shared needs 0 < per_view < {n} (the attacks every image "
                             f"keeps), got per_view={per_view}")
        params = {f"{i}.{k}": v for i, a in enumerate(self.attacks)
                  for k, v in a.sample(batch_size, generator).items()}
        if 0 < per_view < n:
            rows = 1 if shared else batch_size
            kept = torch.rand(rows, n, generator=generator).argsort(dim=1)[:, :per_view]
            kept = kept.expand(batch_size, -1)
            chosen = torch.zeros(batch_size, n, dtype=torch.bool).scatter_(1, kept, True)
            u = torch.rand(batch_size, n, generator=generator)
            for i, a in enumerate(self.attacks):
                rate = min(1.0, getattr(a, "p", 1.0) * n / per_view)
                params[f"{i}.on"] = (chosen[:, i] & (u[:, i] < rate)).float()
        return params

    def apply(self, x: torch.Tensor, params: Params, only_on: bool = False) -> torch.Tensor:
        """Apply the draw ``params`` to ``x`` (B×3×H×W → B×3×H×W).

        Args:
            only_on: run each attack on the images whose ``on`` flag is 1 only, and pass the
                others through untouched. The attacks' switched-off forms are the identity
                up to rounding (a blend with weight 0, a zero-degree rotation, a full-frame
                crop) but each still costs a full pass and its backward; with ``p`` 0.5 most
                of a signing step's EoT views were such passes (model card, embed speed).
                Off by default: geometric attacks resample even when switched off, so the
                output differs from the dense chain by rounding.
        """
        for _, attack, sub in self.stages(params):
            rows = sub["on"].nonzero().flatten() if only_on and "on" in sub else None
            if rows is None or len(rows) == x.shape[0]:
                x = attack.apply(x, sub)
            elif len(rows):  # 0 < rows < B, so B ≥ 2 and select_rows is unambiguous
                rows = rows.to(x.device)
                x = x.index_copy(0, rows, attack.apply(x[rows],
                                                       select_rows(sub, rows, x.shape[0])))
        return x

    def stages(self, params: Params) -> list[tuple[str, ImageAttack, Params]]:
        """The calls ``apply`` makes, in order: (name, attack, that attack's part of the
        draw). With ``fused_warp`` the first three (crop, zoom, rotate) are one ``FusedWarp``
        call whose ``on`` is any of theirs."""
        subs = [{k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{i}.")}
                for i in range(len(self.attacks))]
        out = [(a.name, a, s) for a, s in zip(self.attacks, subs, strict=True)]
        if self.warp is None:
            return out
        warp = {f"{name}.{k}": v for name, _, s in out[:3] for k, v in s.items()}
        warp["on"] = torch.stack([s["on"] for _, _, s in out[:3]]).amax(dim=0)
        return [("warp", self.warp, warp)] + out[3:]
