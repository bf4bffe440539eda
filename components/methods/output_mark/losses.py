"""The losses of seed 001 (every λ is 1 except λ3 = 0.01; ‖·‖² is the per-pixel mean)::

    L_emd = λ1·‖H(b) − b‖² + λ2·ℓ_perc(H(b), b) + λ3·ℓ_adv(D, H(b))
            (+ λ_psnr·mean_i max(0, ‖H(b_i) − b_i‖² / m* − 1), m* = 10^(−psnr_target/10))
            (+ λ_hb·highband_share(H(b) − b))
    L_ext = λ4·ℓ_wm + λ5·ℓ_clean + λ6·ℓ_cst,   L = L_emd + λ·L_ext
    ℓ_wm    = ‖R(b′) − δ‖² (+ ‖R(b″) − δ‖² in stage 2)
    ℓ_clean = ‖R(a) − δ0‖² + ‖R(b) − δ0‖²        (δ0: the all-ones blank)
    ℓ_cst   = mean over pairs x, y ∈ B′ ∪ B″ of ‖R(x) − R(y)‖²

Pure functions of the networks and tensors they are given (``B×3×S×S`` in [0, 1]).
"""

from __future__ import annotations

import torch
from torch import nn

from neuralmark.components import distributed
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.nets.patchgan import gan_bce
from neuralmark.components.nets.perceptual import structural_perceptual_loss


def consistency(r: torch.Tensor) -> torch.Tensor:
    """ℓ_cst: mean over pairs i ≠ j of the per-pixel mean ``(r_i − r_j)²`` (r: N×3×H×W)."""
    n = r.shape[0]
    if n < 2:
        return r.sum() * 0
    return 2 * n / (n - 1) * (r - r.mean(0, keepdim=True)).pow(2).mean()


