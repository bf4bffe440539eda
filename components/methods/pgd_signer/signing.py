"""``pgd_signer``'s signing: the JND map and L2 PGD under EoT against a decoder."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from neuralmark.components import distributed
from neuralmark.components.attacks.differentiable import EoTChain

if TYPE_CHECKING:
    from neuralmark.components.methods.pgd_signer.config import PGDSignerConfig


def jnd_map(x: torch.Tensor, floor: float = 0.25) -> torch.Tensor:
    """Where a perturbation hides: normalised local gradient energy.

    Shapes: ``x`` B×3×H×W → B×1×H×W in ``[floor, 1]``.
    """
    import kornia  # here, not at module level: verify never needs it

    gray = x.mean(dim=1, keepdim=True)
    mag = kornia.filters.sobel(gray)
    mag = kornia.filters.gaussian_blur2d(mag, 7, (2.0, 2.0))
    mag = mag / (mag.amax(dim=(2, 3), keepdim=True) + 1e-6)
    return floor + (1 - floor) * mag.sqrt()


def radius(config: PGDSignerConfig, psnr: float) -> float:
    """L2 radius of the ``psnr`` budget at the working size."""
    n = 3 * config.working_size**2
    return math.sqrt(n) * 10 ** (-psnr / 20)

def project(config: PGDSignerConfig, delta: torch.Tensor, x: torch.Tensor, psnr: float
            ) -> torch.Tensor:
    """``delta`` into the L∞ cap and the L2 ball of ``psnr``, ``x + delta`` into [0, 1]."""
    eps = config.linf_255 / 255
    delta = delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    delta = delta * (radius(config, psnr) / norms).clamp(max=1.0)
    return (x + delta).clamp(0, 1) - x


def eot_loss(config: PGDSignerConfig, logits: torch.Tensor, sign: torch.Tensor, b: int,
             views: int, hinge: torch.Tensor | None = None) -> torch.Tensor:
    """PGD's loss: the hinge ``relu(margin − sign·logit)``, the un-attacked view weighted
    ``clean_view_weight`` and the EoT views the rest.

    Shapes: ``logits`` (views·b)×n (the first b rows un-attacked), ``sign`` b×n in {−1, 1};
    ``hinge``: the same hinge if already computed.
    """
    if hinge is None:
        hinge = F.relu(config.margin - sign.repeat(views, 1) * logits)
    # the first copy is the un-attacked view: give it its own weight so the
    # signature always decodes from the image as delivered
    if views > 1:
        return (config.clean_view_weight * hinge[:b].mean()
                + (1 - config.clean_view_weight) * hinge[b:].mean())
    return hinge.mean()


def sign_working(method: Any, xw: torch.Tensor, target: torch.Tensor, steps: int,
                 generator: torch.Generator | None = None,
                 psnr: float | None = None, chain: EoTChain | None = None,
                 sharded: bool = False,
                 decoder: torch.nn.Module | None = None,
                 early_stop: int = 0, per_view: int = 0,
                 shared_draw: bool = False,
                 init: torch.Tensor | None = None) -> torch.Tensor:
    """PGD under EoT at the working size (``method``: the ``PGDSigner``, typed ``Any``
    because its module imports this one).

    Args:
        xw: B×3×S×S images in [0,1].
        target: B×n_bits bits in {0,1}.
        steps: PGD iterations.
        psnr: budget override (the EM curriculum); default ``psnr_target``.
        chain: EoT distribution override (the EM curriculum); default the config's.
        sharded: ``xw`` is this process's shard of a data-parallel global batch: the EoT
            draws are made for the global batch (``distributed.sample_shard``).
        decoder: the decoder to sign against (default the public ``method.decoder``).
        early_stop: stop signing an image once every one of its views (clean and EoT)
            cleared the margin on every bit in this many consecutive steps (0: run all
            ``steps``). A step where all views clear has a zero hinge, so its update is a
            no-op; the remaining steps only re-draw views. Not with ``sharded`` (a shard
            must draw the global batch's views every step).
        per_view: stochastic EoT: each attacked view keeps this many of the chain's attacks
            (``EoTChain.sample(per_view=…)``) and the chain runs only those (the sparse
            chain); 0 or ≥ the chain's length: every attack, as drawn. ``embed`` passes the
            config's ``eot_attacks_per_view``; EM's E-step keeps 0 (measured for embed only).
        shared_draw: with ``per_view`` in 1…n−1, all views of a step keep the same attacks
            (``EoTChain.sample(shared=True)``); with every attack kept it changes nothing.
            ``embed`` passes ``eot_shared_draw``.
        init: B×3×S×S residual to start from (in the budget: an embedder's,
            :func:`.embedder.initial_residual`); default zeros.
    Returns:
        B×3×S×S residual ``delta`` (``xw + delta`` in [0,1]).
    """
    c = method.config
    if early_stop and sharded:
        raise ValueError("early_stop needs every image's views drawn alone; "
                         "it cannot run on a data-parallel shard (sharded=True)")
    psnr = c.psnr_target if psnr is None else psnr
    chain = chain or method.eot
    sign_all = (2 * target - 1).to(xw)
    weight_all = jnd_map(xw) if c.jnd else torch.ones_like(xw[:, :1])
    delta_all = torch.zeros_like(xw) if init is None else init.detach().clone()
    budget = radius(c, psnr)
    net = decoder or method.decoder
    was_training = net.training
    net.eval()
    # stochastic EoT (a subset of the attacks per view) saves time only if the attacks no
    # view kept are skipped, so it runs the sparse chain; with every attack kept it is today's
    stochastic = 0 < per_view < len(chain.attacks)
    draw = {"per_view": per_view, **({"shared": True} if shared_draw else {})} \
        if stochastic else {}
    only_on = c.eot_only_on or stochastic
    # with early stopping, only the images still signing (``active``) take a step
    active = torch.arange(xw.shape[0], device=xw.device)
    cleared = torch.zeros(xw.shape[0], dtype=torch.long, device=xw.device)
    for t in range(steps):
        everyone = len(active) == xw.shape[0]
        x, sign, weight = ((xw, sign_all, weight_all) if everyone else
                           (xw[active], sign_all[active], weight_all[active]))
        delta = (delta_all if everyone else delta_all[active]).requires_grad_(True)
        b = x.shape[0]
        xs = (x + delta).clamp(0, 1)
        reps = xs.repeat(c.eot_samples, 1, 1, 1)
        params = (distributed.sample_shard(chain, b, generator, repeats=c.eot_samples, **draw)
                  if sharded else chain.sample(reps.shape[0], generator, **draw))
        # keep one un-attacked view so the clean signed image decodes too
        for k, v in params.items():
            if k.endswith(".on"):
                v[:b] = 0
        logits = net(chain.apply(reps, params, only_on=only_on))
        hinge = F.relu(c.margin - sign.repeat(c.eot_samples, 1) * logits)
        loss = eot_loss(c, logits, sign, b, c.eot_samples, hinge)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            # L2 PGD: a step is a fraction of the budget's radius along the
            # JND-weighted gradient, so every budget is actually spent
            g = grad * weight
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            frac = c.pgd_step * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / max(1, steps))))
            delta = project(c, delta - frac * budget * g, x, psnr)
            if everyone:
                delta_all = delta
            else:
                delta_all[active] = delta
            if early_stop:
                clear = hinge.view(c.eot_samples, b, -1).amax(dim=(0, 2)) == 0   # b
                cleared[active] = torch.where(clear, cleared[active] + 1, 0)
                active = active[cleared[active] < early_stop]
                if not len(active):
                    break
    net.train(was_training)
    return delta_all.detach()
