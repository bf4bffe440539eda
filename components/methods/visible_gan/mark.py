"""The visible mark: a built-in logo, marks read from files, placement and blending.

A mark is a ``4×R×R`` float tensor in [0, 1]: RGB colour ``c`` and alpha ``α`` (not
premultiplied). On an ``H×W`` image it is a square of side ``scale·min(H, W)`` centred in
the image (``place_mark``), and it is blended as ``x′ = x + β·α·(c − x)`` (``blend``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from neuralmark.components.errors import InputError

#: a pixel of an alpha-less mark within this distance (max over RGB, in [0, 1]) of the
#: mark's border colour becomes transparent
BACKGROUND_TOLERANCE = 0.08


def builtin_mark(resolution: int = 64) -> torch.Tensor:
    """The default logo: a white ring crossed by a bar, outlined in black.

    White with a black outline stays visible on dark and bright images alike. Drawn
    analytically (anti-aliased edges), so it needs no file.

    Returns:
        ``4×resolution×resolution`` RGBA in [0, 1].
    """
    t = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    px = 2.0 / resolution  # one pixel in these coordinates

    def inside(d: torch.Tensor) -> torch.Tensor:  # signed distance (< 0 inside) → coverage
        return (0.5 - d / px).clamp(0, 1)

    r = torch.sqrt(xx**2 + yy**2)
    ring = (r - 0.62).abs() - 0.14
    bar = torch.maximum((xx + yy).abs() / 2**0.5 - 0.11, r - 0.62)
    shape = torch.minimum(ring, bar)
    core = inside(shape)
    outline = inside(shape - 0.07)
    colour = core.expand(3, -1, -1)  # white core, black outline
    return torch.cat([colour, outline[None]]).contiguous()


def _square(rgb: np.ndarray, alpha: np.ndarray, resolution: int) -> torch.Tensor:
    """Pad to a transparent square and resize (premultiplied, antialiased) to ``resolution``."""
    h, w = alpha.shape
    side = max(h, w)
    c = np.zeros((side, side, 3), np.float32)
    a = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    c[top:top + h, left:left + w] = rgb
    a[top:top + h, left:left + w] = alpha
    x = torch.from_numpy(np.concatenate([c * a[..., None], a[..., None]], axis=2))
    x = x.permute(2, 0, 1)[None]                                              # 1 4 side side
    if side != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                          antialias=True, align_corners=False)
    x = x[0].clamp(0, 1)
    alpha_t = x[3:]
    colour = torch.where(alpha_t > 1e-4, x[:3] / alpha_t.clamp_min(1e-4), torch.zeros_like(x[:3]))
    return torch.cat([colour.clamp(0, 1), alpha_t]).contiguous()


def mark_from_array(pixels: np.ndarray, resolution: int = 64) -> tuple[torch.Tensor, list[str]]:
    """A mark from an ``H×W×3`` (RGB) or ``H×W×4`` (RGBA) uint8 array.

    A mark without alpha is keyed on its border colour: pixels within
    ``BACKGROUND_TOLERANCE`` of the median border colour become transparent, the rest
    opaque (the returned notes say so).

    Returns:
        ``(mark, notes)``: ``4×resolution×resolution`` RGBA in [0, 1] and the conversions.

    Raises:
        InputError: not an H×W×3/4 uint8 array, or nothing of the mark is visible.
    """
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise InputError(f"a mark must be an H×W×3 or H×W×4 uint8 array, got "
                         f"{pixels.dtype} {pixels.shape}")
    notes: list[str] = []
    arr = pixels.astype(np.float32) / 255.0
    rgb = arr[..., :3]
    if pixels.shape[2] == 4:
        alpha = arr[..., 3]
        if float(alpha.max()) < 1 / 255:
            raise InputError("the mark is fully transparent: nothing would be visible")
    else:
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        background = np.median(border, axis=0)
        distance = np.abs(rgb - background).max(axis=2)
        alpha = (distance > BACKGROUND_TOLERANCE).astype(np.float32)
        if float(alpha.mean()) == 0.0:
            raise InputError("the mark has no alpha channel and is one colour: nothing of "
                             "it would be visible; give a PNG with transparency")
        notes.append(
            "the mark has no alpha channel: pixels within "
            f"{BACKGROUND_TOLERANCE:.0%} of its border colour "
            f"(RGB {tuple(int(round(v * 255)) for v in background)}) were made transparent, "
            f"the rest ({alpha.mean():.0%} of it) opaque")
    return _square(rgb, alpha, resolution), notes


def load_mark(path: str | os.PathLike, resolution: int = 64) -> tuple[torch.Tensor, list[str]]:
    """Read a mark file (PNG with transparency preferred): see ``mark_from_array``.

    Palette and grey+alpha files are converted to RGBA; other modes to RGB (then keyed
    on the border colour).

    Raises:
        InputError: the file is missing, unreadable or not a usable mark (named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mark {path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode == "P" and "transparency" in im.info)
            pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"mark {path} is not a readable image: {err}") from None
    try:
        mark, notes = mark_from_array(pixels, resolution)
    except InputError as err:
        raise InputError(f"mark {path}: {err}") from None
    return mark, [f"mark {path.name}: {n}" for n in notes]


