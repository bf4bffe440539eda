"""The two optimisation loops of ``output_mark``, over batches of one part of the split.

* :func:`train_embedder` — stage 1: H and R jointly on L_emd + λ·L_ext, D on its
  GAN loss (:mod:`.losses`); half of each batch photometrically jittered.
* :func:`finetune_extractor` — stage 2: R alone on L_ext with the marked images B′
  and the surrogate's outputs B″ (H frozen; jittered images get the B′ H makes
  of them).

Both loops can add a batch of extra clean images to the clean term (:func:`clean_rows`,
``training.clean_bank``) and show R a share of B′ as the service returns it at another
size (:func:`resize_round_trip`, ``config.resize_roundtrip``); both are off by default.

Each loop draws its batches, jitter and clean-term mixing from its own generator
(``config.seed`` + a stage offset), so it is reproducible wherever it runs.
:mod:`.training` calls them in the sequence; shapes are ``N×3×S×S`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from neuralmark.components import distributed
from neuralmark.components.data.pairs import photometric_jitter
from neuralmark.components.methods.base import Callbacks, resize_square
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.losses import disc_loss, embed_loss, extract_loss
from neuralmark.components.methods.output_mark.parts import OutputMarkParts
from neuralmark.components.time_budget import out_of_time

#: offsets added to ``config.seed`` for each loop's generator
STAGE1_SEED, STAGE2_SEED = 1, 2
#: offset of the generator that composes the batches of :func:`refresh_extractor_bn`
BN_REFRESH_SEED = 3
#: offset of the generator of :func:`pretrain_extractor` (its residual and its batches)
PRETRAIN_SEED = 4


def train_embedder(method: OutputMarkParts, a: torch.Tensor, b: torch.Tensor, gt: torch.Tensor,
                   callbacks: Callbacks | Sequence[Any] = (), step0: int = 0,
                   selector: Callable[[int], Any] | None = None,
                   clean_bank: torch.Tensor | None = None) -> dict[str, float]:
    """Stage 1's loop: train H, R (jointly, on L_emd + λ·L_ext) and D.

    Args:
        method: whose H, R, D train.
        a: N×3×S×S domain-A inputs.
        b: N×3×S×S M's outputs (H's input; ignored when task-specific).
        gt: N×3×S×S ground-truth targets (H's reference when task-specific).
        callbacks: metrics/progress sinks.
        step0: offset of the reported step numbers.
        selector: called with the number of steps done every ``config.select_every``
            steps and after the last one (:class:`.selection.CheckpointSelector`).
        clean_bank: K×3×S×S extra clean images (:func:`clean_rows`), or ``None``.

    Returns:
        The last reported metrics.
    """
    c, dev = method.config, method.device
    cb = distributed.main_only(Callbacks.of(callbacks))
    g = torch.Generator().manual_seed(c.seed + STAGE1_SEED)
    done = 0
    opt = torch.optim.Adam(list(method.H.parameters()) + list(method.R.parameters()), lr=c.lr,
                           betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(method.D.parameters(), lr=c.lr, betas=(0.5, 0.999))
    # the stage-1 game oscillates at a high constant rate (config.lr_decay); torch's cosine
    # schedule anneals it so the last iterate is a settled one
    schedules = ([torch.optim.lr_scheduler.CosineAnnealingLR(o, max(1, c.steps))
                  for o in (opt, opt_d)] if c.lr_decay == "cosine" else [])
    method.H.train(), method.R.train(), method.D.train()
    distributed.broadcast_state(method.D)
    every = c.log_every or max(1, c.steps // 20)
    metrics: dict[str, float] = {}
    with distributed.sync_batchnorm(method.H, method.R, method.D), \
            distributed.wrapped(method, "H", "R"):
        for step in range(c.steps):
            if step and out_of_time("stage1", step, c.steps):  # a recipe's --minutes bound
                break
            (xa, xb, xg), _ = _batch(c, g, dev, [a, b, gt])
            h_in, h_ref = (xa, xg) if c.task_specific else (xb, xb)
            clean = [xa, xg] if c.task_specific else [xa, xb, xg]
            clean += clean_rows(c, g, dev, clean_bank)
            log = step % every == 0 or step == c.steps - 1
            with distributed.autocast(dev):
                b_prime = method.H(h_in)
                # the logged h_highband share (an FFT, a gather under DDP) only when logged
                emd, m1 = embed_loss(c, method.D, b_prime, h_ref, sharded=True,
                                     measure_highband=log)
                read = resize_round_trip(c, g, h_in, b_prime)
                ext, m2 = extract_loss(c, method.R, method.logo, [read], clean, g,
                                       sharded=True)
                loss = embed_ramp(c, step) * emd + c.lambda_ext * ext
            opt.zero_grad()
            loss.backward()
            norms = grad_norms(method, ("H", "R")) if log else {}
            opt.step()
            with distributed.autocast(dev):
                d_loss = disc_loss(method.D, h_ref, b_prime)
            opt_d.zero_grad()
            d_loss.backward()
            distributed.average_gradients(method.D)  # D is in two backward passes a step
            opt_d.step()
            for schedule in schedules:
                schedule.step()
            if log:
                metrics = distributed.mean_over_processes(
                    {"stage1_loss": float(loss.detach()), "d_loss": float(d_loss.detach()),
                     "stage1_lr": float(opt.param_groups[0]["lr"]),
                     "emd_weight": embed_ramp(c, step), **norms, **m1, **m2})
                cb.on_metrics(step0 + step, metrics)
                cb.on_progress(step + 1, c.steps, "stage 1: H, R, D")
            done = step + 1
            if selector is not None and c.select_every and done % c.select_every == 0:
                selector(done)
    if selector is not None and c.select_every and done % c.select_every:
        selector(done)
    method.H.eval(), method.R.eval(), method.D.eval()
    return metrics


def embed_ramp(c: OutputMarkConfig, step: int) -> float:
    """The weight of L_emd at stage-1 step ``step`` (from 0): ``min(1, (step + 1) / N)`` for
    N = ``c.embed_warmup``, 1 when it is 0 (the seed's fixed weights)."""
    return 1.0 if c.embed_warmup <= 0 else min(1.0, (step + 1) / c.embed_warmup)


def grad_norms(method: OutputMarkParts, nets: Sequence[str]) -> dict[str, float]:
    """The global L2 norm of each named network's gradients (``<net>_grad_norm``), for the log.

    Read after ``backward`` and before the optimiser step, so a stage's log shows which
    network the loss pulls hardest on a step (issue #19's seed-2 diagnosis); reading them
    changes no number. Under data parallelism: this process's (averaged) gradients.
    """
    out = {}
    for name in nets:
        grads = [p.grad.detach().float().pow(2).sum() for p in getattr(method, name).parameters()
                 if p.grad is not None]
        out[f"{name.lower()}_grad_norm"] = float(torch.stack(grads).sum().sqrt()) if grads \
            else 0.0
    return out


def resize_round_trip(c: OutputMarkConfig, g: torch.Generator, before: torch.Tensor,
                      marked: torch.Tensor) -> torch.Tensor:
    """B′ as R reads it when the service ran at another size, for a share of the rows.

    The service (``MarkedModel``) at L² adds H's residual, upsampled bilinearly from the
    working size S, to its L² output; the file is 8-bit; R reads it resized back to S.
    Here L = f·S for one factor f of ``c.roundtrip_factors`` per call, the residual
    ``marked − before`` takes that trip (the L² output itself is not at hand; its
    downsampled view is ``before``), the sum is rounded to 8 bits with a straight-through
    gradient. Rows are chosen with probability ``c.resize_roundtrip``; nothing is drawn
    when it is 0.

    Args:
        c: ``resize_roundtrip``, ``roundtrip_factors``.
        g: the loop's generator.
        before: b×3×S×S H's inputs (B, or A when task-specific).
        marked: b×3×S×S H's outputs B′.

    Returns:
        b×3×S×S, differentiable in ``marked``.
    """
    if c.resize_roundtrip <= 0:
        return marked
    n, s = marked.shape[0], marked.shape[-1]
    on = (torch.rand(n, generator=g) < c.resize_roundtrip).view(n, 1, 1, 1).to(marked.device)
    f = c.roundtrip_factors[int(torch.randint(len(c.roundtrip_factors), (1,), generator=g))]
    size = max(s, round(f * s))
    residual = F.interpolate(marked - before, size=(size, size), mode="bilinear",
                             align_corners=False)
    back = resize_square(residual, s, clamp=False) if size != s else residual
    out = (before + back).clamp(0, 1)
    out = out + ((out * 255).round() / 255 - out).detach()  # 8-bit file, straight through
    return torch.where(on, out, marked)


def clean_rows(c: OutputMarkConfig, g: torch.Generator, dev: torch.device | str,
               bank: torch.Tensor | None) -> list[torch.Tensor]:
    """One batch of extra clean images for the clean term (this process's rows).

    ``c.batch_size`` rows drawn from ``bank`` with the loop's generator, photometrically
    jittered like the pairs; ``[]`` (nothing drawn) without a bank.

    Args:
        c: ``batch_size``, ``jitter``, ``jitter_tint``.
        g: the loop's generator.
        dev: where the rows go.
        bank: K×3×S×S clean images, or ``None``.

    Returns:
        ``[]`` or ``[b×3×S×S]``.
    """
    if bank is None or bank.shape[0] == 0:
        return []
    idx = torch.randint(0, bank.shape[0], (c.batch_size,), generator=g)
    rows = [bank[idx].to(dev)]
    if c.jitter > 0:
        rows = photometric_jitter(rows, c.jitter, g, tint=c.jitter_tint)
    return [distributed.shard(rows[0])]


def _batch(c: OutputMarkConfig, g: torch.Generator, dev: torch.device | str,
           jittered: list[torch.Tensor], plain: Sequence[torch.Tensor] = ()
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This process's rows of one global batch of ``c.batch_size`` pairs.

    The indices and the photometric jitter (of the ``jittered`` tensors, alike) are drawn
    for the global batch on every process, so the shared generator stays in step; the
    ``plain`` tensors are indexed only. In one process: the one-process batch.

    Args:
        c: ``batch_size``, ``jitter``, ``jitter_tint``.
        g: the loop's generator.
        dev: where the batch goes.
        jittered, plain: N×3×S×S tensors of one N.

    Returns:
        ``(jittered rows, plain rows)``, each b×3×S×S (b = this process's share).
    """
    idx = torch.randint(0, jittered[0].shape[0], (c.batch_size,), generator=g)
    moved = [t[idx].to(dev) for t in jittered]
    if c.jitter > 0:
        moved = photometric_jitter(moved, c.jitter, g, tint=c.jitter_tint)
    return ([distributed.shard(t) for t in moved],
            [distributed.shard(t[idx].to(dev)) for t in plain])


def pretrain_extractor(method: OutputMarkParts, a: torch.Tensor, b: torch.Tensor,
                       gt: torch.Tensor, clean_bank: torch.Tensor | None = None
                       ) -> dict[str, float]:
    """Before stage 1: teach R to read a fixed random residual, so it is not input-blind.

    om14 found stage 1's deadlock (issue #19, seed 2): within ~30 steps R returns one fixed
    image whatever its input, so it passes H no reading gradient and H's residual stays too
    small to read. Here R alone trains ``config.r_pretrain`` steps on L_ext with B + ε as
    the marked images (ε: one 3×S×S Gaussian residual at ``config.r_pretrain_db`` dB RMS,
    drawn once) and the clean rows as stage 1 has them, so R answers δ to a residual before
    H starts; H then has a gradient towards a residual R reads. Its own generator
    (``config.seed`` + :data:`PRETRAIN_SEED`): stage 1's draws do not move.

    Args:
        method: whose R trains (H, D untouched).
        a, b, gt: N×3×S×S inputs, M's outputs, targets of the H/R part.
        clean_bank: K×3×S×S extra clean images (:func:`clean_rows`), or ``None``.

    Returns:
        ``pretrain_r_wm`` / ``pretrain_r_clean`` of the last step (``{}`` when off).
    """
    c, dev = method.config, method.device
    if c.r_pretrain <= 0:
        return {}
    g = torch.Generator().manual_seed(c.seed + PRETRAIN_SEED)
    s = a.shape[-1]
    eps = torch.randn(3, s, s, generator=g)
    eps = (eps * 10 ** (-c.r_pretrain_db / 20) / eps.pow(2).mean().sqrt()).to(dev)
    opt = torch.optim.Adam(method.R.parameters(), lr=c.lr, betas=(0.5, 0.999))
    method.R.train()
    metrics: dict[str, float] = {}
    with distributed.sync_batchnorm(method.R), distributed.wrapped(method, "R"):
        for _ in range(c.r_pretrain):
            (xa, xb, xg), _ = _batch(c, g, dev, [a, b, gt])
            h_in = xa if c.task_specific else xb
            clean = ([xa, xg] if c.task_specific else [xa, xb, xg])
            clean += clean_rows(c, g, dev, clean_bank)
            with distributed.autocast(dev):
                loss, m = extract_loss(c, method.R, method.logo, [(h_in + eps).clamp(0, 1)],
                                       clean, g, sharded=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            metrics = {"pretrain_r_wm": m["r_wm"], "pretrain_r_clean": m["r_clean"]}
    method.R.eval()
    return distributed.mean_over_processes(metrics)


def refresh_extractor_bn(method: OutputMarkParts, a: torch.Tensor, b: torch.Tensor,
                         gt: torch.Tensor, seconds: Sequence[torch.Tensor] = (),
                         clean_seconds: Sequence[torch.Tensor] = (),
                         clean_bank: torch.Tensor | None = None) -> int:
    """Recompute R's BatchNorm running statistics on the batches R trains on, weights untouched.

    R trains on batch statistics (train mode) but is scored, calibrated and served on its
    running statistics (eval mode): exponential averages (momentum 0.1) over the last few
    steps' batches, made by earlier weights. At the tiny profile's lr the weights move fast
    enough that the averages describe another network: on om14's λ_ext 10 probe R read 95.3%
    of the test B′ on batch statistics and 0% in eval mode (issue #19, MODEL_CARD.md).
    Here ``torch.optim.swa_utils.update_bn`` resets them and averages (cumulatively) over
    ``config.refresh_bn_batches`` batches composed as the loops compose R's batch: the
    marked rows (B′ as H makes it in eval mode, as the service does, through
    :func:`resize_round_trip`; stage 2: and every surrogate's outputs for the same pairs)
    and one mixed batch of clean rows (A, B, targets, the clean counterparts' outputs, the
    clean bank; one source per row), jittered as in training. The batches are drawn from
    their own generator (``config.seed`` + :data:`BN_REFRESH_SEED`, fresh on each call), so
    the training loops' draws do not move and the same weights always get the same
    statistics. A no-op for an R without BatchNorm. Under data parallelism every process
    composes its shard of the same global batches and R's layers (swapped by
    ``distributed.sync_batchnorm``) average over the global batch.

    Args:
        method: whose R (H is only run, in eval mode).
        a, b, gt: N×3×S×S inputs, M's outputs, targets of the H/R part.
        seconds: stage 2: N×3×S×S outputs of each stage-2 surrogate architecture (B″).
        clean_seconds: stage 2: N×3×S×S outputs of their clean counterparts.
        clean_bank: K×3×S×S extra clean images (:func:`clean_rows`), or ``None``.

    Returns:
        The number of BatchNorm layers refreshed.
    """
    c, dev = method.config, method.device
    r = getattr(method.R, "module", method.R)  # the plain R inside a DDP wrapper
    layers = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in r.modules())
    if not layers:
        return 0
    g = torch.Generator().manual_seed(c.seed + BN_REFRESH_SEED)
    h_was_training = method.H.training
    method.H.eval()

    def batches():
        for _ in range(c.refresh_bn_batches):
            (xa, xb, xg), rest = _batch(c, g, dev, [a, b, gt], [*seconds, *clean_seconds])
            h_in = xa if c.task_specific else xb
            with torch.no_grad():
                xp = resize_round_trip(c, g, h_in, method.H(h_in))
            clean = ([xa, xg] if c.task_specific else [xa, xb, xg]) + rest[len(seconds):]
            clean += clean_rows(c, g, dev, clean_bank)
            n = clean[0].shape[0]
            pick = (distributed.batch_rows(len(clean), n * distributed.world_size(), g)
                    if c.clean_loss else None)
            mixed = [torch.stack(clean)[pick, torch.arange(n)]] if pick is not None else []
            yield torch.cat([xp, *rest[:len(seconds)], *mixed])

    try:
        with torch.no_grad():
            torch.optim.swa_utils.update_bn(batches(), r, device=dev)
    finally:
        method.H.train(h_was_training)
    return layers


def finetune_extractor(method: OutputMarkParts, a: torch.Tensor, b: torch.Tensor,
                       gt: torch.Tensor, b_prime: torch.Tensor,
                       b_second: torch.Tensor | Sequence[torch.Tensor],
                       callbacks: Callbacks | Sequence[Any] = (), step0: int = 0,
                       b_clean_second: torch.Tensor | Sequence[torch.Tensor] | None = None,
                       selector: Callable[[int], Any] | None = None,
                       clean_bank: torch.Tensor | None = None) -> dict[str, float]:
    """Stage 2's loop: fine-tune R on the mix A, B, B′, B″ (H frozen).

    Args:
        method: whose R is fine-tuned.
        a, b, gt: N×3×S×S inputs, M's outputs, targets (clean; ``b`` unused when
            task-specific).
        b_prime: N×3×S×S marked outputs H(·).
        b_second: N×3×S×S surrogate outputs SM(a), or one such tensor per stage-2
            surrogate (each batch then holds every surrogate's outputs for its rows).
        callbacks: metrics/progress sinks.
        step0: offset of the reported step numbers.
        b_clean_second: N×3×S×S outputs of the same surrogate(s) trained on clean
            pairs (``stage2_clean_surrogate``): extra clean images (one tensor or a list).
        selector: called with the number of steps done every ``config.select_every``
            steps and after the last one (:class:`.selection.CheckpointSelector`).
        clean_bank: K×3×S×S extra clean images (:func:`clean_rows`), or ``None``.

    Returns:
        The last reported metrics.
    """
    c, dev = method.config, method.device
    cb = distributed.main_only(Callbacks.of(callbacks))
    g = torch.Generator().manual_seed(c.seed + STAGE2_SEED)
    opt = torch.optim.Adam(method.R.parameters(), lr=c.stage2_lr, betas=(0.5, 0.999))
    method.R.train()
    every = max(1, c.stage2_steps // 20)
    metrics: dict[str, float] = {}
    seconds = [b_second] if isinstance(b_second, torch.Tensor) else list(b_second)
    extra = ([] if b_clean_second is None else [b_clean_second]
             if isinstance(b_clean_second, torch.Tensor) else list(b_clean_second))
    done = 0
    with distributed.sync_batchnorm(method.R), distributed.wrapped(method, "R"):
        for step in range(c.stage2_steps):
            if step and out_of_time("stage2", step, c.stage2_steps):
                break
            (xa, xb, xg), (xp, *rest) = _batch(c, g, dev, [a, b, gt],
                                               [b_prime, *seconds, *extra])
            x2s, x2_clean = rest[:len(seconds)], rest[len(seconds):]
            if c.jitter > 0:  # jittered images get the B′ H makes of them (H is frozen)
                with torch.no_grad():
                    xp = method.H(xa if c.task_specific else xb)
            clean = [xa, xg] if c.task_specific else [xa, xb, xg]
            clean.extend(x2_clean)
            clean += clean_rows(c, g, dev, clean_bank)
            xp = resize_round_trip(c, g, xa if c.task_specific else xb, xp)
            with distributed.autocast(dev):
                loss, m = extract_loss(c, method.R, method.logo, [xp, *x2s],
                                       clean, g, sharded=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % every == 0 or step == c.stage2_steps - 1:
                metrics = distributed.mean_over_processes(
                    {"stage2_loss": float(loss.detach()),
                     **{f"stage2_{k}": v for k, v in m.items()}})
                cb.on_metrics(step0 + step, metrics)
                cb.on_progress(step + 1, c.stage2_steps, "stage 2: fine-tune R")
            done = step + 1
            if selector is not None and c.select_every and done % c.select_every == 0:
                selector(done)
    if selector is not None and c.select_every and done % c.select_every:
        selector(done)
    method.R.eval()
    return metrics


__all__ = ["BN_REFRESH_SEED", "PRETRAIN_SEED", "STAGE1_SEED", "STAGE2_SEED", "clean_rows",
           "embed_ramp", "finetune_extractor", "grad_norms", "pretrain_extractor",
           "refresh_extractor_bn", "resize_round_trip", "train_embedder"]
