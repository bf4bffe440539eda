"""Joint encoder + scanner training of ``anti_forward`` (the training step, its losses, figures)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import kornia
import torch
import torch.nn.functional as F

from neuralmark.components import distributed
from neuralmark.components.attacks import adversarial
from neuralmark.components.attacks.stochastic import StochasticAugmentation
from neuralmark.components.methods.anti_forward import shaping
from neuralmark.components.methods.base import Callbacks, InputError, WatermarkKey, pick_device
from neuralmark.components.metrics import psnr

if TYPE_CHECKING:
    from neuralmark.components.methods.anti_forward.config import AntiForwardConfig
    from neuralmark.components.methods.anti_forward.parts import StampParts



def ramp(step: int, start: int, end: int) -> float:
    """0 before ``start``, 1 from ``end``, linear in between (a curriculum weight)."""
    if step < start:
        return 0.0
    if end <= start:
        return 1.0
    return min(1.0, (step - start) / (end - start))


def augment(method: StampParts, x: torch.Tensor, strength: float,
            generator: torch.Generator | None, sharded: bool = False) -> torch.Tensor:
    """The augmentation chain at ``strength`` on ``x`` (2B×3×S×S: stamped, then clean).

    ``sharded``: ``x`` holds this process's rows of a data-parallel global batch; the
    draw is made for the global batch (``distributed.sample_shard``).
    """
    if strength <= 0:
        return x
    chain = StochasticAugmentation(method.config.aug, strength)
    if not sharded:
        return chain(x, generator)
    size = tuple(x.shape[-2:])
    return chain.apply(x, distributed.sample_shard(chain, x.shape[0] // 2, generator,
                                                   repeats=2, size=size))


def adversarial_views(method: StampParts, seen: torch.Tensor, eps: float, sigma: float,
                      generator: torch.Generator | None) -> torch.Tensor:
    """``seen`` (2B×3×H×W: B stamped views, then B clean) with a share attacked: 2B×3×H×W.

    The first ⌈``adversarial_fraction``·B⌉ stamped views are pushed toward "clean" and as
    many clean views toward "stamped" by ``attacks.adversarial.pgd`` (torchattacks' PGD,
    L∞ ``eps``) on the scanner's soft classifier under the training noise σ (SmoothAdv,
    Salman et al. 2019, with ``adversarial_noise_samples`` draws). SmoothAdv rather than
    PGD on the bare scanner: every deployed decision (the noise-averaged scan statistic,
    the certificate) reads the scanner under noise σ, and the training loss already noises
    its inputs, so the examples are made against what is trained and judged (with one
    draw it costs what plain PGD costs). The perturbation is added to ``seen`` detached, so
    a joint run still passes the loss's gradient to the encoder through the stamp.
    """
    c = method.config
    b = seen.shape[0] // 2
    k = math.ceil(c.adversarial_fraction * b)
    rows = torch.cat([torch.arange(k), b + torch.arange(k)]).to(seen.device)
    # the class each view moves away from: stamped ones (1) toward clean, clean (0) toward stamped
    labels = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(seen.device)
    scanner = getattr(method.scanner, "module", method.scanner)  # the plain net under DDP

    def classifier(grid: torch.Tensor) -> torch.Tensor:  # b 3 h w → b 2, tiles averaged
        t = method.tiles(grid)
        return scanner(t).reshape(grid.shape[0], t.shape[0] // grid.shape[0], -1).mean(1)[:, :2]

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    target = seen[rows].detach().clamp(0, 1)
    with torch.enable_grad():  # the attack needs input gradients, even under no_grad
        adv = adversarial.pgd(classifier, target, labels, eps=eps, steps=c.adversarial_steps,
                              sigma=sigma, noise_samples=c.adversarial_noise_samples,
                              seed=seed)
    return seen.index_add(0, rows, (adv - seen[rows]).detach())


def joint_loss(method: StampParts, xw: torch.Tensor, bits: torch.Tensor | None,
               aug_strength: float, sigma: float, image_ramp: float,
               generator: torch.Generator | None, sharded: bool = False,
               adversarial_eps: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint loss on a clean batch ``xw`` (B×3×H×W, ``to_grid`` views) with payload ``bits``
    (B×k).

    The stamp is the deployed one (``stamp_residual``) and the scanner's logits are
    averaged over the views' working-size tiles (``grid_logits``), so a batch of tile
    grids trains the scan path as deployed: stamped grids against clean grids, both
    through the chain (the warped clean views are what the calibration's tail is made
    of). ``config.train_scanner_only``: the stamp and the chain are made without
    gradients and the loss is the detection (+ payload) loss alone.
    ``sharded``: ``xw`` is this process's shard of a data-parallel global batch, and
    every random draw is made for the global batch and sliced.
    ``adversarial_eps`` > 0: a share of the views is attacked before the noise
    (``adversarial_views``; under data parallelism each process attacks its own rows).
    """
    c = method.config
    b = xw.shape[0]
    scanner_only = c.train_scanner_only
    with torch.set_grad_enabled(torch.is_grad_enabled() and not scanner_only):
        stamped = (xw + method.stamp_residual(xw, bits)).clamp(0, 1)
        both = torch.cat([stamped, xw])                               # 2b 3 h w
        seen = augment(method, both, aug_strength, generator, sharded)
    if adversarial_eps > 0:
        seen = adversarial_views(method, seen, adversarial_eps, sigma, generator)
    if sigma > 0:
        shape = (2 * b * (distributed.world_size() if sharded else 1), *seen.shape[1:])
        noise = torch.randn(shape, generator=generator)
        noise = distributed.shard(noise, repeats=2) if sharded else noise
        seen = seen + sigma * noise.to(seen)
    out = method.grid_logits(seen)                                      # 2b 2+k
    labels = torch.cat([torch.ones(b), torch.zeros(b)]).long().to(xw.device)
    det = F.cross_entropy(out[:, :2], labels)
    mse = F.mse_loss(stamped, xw)
    ssim_l = kornia.losses.ssim_loss(stamped, xw, window_size=11)
    if scanner_only:  # the stamp is fixed: no image loss to weigh
        loss, metrics, scaling = c.detection_weight * det, {}, 0.0
    else:
        image, metrics = image_loss(c, stamped, xw, mse, ssim_l, sharded)
        loss = c.detection_weight * det + image_ramp * image
        scaling = image_ramp * metrics.pop("_gradient_scaling", 0.0)
    if bits is not None:
        pay = F.binary_cross_entropy_with_logits(out[:b, 2:], bits)
        loss = loss + c.payload_weight * pay
        metrics["payload_bce"] = float(pay.detach())
        metrics["payload_bit_acc"] = float(((out[:b, 2:] > 0).float() == bits)
                                           .float().mean())
    with torch.no_grad():
        pred = out[:, :2].argmax(1)
        metrics.update({
            "loss": float(loss.detach()) - scaling, "detection_ce": float(det.detach()),
            "mse": float(mse.detach()), "ssim_loss": float(ssim_l.detach()),
            # one PSNR of the whole batch (its mean squared error)
            "psnr": float(psnr(stamped.flatten(0, 1)[None], xw.flatten(0, 1)[None])),
            "tpr_train": float((pred[:b] == 1).float().mean()),
            "tnr_train": float((pred[b:] == 0).float().mean()),
        })
    return loss, metrics