def mark_box(h: int, w: int, scale: float) -> tuple[int, int, int]:
    """``(top, left, side)`` of the centred mark square on an ``h×w`` image."""
    side = max(1, round(scale * min(h, w)))
    return (h - side) // 2, (w - side) // 2, side


def place_mark(mark: torch.Tensor, h: int, w: int, scale: float,
               shifts: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
    """The mark on an ``h×w`` transparent canvas, centred, optionally displaced per image.

    Args:
        mark: ``4×R×R`` RGBA.
        h, w: canvas size.
        scale: mark side as a fraction of ``min(h, w)``.
        shifts: ``B×2`` integer (dy, dx) pixel displacements, or ``None`` (no shift).
        batch: B when ``shifts`` is ``None``.

    Returns:
        ``B×4×h×w`` RGBA canvases (α = 0 off the mark; a displaced mark is cut at the edges).
    """
    top, left, side = mark_box(h, w, scale)
    m = mark[None].to(torch.float32)
    # resize premultiplied colour and alpha together (no dark fringes), then unpremultiply
    pre = torch.cat([m[:, :3] * m[:, 3:], m[:, 3:]], dim=1)
    if side != mark.shape[-1]:
        pre = F.interpolate(pre, size=(side, side), mode="bilinear", antialias=True,
                            align_corners=False).clamp(0, 1)
    a = pre[:, 3:]
    tile = torch.cat([torch.where(a > 1e-4, pre[:, :3] / a.clamp_min(1e-4),
                                  torch.zeros_like(pre[:, :3])).clamp(0, 1), a], dim=1)[0]
    b = batch if shifts is None else shifts.shape[0]
    canvas = torch.zeros(b, 4, h, w, dtype=mark.dtype, device=mark.device)
    for i in range(b):
        dy, dx = (0, 0) if shifts is None else (int(shifts[i, 0]), int(shifts[i, 1]))
        y0, x0 = top + dy, left + dx
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(h, y0 + side), min(w, x0 + side)
        if ye > ys and xe > xs:
            canvas[i, :, ys:ye, xs:xe] = tile[:, ys - y0:ye - y0, xs - x0:xe - x0]
    return canvas


def box_mask(h: int, w: int, scale: float, batch: int = 1,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """``B×1×h×w``: 1 on the (undisplaced) mark square, 0 elsewhere."""
    top, left, side = mark_box(h, w, scale)
    mask = torch.zeros(batch, 1, h, w, device=device)
    mask[:, :, top:top + side, left:left + side] = 1.0
    return mask


def feathered_support(alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """Where W may change the mark: its pixels, dilated and feathered by ``radius`` px.

    ``B×1×H×W`` alpha → ``B×1×H×W`` in [0, 1]: 1 on the mark (α > 0.02) and within
    ``radius`` px of it, falling to 0 over the next ``radius`` px. Confining W's change to
    this (not to the mark's whole square) is what keeps a box from showing: W otherwise
    raises α over the transparent part of the square, and the square's edge became a
    visible step (``scripts/visible_gan_residual_figure.py``).
    """
    on = (alpha > 0.02).to(alpha.dtype)
    if radius <= 0:
        return on
    k = 2 * radius + 1
    dilated = F.max_pool2d(on, k, stride=1, padding=radius)
    return F.avg_pool2d(dilated, k, stride=1, padding=radius, count_include_pad=False)


def blend(images: torch.Tensor, canvas: torch.Tensor, beta: float) -> torch.Tensor:
    """``x + β·α·(c − x)``: ``B×3×H×W`` images, ``B×4×H×W`` canvas → ``B×3×H×W`` in [0, 1]."""
    alpha = canvas[:, 3:] * beta
    return (images + alpha * (canvas[:, :3] - images)).clamp(0, 1)