def embed_loss(config: OutputMarkConfig, disc: nn.Module, h_out: torch.Tensor,
               h_ref: torch.Tensor, sharded: bool = False, measure_highband: bool = True
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """L_emd = λ1 MSE + λ2 perceptual + λ3 adversarial of B′ (``h_out``) vs its reference,
    plus ``lambda_psnr`` times the PSNR hinge (:func:`psnr_hinge`) and
    ``mark_highband_weight`` times the residual's high-band share (:func:`highband_share`)
    when they are on.

    Returns:
        ``(loss, {"h_mse", "h_perc", "h_adv", "h_psnr_hinge", "h_highband"})``
        (``h_highband``: the share, measured whether or not it is weighted; absent when
        the weight is 0 and ``measure_highband`` is false).
        ``sharded``: ``h_out`` is this process's shard of a data-parallel batch; the share
        (a ratio of sums, not a per-row mean) is then taken over the global batch, so its
        value and gradient are the one-process ones (every process must pass the same
        ``measure_highband``: the share then gathers over all of them).
        ``measure_highband``: compute the share for the log when its weight is 0 (an FFT
        of the batch, and a gather under data parallelism); the loops pass it on their
        logging steps only.
    """
    c = config
    mse = (h_out - h_ref).pow(2).mean()
    hinge = psnr_hinge(h_out, h_ref, c.psnr_target) if c.lambda_psnr > 0 else mse * 0
    share = (lambda r: distributed.batch_statistic(highband_share, r)) if sharded \
        else highband_share
    highband: torch.Tensor | None = None
    if c.mark_highband_weight > 0:
        highband = share(h_out - h_ref)
    elif measure_highband:  # for the log only: no graph, so the loss is the seed's to the bit
        with torch.no_grad():
            highband = share(h_out.detach() - h_ref.detach())
    perc = structural_perceptual_loss(h_out, h_ref) if c.perceptual == "structural" \
        else mse * 0
    adv = gan_bce(disc(h_out), True)
    loss = c.lambda_mse * mse + c.lambda_perc * perc + c.lambda_adv * adv \
        + c.lambda_psnr * hinge
    if c.mark_highband_weight > 0 and highband is not None:
        loss = loss + c.mark_highband_weight * highband
    metrics = {"h_mse": float(mse.detach()), "h_perc": float(perc.detach()),
               "h_adv": float(adv.detach()), "h_psnr_hinge": float(hinge.detach())}
    if highband is not None:
        metrics["h_highband"] = float(highband.detach())
    return loss, metrics


def radial_bands(size: int) -> list[torch.Tensor]:
    """The three radial frequency thirds (low, mid, high) of an S×S ``torch.fft.fft2``
    grid as boolean masks; radius 1 is the diagonal Nyquist corner. The bands of
    ``scripts/output_mark_surrogate_diagnosis.py``, so a trained share reads as there."""
    f = torch.fft.fftfreq(size).abs()
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / (0.5 * 2 ** 0.5)  # 0..1
    return [radius < 1 / 3, (radius >= 1 / 3) & (radius < 2 / 3), radius >= 2 / 3]


def highband_share(residual: torch.Tensor) -> torch.Tensor:
    """Share of a batch of residuals' (N×3×S×S) spectral energy in the top radial third.

    A share, not an energy: the residual's amplitude is priced by the MSE term already, so
    this term can only be lowered by moving the mark to lower frequencies, not by shrinking
    it. Computed in float32 (cuFFT has no bf16). 0 for an all-zero residual.
    """
    r = residual.float()
    z = torch.fft.fft2(r)
    spec = (z.real ** 2 + z.imag ** 2).sum((0, 1))  # S×S, over images and channels
    high = radial_bands(r.shape[-1])[2].to(spec.device)
    total = spec.sum()
    return (spec * high).sum() / total.clamp_min(torch.finfo(spec.dtype).tiny)


def psnr_hinge(h_out: torch.Tensor, h_ref: torch.Tensor, target_db: float) -> torch.Tensor:
    """Mean over images of ``max(0, mse_i / m* − 1)``, m* the MSE at ``target_db`` dB.

    Zero for every image of ``h_out`` (B×3×S×S) at or above the target PSNR against
    ``h_ref``; scale-free above it (1 at twice the allowed MSE, i.e. 3 dB below).
    """
    allowed = 10.0 ** (-target_db / 10.0)
    mse = (h_out - h_ref).pow(2).flatten(1).mean(1)
    return torch.relu(mse / allowed - 1.0).mean()


def extract_loss(config: OutputMarkConfig, extractor: nn.Module, logo: torch.Tensor,
                 marked: list[torch.Tensor], clean: list[torch.Tensor], g: torch.Generator,
                 sharded: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """L_ext = λ4 ℓ_wm + λ5 ℓ_clean + λ6 ℓ_cst, one R forward over every image.

    To halve R's cost, the clean term sees one *mixed* batch — image i taken from
    a random one of the K clean sources (drawn with ``g``) — scaled by K, an
    unbiased estimate of the seed's sum over sources.

    Args:
        config: the λs and the ablation switches (``clean_loss``, ``consistency_loss``).
        extractor: R.
        logo: δ, 3×S×S.
        marked: batches that must give δ (B′, B″), each b×3×S×S.
        clean: K equally sized batches that must give the blank (A, B, targets).
        g: CPU generator of the mixing draw.
        sharded: the batches are this process's shard of a data-parallel global batch:
            the mixing draw is made for the global batch and ℓ_cst (a batch statistic)
            is computed on the global batch (``neuralmark.components.distributed``).

    Returns:
        ``(loss, {"r_wm", "r_clean", "r_cst"})``.
    """
    c = config
    mixed: list[torch.Tensor] = []
    if c.clean_loss and clean:
        b = clean[0].shape[0]
        pick = (distributed.batch_rows(len(clean), b * distributed.world_size(), g) if sharded
                else torch.randint(0, len(clean), (b,), generator=g))
        mixed = [torch.stack(clean)[pick, torch.arange(pick.numel())]]     # b 3 s s
    sizes = [x.shape[0] for x in marked + mixed]
    rec = extractor(torch.cat(marked + mixed)).split(sizes)
    target = logo[None].to(rec[0])
    r_marked = rec[: len(marked)]
    wm = sum((r - target).pow(2).mean() for r in r_marked)
    cln = len(clean) * (rec[-1] - 1.0).pow(2).mean() if mixed else wm * 0
    if not c.consistency_loss:
        cst = wm * 0
    elif sharded:  # over every process's rows (ℓ_cst does not depend on their order)
        cst = distributed.batch_statistic(consistency, torch.cat(r_marked))
    else:
        cst = consistency(torch.cat(r_marked))
    loss = c.lambda_wm * wm + c.lambda_clean * cln + c.lambda_cst * cst
    return loss, {"r_wm": float(wm.detach()), "r_clean": float(cln.detach()),
                  "r_cst": float(cst.detach())}


def disc_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss: real references vs (detached) marked outputs, non-saturating BCE."""
    return 0.5 * (gan_bce(disc(real), True) + gan_bce(disc(fake.detach()), False))


__all__ = ["consistency", "disc_loss", "embed_loss", "extract_loss", "highband_share",
           "radial_bands"]
