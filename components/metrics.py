"""Image-quality and watermark metrics, one value per image (shape ``B``).

Images are B×C×H×W float in [0, 1] (``data_range = 1``). SSIM comes from
``torchmetrics.functional`` with a per-image reduction, imported inside ``ssim``:
importing torchmetrics pulls in torchvision's model zoo, which would make every
user of this module (the CLI's ``verify`` among them) start seconds slower. PSNR
is the same arithmetic as torchmetrics' ``peak_signal_noise_ratio`` written in
torch (a test checks they agree exactly), so the embed path needs no torchmetrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
        a: B×C×H×W in [0, 1] (e.g. marked).
        b: B×C×H×W in [0, 1] (e.g. original).

    Returns:
        B values ``10·log10(1 / MSE)``; ``inf`` where the images are identical.
    """
    _same_shape(a, b, "psnr")
    a, b = a.detach().float(), b.detach().float()
    diff = a - b  # b c h w
    mse = (diff * diff).sum(dim=(1, 2, 3)) / math.prod(a.shape[1:])  # b
    # torchmetrics' expression, op for op (so the same float32 result): 2·ln(range) − ln(MSE)
    ln_peak = 2 * torch.log(torch.tensor(1.0))  # data_range = 1
    return (ln_peak - torch.log(mse)) * (10 / torch.log(torch.tensor(10.0)))  # b, in dB


def block_psnr(a: torch.Tensor, b: torch.Tensor, block: int = 32) -> torch.Tensor:
    """PSNR of every ``block``×``block`` tile, in dB: where a mark is visible.

    A whole-image PSNR averages a blotch on a flat sky with a clean textured rest; the
    worst block (``worst_block_psnr``) shows it. Tiles are non-overlapping from the
    top-left corner; a partial row or column at the right/bottom edge is left out.

    Args:
        a: B×C×H×W in [0, 1] (e.g. marked), H and W at least ``block``.
        b: B×C×H×W in [0, 1] (e.g. original).
        block: tile side, px (≥ 1).

    Returns:
        B×(H // block)×(W // block) values; ``inf`` where a tile is identical.

    Raises:
        ValueError: unequal shapes, ``block`` < 1, or an image smaller than ``block``.
    """
    _same_shape(a, b, "block_psnr")
    if block < 1:
        raise ValueError(f"block must be at least 1 px, got {block}")
    if a.ndim != 4 or min(a.shape[-2:]) < block:
        raise ValueError(f"block_psnr needs B×C×H×W images with H, W >= {block}, got "
                         f"{tuple(a.shape)}")
    diff = a.detach().double() - b.detach().double()
    mse = torch.nn.functional.avg_pool2d((diff * diff).mean(dim=1, keepdim=True), block)
    return (-10 * torch.log10(mse))[:, 0].float()  # b gh gw, data_range = 1


