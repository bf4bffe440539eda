"""A cheap differentiable JPEG: 8×8 block DCT as one matrix product per view.

``jpeg_blockdct`` models the baseline JPEG round trip the way libjpeg (PIL) runs it:
RGB → YCbCr (JFIF, kornia's ``rgb_to_ycbcr``), 4:2:0 chroma by 2×2 averaging (libjpeg's
``h2v2_downsample``), 8×8 orthonormal DCT, the standard (Annex K) tables scaled by the
IJG quality formula, rounding, and the inverse with bilinear chroma upsampling
(libjpeg's "fancy" triangular upsampling away from the border).

Why not ``kornia.enhance.jpeg_codec_differentiable`` (``DiffJPEG``'s other ``impl``): on
CPU most of its time is a fixed cost per call that the model does not need
(profiled in the pgd_signer model card, session ps7): its chroma subsampling is
``rescale(..., antialias=True)``, a Gaussian blur run as 4 single-channel convolutions
whose backward is ~40 % of a forward + backward; its tables pass through a soft floor and
a soft clip on every call; and its quantise / dequantise and DCT / IDCT are separate
element-wise passes over every coefficient. Here, per view, the quantisation is folded
into the DCT matrix (``D / q`` on the way in, ``q · Dᵀ`` on the way out), so the
coefficients are touched by two batched matrix products and the rounding only, and the
chroma goes through ``avg_pool2d``, which is also what libjpeg does. The rounding is
kornia's cubic surrogate (``round(x) + (x − round(x))³``, Shin & Song 2017), so the
gradients compare with kornia's. The quality is not differentiated (EoT draws it).

:func:`jpeg_differentiable` is the one place a differentiable JPEG is chosen: every caller
(``DiffJPEG``, the stochastic chain's JPEG, the clean-variety JPEG) names an ``impl`` of
:data:`JPEG_IMPLS` and gets that codec.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F

#: the differentiable JPEG codecs: kornia's ``jpeg_codec_differentiable``, :func:`jpeg_blockdct`
JPEG_IMPLS = ("kornia", "blockdct")
JpegImpl = Literal["kornia", "blockdct"]

#: JPEG Annex K luminance and chrominance quantisation tables (row-major 8×8)
_QT_Y = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
         14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
         18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_QT_C = (17, 18, 24, 47, *(99,) * 4, 18, 21, 26, 66, *(99,) * 4,
         24, 26, 56, *(99,) * 5, 47, 66, *(99,) * 6, *(99,) * 32)


@functools.cache
def _dct_matrix() -> torch.Tensor:
    """64×64 orthonormal 2-D DCT-II of a row-major 8×8 block: ``coef = block @ M``."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)                            # 8×8, rows = frequencies
    return torch.kron(d, d).T.float().contiguous()  # (pixel ij) × (frequency uv)


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IJG-scaled luma and chroma tables for each quality: B → (B×64, B×64), in [1, 255].

    ``scale = 5000 / q`` below 50 and ``200 − 2q`` from 50 (libjpeg's
    ``jpeg_quality_scaling``; fractional qualities keep their fractional scale), then
    ``floor((base · scale + 50) / 100)`` clipped to [1, 255] (baseline tables).
    """
    q = quality.detach().double().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q).floor().view(-1, 1)
    tables = []
    for base in (_QT_Y, _QT_C):
        t = torch.tensor(base, dtype=torch.float64).view(1, 64)
        tables.append(((t * scale + 50) / 100).floor().clamp(1, 255).float())
    return tables[0], tables[1]


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """N×H×W (H, W multiples of 8) → N×(H/8·W/8)×64, row-major 8×8 blocks."""
    n, h, w = x.shape
    return x.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 64)


def _unblocks(b: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of ``_blocks``."""
    n = b.shape[0]
    return b.view(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _code(blocks: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantise and dequantise N×L×64 pixel blocks (centred) with N×64 tables."""
    m = _dct_matrix().to(blocks)
    enc = m.unsqueeze(0) / table.unsqueeze(1)          # N×64×64: DCT then ÷ q
    dec = table.unsqueeze(2) * m.T.unsqueeze(0)        # N×64×64: × q then IDCT
    c = torch.bmm(blocks, enc)
    r = c.round()
    c = r + (c - r) ** 3                               # kornia's cubic rounding surrogate
    return torch.bmm(c, dec)


def jpeg_blockdct(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG round trip at ``quality`` (one per image).

    Shapes: ``x`` B×3×H×W in [0, 1] with H, W multiples of 16; ``quality`` B (or 1,
    shared) in [1, 100] → B×3×H×W in [0, 1]. Differentiable in ``x``.
    """
    from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"jpeg_blockdct needs B×3×H×W images, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    if h % 16 or w % 16:
        raise ValueError(f"jpeg_blockdct needs H and W divisible by 16 (4:2:0 MCUs), got {h}×{w}")
    quality = quality.reshape(-1)
    if quality.numel() not in (1, b):
        raise ValueError(f"jpeg_blockdct needs 1 or {b} qualities, got {quality.numel()}")
    qy, qc = quant_tables(quality.expand(b) if quality.numel() == 1 else quality)
    ycc = rgb_to_ycbcr(x) * 255 - 128                              # B×3×H×W, centred
    chroma = F.avg_pool2d(ycc[:, 1:], 2)                           # B×2×H/2×W/2, 4:2:0
    y = _unblocks(_code(_blocks(ycc[:, 0]), qy.to(x)), h, w)
    c = _code(_blocks(chroma.reshape(2 * b, h // 2, w // 2)).view(b, -1, 64),
              qc.to(x)).view(2 * b, -1, 64)
    c = _unblocks(c, h // 2, w // 2).view(b, 2, h // 2, w // 2)
    c = F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False)
    out = ycbcr_to_rgb((torch.cat([y.unsqueeze(1), c], 1) + 128) / 255)
    return out.clamp(0, 1)


def jpeg_differentiable(x: torch.Tensor, quality: torch.Tensor,
                        impl: JpegImpl = "kornia") -> torch.Tensor:
    """The differentiable JPEG round trip of codec ``impl`` (:data:`JPEG_IMPLS`).

    ``kornia``: ``kornia.enhance.jpeg_codec_differentiable`` as it is (it pads to whole
    MCUs inside); ``blockdct``: :func:`jpeg_blockdct`, on a reflection padding to multiples
    of 16 cropped back.

    Shapes: ``x`` B×3×H×W in [0, 1]; ``quality`` B (or 1, shared) in [1, 100] → B×3×H×W.
    Differentiable in ``x``.

    Raises:
        ValueError: an unknown ``impl``, or what the codec raises (not 3 channels, …).
    """
    if impl == "kornia":
        import kornia

        return kornia.enhance.jpeg_codec_differentiable(x, quality)
    if impl != "blockdct":
        raise ValueError(f"unknown differentiable JPEG {impl!r}; expected one of {JPEG_IMPLS}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    if not (ph or pw):
        return jpeg_blockdct(x, quality)
    return jpeg_blockdct(F.pad(x, (0, pw, 0, ph), mode="reflect"), quality)[..., :h, :w]


__all__ = ["JPEG_IMPLS", "JpegImpl", "jpeg_blockdct", "jpeg_differentiable", "quant_tables"]