def image_loss(c: AntiForwardConfig, stamped: torch.Tensor, xw: torch.Tensor,
               mse: torch.Tensor, ssim_l: torch.Tensor, sharded: bool = False
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The image (invisibility) loss and its extra metrics.

    ``mse_weight·MSE' + ssim_weight·(1 − SSIM) + lowfreq_weight·MSE(blur(r))
    + peak_weight·RMS(local energy of r)`` where MSE' is the texture-masked MSE
    (plain when ``texture_masking`` = 0) and r the stamp residual. The last three
    are our own JND-style terms (all off by default): no learned perceptual metric
    (LPIPS/VGG) can be downloaded here, and SSIM barely penalises a smooth colour
    band or cast, which is what the seed-style CPU run put its energy into. On the
    previous shipped recipe neither helped within our budget (model card, "Known
    limitations"). They are here for GPU runs to tune; the shipped model uses the
    structural constraints of ``AntiForward.residual`` instead. ``sharded``: the peak term (a
    square root of a batch mean) is taken over the data-parallel global batch.
    """
    r = stamped - xw
    metrics: dict[str, float] = {}
    masked = mse
    if c.texture_masking > 0:
        w = shaping.texture_weight(xw, c.texture_masking, power=-1.0)
        masked = (w * r.pow(2)).mean()
        metrics["masked_mse"] = float(masked.detach())
    loss = c.mse_weight * masked + c.ssim_weight * ssim_l
    if c.lowfreq_weight > 0:
        low = shaping.blur(r, c.lowfreq_sigma, "replicate").pow(2).mean()
        loss = loss + c.lowfreq_weight * low
        metrics["lowfreq_mse"] = float(low.detach())
    if c.peak_weight > 0:
        local = shaping.local_mean(r.pow(2).mean(dim=1, keepdim=True), 9)    # b 1 s s
        if sharded and distributed.is_distributed():
            # over the global batch; × world size: DDP averages the per-rank gradients
            per_image = distributed.gather_batch(local.pow(2).mean(dim=(1, 2, 3)))
            peak = per_image.mean().clamp_min(1e-20).sqrt()
            loss = loss + c.peak_weight * distributed.world_size() * peak
            # what the scaling adds to the loss (not to its logged value)
            metrics["_gradient_scaling"] = float(
                c.peak_weight * (distributed.world_size() - 1) * peak.detach())
        else:
            peak = local.pow(2).mean().clamp_min(1e-20).sqrt()       # = mean for an even stamp
            loss = loss + c.peak_weight * peak
        metrics["local_energy_rms"] = float(peak.detach())
    return loss, metrics


def random_bits(method: StampParts, b: int,
                generator: torch.Generator | None) -> torch.Tensor | None:
    """B×k random payload bits on the method's device (None without a payload)."""
    if not method.config.payload_bits:
        return None
    return torch.randint(0, 2, (b, method.config.payload_bits),
                         generator=generator).float().to(method.device)


def training_loss(method: StampParts, images: torch.Tensor) -> torch.Tensor:
    """Joint loss at full curriculum (all augmentations, full σ) on ``images``."""
    g = torch.Generator().manual_seed(method.config.seed)
    xw = method.to_working(images).clamp(0, 1)
    return joint_loss(method, xw, random_bits(method, xw.shape[0], g),
                      1.0 if method.config.augmented else 0.0, method.config.train_sigma,
                      1.0, g)[0]


def figure_residual(method: StampParts, xw: torch.Tensor, bits: torch.Tensor | None) -> Any:
    """Original / stamped / amplified |residual| for up to 4 images."""
    # a bare Figure, not pyplot: nothing is left open for a caller to close
    from matplotlib.figure import Figure

    x = xw[:4]
    with torch.no_grad():
        r = method.residual(x, None if bits is None else bits[:4])
    stamped = (x + r).clamp(0, 1)
    amp = r.abs().amax(dim=1, keepdim=True)
    amp = amp / amp.amax().clamp_min(1e-8)
    fig = Figure(figsize=(2.2 * x.shape[0], 6.6))
    axes = fig.subplots(3, x.shape[0], squeeze=False)
    for j in range(x.shape[0]):
        for row, (img, title) in enumerate(((x[j], "original"), (stamped[j], "stamped"),
                                            (amp[j].expand(3, -1, -1), "|stamp| (scaled)"))):
            axes[row][j].imshow(img.permute(1, 2, 0).cpu().numpy())
            axes[row][j].set_title(title, fontsize=8)
            axes[row][j].axis("off")
    fig.tight_layout()
    return fig


def figure_scores(method: StampParts, clean: list[float], stamped: list[float]) -> Any:
    # a bare Figure, not pyplot: nothing is left open for a caller to close
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.hist(clean, bins=40, alpha=0.6, label="clean (calibration)")
    ax.hist(stamped, bins=40, alpha=0.6, label="stamped (val)")
    thr = method.calibration.get("threshold_statistic")
    if thr is not None:
        ax.axvline(thr, color="k", linestyle="--", label=f"threshold @ fpr {method.config.fpr:g}")
    ax.set_xlabel("scan statistic (logit margin)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fit(method: StampParts, data: Mapping[str, torch.Tensor],
        callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
    """Joint encoder + scanner training, then clean-score calibration.

    Args:
        data: ``{"train": N×3×H×W, "val": M×3×H×W}`` float images in [0,1]
            (``val`` optional: calibration then uses ``train``, recorded).
        callbacks: progress / metrics / figures sinks.

    Returns:
        Final metrics: the last training step's plus validation detection
        numbers at the calibrated threshold.

    Data-parallel under torchrun (``neuralmark.components.distributed``): each process
    trains on its rows of every global batch, DDP averages the gradients, callbacks
    fire on rank 0 only with metrics averaged over processes.
    """
    every = Callbacks.of(callbacks)
    cb = distributed.main_only(every)
    c = method.config
    if "train" not in data or data["train"].shape[0] == 0:
        raise InputError("anti_forward.fit needs a non-empty 'train' tensor")
    method.to(pick_device(c.device))
    g = torch.Generator().manual_seed(c.seed)
    # the deployed view: working size ("stretch"), whole tile grids ("tiles" / "conv")
    train = method.to_grid(data["train"]).clamp(0, 1).cpu()
    has_val = "val" in data and data["val"].shape[0] > 0
    val = method.to_grid(data["val"] if has_val else data["train"]).clamp(0, 1).cpu()
    trained = {"scanner": method.scanner} if c.train_scanner_only else method.modules()
    params = [p for m in trained.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=c.lr)
    start = time.time()
    metrics: dict[str, float] = {}
    steps_done = 0
    figure_every = c.figure_every or max(1, c.steps // 4)
    # drawing costs time: only when some sink takes figures
    figures = any(callable(getattr(x, "on_figure", None)) for x in every.callbacks)
    # the figures' payload draws come from their own generator: a run with a figure sink
    # (MLflow) trains exactly as one without
    figure_g = torch.Generator().manual_seed(c.seed + 1)
    for module in trained.values():
        module.train()
    with distributed.wrapped(method, *trained):
        for step in range(c.steps):
            # drawn for the global batch; this process keeps its rows
            idx = torch.randint(0, train.shape[0], (c.batch_size,), generator=g)
            xb = distributed.shard(train[idx]).to(method.device)
            bits = random_bits(method, idx.shape[0], g)
            bits = None if bits is None else distributed.shard(bits)
            aug_t = ramp(step, c.aug_start, c.aug_end) if c.augmented else 0.0
            w0 = c.warmup_start
            sigma = c.train_sigma * ramp(step, w0, w0 + c.sigma_warmup)
            img_t = ramp(step, w0, w0 + c.image_loss_ramp)
            adv_eps = c.adversarial_eps * ramp(step, 0, c.adversarial_ramp)
            with distributed.autocast(method.device):
                loss, m = joint_loss(method, xb, bits, aug_t, sigma, img_t, g, sharded=True,
                                     adversarial_eps=adv_eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out_of_time = bool(c.max_train_seconds) and distributed.agree(
                time.time() - start > c.max_train_seconds)
            last = step == c.steps - 1 or out_of_time
            if step % c.log_every == 0 or last:
                metrics = {**distributed.mean_over_processes(m), "aug_strength": aug_t,
                           "train_sigma": sigma, "image_loss_ramp": img_t,
                           **({"adversarial_eps": adv_eps} if c.adversarial_eps else {}),
                           "elapsed_s": time.time() - start}
                cb.on_metrics(step, metrics)
                cb.on_progress(step + 1, c.steps, "training")
            if figures and (step % figure_every == 0 or last):
                fig_bits = random_bits(method, min(4, val.shape[0]), figure_g)
                if distributed.is_main():
                    method.encoder.eval()
                    cb.on_figure(step, "stamp_residual", figure_residual(
                        method, val[:4].to(method.device), fig_bits))
                    method.encoder.train("encoder" in trained)
            steps_done = step + 1
            if out_of_time:
                break
    method.encoder.eval()
    method.scanner.eval()
    method.calibrate(val, g, source="val" if has_val else "train (no val split given)")
    final, stat_lists = validation_metrics(method, val, g)
    if figures:
        cb.on_figure(steps_done, "scan_statistic_histogram", figure_scores(method, *stat_lists))
    metrics = {**metrics, **final, "train_seconds": time.time() - start,
               "steps_done": float(steps_done)}
    method.calibration["fit_seconds"] = round(time.time() - start, 1)
    method.calibration["fit_steps"] = steps_done
    cb.on_metrics(steps_done, metrics)
    cb.on_progress(c.steps, c.steps, "calibrated")
    return metrics


@torch.no_grad()
def validation_metrics(method: StampParts, val: torch.Tensor,
                        generator: torch.Generator | None
                        ) -> tuple[dict[str, float], tuple[list[float], list[float]]]:
    """Detection of stamped val images (plain and augmented) at the calibrated threshold.

    Returns:
        Metrics, and (clean statistics, stamped statistics) for the histogram.
    """
    c = method.config
    key = WatermarkKey("neuralmark-fit-validation", 0 if c.message_bits else None)
    stamped = method.embed(val, key if method.codec is not None else None)
    chain = StochasticAugmentation(c.aug, 1.0)
    plain = method.scan_statistic(stamped)
    augmented = torch.cat([method.scan_statistic(chain(stamped[i:i + 64], generator))
                           for i in range(0, stamped.shape[0], 64)])
    thr = method.calibration.get("threshold_statistic")

    def rate(s: torch.Tensor) -> float:
        return float((s > thr).float().mean()) if thr is not None else 0.0

    out = {"val_tpr_plain": rate(plain), "val_tpr_augmented": rate(augmented),
           "val_psnr": float(psnr(stamped, val).mean()),
           "calibration_scores": float(method.calibration["n_scores"]),
           "calibration_threshold": float("nan") if thr is None else float(thr)}
    return out, (method.calibration["clean_statistics"], plain.tolist() + augmented.tolist())