def worst_block_psnr(a: torch.Tensor, b: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Lowest ``block_psnr`` per image (B values, dB; ``inf`` if the images are equal)."""
    return block_psnr(a, b, block).flatten(1).amin(dim=1)


def seam_energy_ratio(a: torch.Tensor, b: torch.Tensor, tile: int, band: int = 4) -> torch.Tensor:
    """Energy of the difference ``a − b`` along tile borders over its energy elsewhere.

    Mean squared difference (over channels) within ``band`` px of an interior border of
    the ``tile``-px grid, divided by the mean elsewhere: 1 for a stamp as strong at the
    borders as inside, < 1 where it thins at the borders (a seam), > 1 where it piles up.

    Args:
        a: B×C×H×W images (e.g. stamped), H and W multiples of ``tile``, at least 2 tiles.
        b: B×C×H×W images (e.g. the originals).
        tile: the grid's tile side in px.
        band: half-width of the border band in px (< tile / 2).

    Returns:
        B ratios (NaN where the difference is zero away from the borders).
    """
    _same_shape(a, b, "seam_energy_ratio")
    h, w = a.shape[-2:]
    if h % tile or w % tile or max(h, w) < 2 * tile or not 0 < band < tile // 2:
        raise ValueError(f"seam_energy_ratio needs sides that are multiples of tile={tile} "
                         f"(2 tiles at least, got {h}×{w}) and 0 < band < tile/2 (got {band})")
    e = (a.double() - b.double()).pow(2).mean(dim=1)                      # b h w
    near = torch.zeros(h, w, dtype=torch.bool, device=a.device)
    for k in range(tile, h, tile):
        near[k - band:k + band, :] = True
    for k in range(tile, w, tile):
        near[:, k - band:k + band] = True
    return e[:, near].mean(dim=1) / e[:, ~near].mean(dim=1)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Gaussian window σ=1.5, 11 px).

    Args:
        a: B×C×H×W in [0, 1], H and W at least 11.
        b: B×C×H×W in [0, 1].

    Returns:
        B values in [-1, 1]; 1 for identical images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _same_shape(a, b, "ssim")
    a, b = a.detach().float(), b.detach().float()
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")  # b


def bit_accuracy(decoded: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Share of bits that agree, per image.

    Args:
        decoded: B×K bits (0/1, bool) or bit probabilities; thresholded at 0.5.
        expected: B×K or K expected bits (broadcast over the batch).

    Returns:
        B values in [0, 1].
    """
    decoded = torch.as_tensor(decoded)
    expected = torch.as_tensor(expected, device=decoded.device)
    if decoded.ndim != 2:
        raise ValueError(f"decoded bits must be B×K, got {tuple(decoded.shape)}")
    if expected.shape[-1] != decoded.shape[-1]:
        raise ValueError(f"expected {expected.shape[-1]} bits, decoded {decoded.shape[-1]}")
    correct = (decoded.float() > 0.5) == (expected.float() > 0.5)  # b k
    return correct.float().mean(dim=-1)  # b


def normalized_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalized correlation (NC) between an extracted and a reference logo, per image.

    ``NC = Σ a·b / (sqrt(Σ a²) · sqrt(Σ b²))`` over all but the batch dimension
    (uncentred, as in the logo-watermark literature, e.g. Zhang et al. AAAI'20).

    Args:
        a: B×... extracted logos (e.g. B×C×H×W).
        b: same shape (or broadcastable) reference logos.
        eps: guard for all-zero inputs, whose NC is 0.

    Returns:
        B values in [-1, 1]; 1 for identical non-zero inputs.
    """
    a, b = torch.broadcast_tensors(a.detach().float(), b.detach().float())
    a, b = a.flatten(1), b.flatten(1)  # b n
    num = (a * b).sum(dim=1)  # b
    den = a.norm(dim=1) * b.norm(dim=1)  # b
    return num / den.clamp_min(eps)


def tpr_at_fpr(
    pos_scores: torch.Tensor | Sequence[float],
    neg_scores: torch.Tensor | Sequence[float],
    fpr: float,
) -> tuple[float, float]:
    """True-positive rate at a target false-positive rate (rule: ``score > threshold``).

    The threshold is the smallest order statistic of ``neg_scores`` that keeps
    at most ``floor(fpr · N)`` negatives strictly above it, so the empirical FPR
    never exceeds ``fpr``.

    Args:
        pos_scores: P scores of marked inputs (higher = more watermark-like).
        neg_scores: N scores of unmarked inputs.
        fpr: target false-positive rate in [0, 1].

    Returns:
        ``(tpr, threshold)``; threshold is ``-inf`` when ``fpr`` allows every negative.
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    pos = torch.as_tensor(pos_scores, dtype=torch.float64).flatten()  # p
    neg = torch.as_tensor(neg_scores, dtype=torch.float64).flatten()  # n
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("tpr_at_fpr needs at least one positive and one negative score")
    allowed = math.floor(fpr * neg.numel() + 1e-9)
    if allowed >= neg.numel():
        threshold = -math.inf
    else:
        threshold = float(torch.sort(neg, descending=True).values[allowed])
    tpr = float((pos > threshold).double().mean())
    return tpr, threshold
