"""The one training sequence of ``output_mark``: M → stage 1 → stage 2 → calibration.

One set of functions, called in this order by :meth:`OutputMark.fit` (through
:func:`fit`) and, one stage per ZenML step, by the pipeline (through
:func:`stage1_method` and :func:`stage2_method`); both paths therefore train and
calibrate on the same data and agree for the same seed and pairs:

1. :func:`train_model` — the protected model M (residual UNet, L2) on all pairs.
2. :func:`stage1` — H, R and D on the *H/R part* of the split (:func:`split_indices`;
   the loop is :func:`.loops.train_embedder`).
3. :func:`stage2` — the attacker's surrogate SM on (A, B′) of the *held-out part*,
   then R fine-tuned on A, B, B′, B″ of the H/R part, H frozen
   (:func:`.loops.finetune_extractor`).
4. :func:`calibrate_held_out` — the null NC distribution.

**Which data calibrates**: the clean images of the held-out part only — its inputs
A, M's outputs M(A) and its targets (sources ``heldout_A``, ``heldout_B``,
``heldout_target``). R never trains on them and, with groups (the source photo of
each pair), they come from photos R never saw, so their NC scores are honest null
samples for new photos. Validation or test pairs never calibrate: they stay free to
measure the false-positive rate. With fewer than two training pairs there is no
held-out part and nothing is calibrated (p-values are ``None`` with the reason).
The held-out part exists whether or not stage 2 runs: ``stage2=False`` stops both
paths after stage 1 with the same split and calibration.

Every stage seeds its own draws (``config.seed`` + a stage offset), so a stage gives
the same result whether it runs right after the previous one (``fit``) or in another
process after a bundle round trip (a pipeline step). Each caller also runs inside
``neuralmark.components.reproducibility.pinned`` (``config.cpu_threads`` intra-op threads,
deterministic algorithms): on a CPU the trained networks depend on the thread count.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from neuralmark.components import distributed
from neuralmark.components.attacks.surrogate import train_surrogate
from neuralmark.components.data.clean_variety import varied_clean_images
from neuralmark.components.data.pairs import check_pairs
from neuralmark.components.data.splits import group_split
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import (
    Callbacks,
    WatermarkKey,
    pick_device,
    resize_square,
)
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.evaluation import extraction_nc, quality
from neuralmark.components.methods.output_mark.loops import (
    finetune_extractor,
    pretrain_extractor,
    refresh_extractor_bn,
    train_embedder,
)
from neuralmark.components.methods.output_mark.parts import OutputMarkParts
from neuralmark.components.methods.output_mark.selection import CheckpointSelector
from neuralmark.components.methods.registry import build
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.nets.training import train_image_net
from neuralmark.components.nets.unet import UNet
from neuralmark.components.reproducibility import pinned

#: offset added to ``config.seed`` for the split's generator (the loops have their own)
_SPLIT_SEED = 7


@dataclass(frozen=True)
class TrainingPairs:
    """The training pairs at the working size and the seed's split.

    Attributes:
        a: N×3×S×S inputs (domain A).
        gt: N×3×S×S ground-truth targets.
        hr: indices of the H/R part (stage 1 and 2 train R on it).
        held_out: indices of the held-out part (stage 2's surrogate, calibration);
            equal to ``hr`` when there is no held-out part (fewer than two pairs).
        clean_bank: K×3×S×S extra clean images for R's clean term (none of the
            held-out part's photos: :func:`clean_bank`), or ``None``.
    """

    a: torch.Tensor
    gt: torch.Tensor
    hr: torch.Tensor
    held_out: torch.Tensor
    clean_bank: torch.Tensor | None = None

    @property
    def has_held_out(self) -> bool:
        """Whether a held-out part exists (disjoint from the H/R part)."""
        return not torch.equal(self.hr, self.held_out)


def split_indices(config: OutputMarkConfig, n: int, groups: Sequence[str] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the H/R part and of the held-out part of ``n`` training pairs.

    The seed's disjoint split (``surrogate_fraction`` held out), seeded by
    ``config.seed``; with fewer than two pairs both parts are everything. With
    ``groups`` (n of them, at least two distinct) whole groups go to one part
    (``neuralmark.components.data.splits.group_split``): crops of one photo are
    near-duplicates to R, so none may straddle the split.

    Returns:
        ``(hr, held_out)`` index tensors.
    """
    g = torch.Generator().manual_seed(config.seed + _SPLIT_SEED)
    if n < 2:
        perm = torch.randperm(n, generator=g)
        return perm, perm
    if groups is not None and len(groups) == n and len(set(groups)) >= 2:
        return group_split(groups, config.surrogate_fraction, g)
    perm = torch.randperm(n, generator=g)
    k = min(n - 1, max(1, round(n * config.surrogate_fraction)))
    return perm[k:], perm[:k]


#: extra clean images and their groups (photo of each), e.g.
#: ``neuralmark.components.data.clean_variety.varied_clean_images``
CleanImages = tuple[torch.Tensor, Sequence[str]]


def clean_variety_images(config: OutputMarkConfig, manifest: str | None
                         ) -> CleanImages | None:
    """The extra clean images ``config.clean_variety`` asks for, or ``None`` when it is off.

    The one place the option becomes data (the pipeline's step, the seed spread and
    ``scripts/train_shipped_output_mark.py`` all call it): ``varied_clean_images`` of the
    manifest's *train* split at the working size, drawn with ``config.seed``.

    Args:
        config: ``clean_variety``, ``working_size``, ``seed``, ``clean_variety_jpeg``.
        manifest: the sample dataset's ``manifest.csv`` the training pairs were made from.

    Raises:
        InputError: the option is on and there is no sample-dataset manifest (e.g. a
            prepared ``voc_derain`` dataset, whose photos are not the bundled ones).
    """
    if not config.clean_variety:
        return None
    if not manifest:
        raise InputError("config.clean_variety needs the sample dataset's manifest (the "
                         "training photos it crops); a prepared paired dataset has none")
    return varied_clean_images(manifest, config.working_size, seed=config.seed,
                               jpeg_impl=config.clean_variety_jpeg)


def clean_bank_size(tp: TrainingPairs) -> float:
    """How many extra clean images R's clean term sees (0 without a clean bank)."""
    return float(0 if tp.clean_bank is None else tp.clean_bank.shape[0])


def clean_bank(method: OutputMarkParts, hr: torch.Tensor, held_out: torch.Tensor,
               clean: CleanImages | None) -> torch.Tensor | None:
    """The extra clean images R may train on: those of no held-out photo, at the working size.

    The held-out part's clean images calibrate the null distribution, so R must never
    see their photos; an extra image whose group is a held-out pair's group is dropped.

    Args:
        method: its ``train_groups`` (one per training pair) name the held-out photos.
        hr, held_out: the split's index tensors.
        clean: ``(images K×3×H×W in [0, 1], K groups)`` or ``None``.

    Returns:
        J×3×S×S (J ≤ K), or ``None`` without ``clean``.

    Raises:
        InputError: not images, or not one group per image.
    """
    if clean is None:
        return None
    images, groups = clean
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise InputError("clean images must be a K×3×H×W tensor")
    if len(groups) != images.shape[0]:
        raise InputError(f"{len(groups)} groups for {images.shape[0]} clean images")
    banned: set[str] = set()
    if method.train_groups is not None and not torch.equal(hr, held_out):
        banned = {method.train_groups[int(i)] for i in held_out}
    keep = torch.tensor([str(gr) not in banned for gr in groups], dtype=torch.bool)
    return resize_square(images[keep].float().clamp(0, 1), method.config.working_size)


def training_pairs(method: OutputMarkParts, pairs: Any, what: str = "train pairs",
                   clean: CleanImages | None = None) -> TrainingPairs:
    """Validate ``(A, B)`` (N×3×H×W), resize to the working size, split by the method's
    groups; ``clean`` (extra clean images and groups) becomes the split's clean bank."""
    a, gt = method.working_pairs(pairs, what)
    hr, held_out = split_indices(method.config, a.shape[0], method.train_groups)
    return TrainingPairs(a, gt, hr, held_out, clean_bank(method, hr, held_out, clean))


def prepare(method: OutputMarkParts, pairs: Any, key: WatermarkKey | None = None,
            groups: Sequence[Any] | None = None, what: str = "train pairs",
            clean: CleanImages | None = None) -> TrainingPairs:
    """Before stage 0: the key's logo, the pairs' groups, the device; the split pairs
    (with ``clean``, extra clean images and their groups, as the clean bank).

    Raises:
        InputError: bad pairs, or ``groups`` not one per pair.
    """
    a, _ = check_pairs(pairs, what)
    if groups is not None:
        if len(groups) != a.shape[0]:
            raise InputError(f"{len(groups)} groups for {a.shape[0]} training pairs")
        method.set_groups(groups)
    if key is not None:
        method.set_logo(method.config.logo, key)
    method.to(pick_device(method.config.device))
    return training_pairs(method, pairs, what, clean)


# --------------------------------------------------------------------------- stage 0: M
def train_protected_model(pairs: tuple[torch.Tensor, torch.Tensor], config: OutputMarkConfig,
                          callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
    """A protected model M (residual UNet, L2) trained on (A, B) pairs, seeded by ``config.seed``.

    Args:
        pairs: ``(A, B)`` N×3×H×W in [0, 1] (resized to ``working_size``).
        config: ``model_width``, ``model_depth``, ``model_steps``, ``model_lr``,
            ``batch_size``, ``seed``, ``device``.
        callbacks: metrics/progress sinks (``model_loss``).

    Returns:
        M in eval mode.
    """
    a, b = check_pairs(pairs, "train_protected_model")
    s = config.working_size
    torch.manual_seed(config.seed)
    net = UNet(width=config.model_width, depth=config.model_depth, output="residual")
    train_image_net(net, resize_square(a, s), resize_square(b, s), "l2", config.model_steps,
                    config.batch_size, config.model_lr, config.seed, pick_device(config.device),
                    callbacks=callbacks, desc="model")
    return net


def train_model(method: OutputMarkParts, tp: TrainingPairs,
                callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
    """Stage 0: train M on every training pair and keep it (the plain baseline when
    task-specific). Returns ``time_model_s``."""
    start = time.time()
    method.M = train_protected_model((tp.a, tp.gt), method.config, callbacks).to(method.device)
    return {"time_model_s": time.time() - start}


# --------------------------------------------------------------------------- stage 1: H, R, D
def stage1(method: OutputMarkParts, tp: TrainingPairs,
           callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
    """Stage 1 on the H/R part, with the stopping rule of :mod:`.selection` when
    ``config.select_every`` is set. Returns the last training metrics (and the
    selector's), ``time_stage1_s``, ``n_hr`` and ``n_held_out``; with
    ``config.refresh_bn_stats``, R's BatchNorm statistics are recomputed before each
    checkpoint is scored and at the end (``bn_layers_refreshed``)."""
    start = time.time()
    b = method.model_outputs(tp.a)
    hr = tp.hr
    refresh = None
    if method.config.refresh_bn_stats:
        def refresh() -> int:
            return refresh_extractor_bn(method, tp.a[hr], b[hr], tp.gt[hr],
                                        clean_bank=tp.clean_bank)
    selector = None
    if method.config.select_every and tp.has_held_out:
        selector = CheckpointSelector(method, tp.a[tp.held_out], tp.gt[tp.held_out],
                                      distributed.main_only(Callbacks.of(callbacks)),
                                      method.config.model_steps, before_score=refresh)
    pretrained = pretrain_extractor(method, tp.a[hr], b[hr], tp.gt[hr], tp.clean_bank)
    metrics = train_embedder(method, tp.a[hr], b[hr], tp.gt[hr], callbacks,
                             step0=method.config.model_steps, selector=selector,
                             clean_bank=tp.clean_bank)
    metrics.update(pretrained)
    if selector is not None:
        metrics.update(selector.restore())
    if refresh is not None:
        metrics["bn_layers_refreshed"] = float(refresh())
    return {**metrics, "time_stage1_s": time.time() - start, "n_hr": float(len(hr)),
            "n_held_out": float(len(tp.held_out) if tp.has_held_out else 0)}


# --------------------------------------------------------------------------- stage 2: SM, R
def clean_surrogate_outputs(method: OutputMarkParts, a_train: torch.Tensor,
                            b_train: torch.Tensor, a_query: torch.Tensor,
                            callbacks: Callbacks | Sequence[Any] = (),
                            arch: str | None = None, instance: int = 0,
                            steps: int | None = None) -> torch.Tensor | None:
    """Stage 2's clean counterpart of B″: the stage-2 surrogate trained on clean (A, M(A)).

    Args:
        method: gives the surrogate schedule (seed + 1) and ``stage2_clean_surrogate``.
        a_train, b_train: K×3×S×S held-out inputs and M's outputs for them.
        a_query: N×3×S×S inputs it is run on (the H/R part).
        callbacks: metrics/progress sinks.
        arch: the surrogate's architecture (default ``surrogate.arch``).
        instance: which stage-2 surrogate (seed + 1 + 2·instance).
        steps: its training length (default ``surrogate.steps``).

    Returns:
        N×3×S×S outputs in [0, 1], or ``None`` when ``stage2_clean_surrogate`` is off.
    """
    c = method.config
    if not c.stage2_clean_surrogate:
        return None
    update = {"seed": c.surrogate.seed + 1 + 2 * instance}
    update.update({"steps": steps} if steps is not None else {})
    sm = train_surrogate(a_train, b_train, arch=arch, config=c.surrogate.model_copy(
        update=update), callbacks=callbacks)
    return apply_net(sm, a_query, c.eval_batch).clamp(0, 1)


def interleave(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row j from ``outputs[j mod k]`` (k tensors of N×3×S×S): one N×3×S×S tensor that holds
    every stage-2 instance of an architecture (``config.stage2_instances``)."""
    pick = torch.arange(outputs[0].shape[0]) % len(outputs)
    return torch.stack(list(outputs))[pick, torch.arange(outputs[0].shape[0])]


def stage2(method: OutputMarkParts, tp: TrainingPairs, callbacks: Callbacks | Sequence[Any] = (),
           probe: torch.Tensor | None = None) -> dict[str, float]:
    """Stage 2: surrogates SM (``config.surrogate``, ``stage2_instances`` per
    ``stage2_arch_list`` entry and ``stage2_length_list`` length) on (A, B′) of the
    held-out part, then R fine-tuned on A, B, B′, B″ = SM(A) of the H/R part (every
    architecture's B″ in each batch, its surrogates interleaved by row: :func:`interleave`);
    H stays frozen.

    Args:
        method: after stage 1.
        tp: the training pairs.
        callbacks: metrics/progress sinks.
        probe: inputs (N×3×H×W) whose SM outputs R is scored on before and after
            fine-tuning (default: the held-out inputs); only the metrics depend on it.

    Returns:
        The last fine-tuning metrics, ``nc_surrogate_before`` / ``_after`` and
        ``sr_surrogate_before`` / ``_after`` (R on the first SM's outputs on the probe),
        ``time_stage2_s``.
    """
    start = time.time()
    c = method.config
    a, hr, ho = tp.a, tp.hr, tp.held_out
    b = method.model_outputs(a)
    marked = method.marked_outputs(a)
    probe_x = a[ho] if probe is None else resize_square(probe.float(), c.working_size)
    b2, b2_clean, probe_out = [], [], None
    copies, clean_copies = [], []  # the same surrogates on the held-out inputs (selection)
    n_hr = len(hr)
    for arch in c.stage2_arch_list:
        outs, clean_outs = [], []
        for i, steps in enumerate(n for n in c.stage2_length_list
                                  for _ in range(c.stage2_instances)):
            sm = train_surrogate(a[ho], marked[ho], arch=arch, config=c.surrogate.model_copy(
                update={"seed": c.surrogate.seed + 2 * i, "steps": steps}), callbacks=callbacks)
            outs.append(apply_net(sm, a[hr], c.eval_batch))
            if probe_out is None:
                probe_out = apply_net(sm, probe_x, c.eval_batch)
            query = a[hr]
            if c.select_every:  # the copies on the held-out inputs score the checkpoints
                copies.append(apply_net(sm, a[ho], c.eval_batch))
                query = torch.cat([a[hr], a[ho]])
            clean = clean_surrogate_outputs(method, a[ho], b[ho], query, callbacks, arch, i,
                                            steps)
            if clean is not None:
                clean_outs.append(clean[:n_hr])
                clean_copies.extend([clean[n_hr:]] if c.select_every else [])
        b2.append(interleave(outs))
        b2_clean.extend([interleave(clean_outs)] if clean_outs else [])
    assert probe_out is not None  # stage2_arch_list is never empty
    logo = method.logo.cpu()
    before = extraction_nc(method.R, probe_out, logo, c.eval_batch)
    refresh = None
    if c.refresh_bn_stats:  # R's statistics on stage 2's batches (B′, every B″, clean)
        def refresh() -> int:
            return refresh_extractor_bn(method, a[hr], b[hr], tp.gt[hr], b2, b2_clean,
                                        tp.clean_bank)
    selector = None
    if c.select_every and tp.has_held_out:
        selector = CheckpointSelector(method, a[ho], tp.gt[ho],
                                      distributed.main_only(Callbacks.of(callbacks)),
                                      c.model_steps + c.steps, nets=("R",), copies=copies,
                                      clean_copies=clean_copies, prefix="select2",
                                      before_score=refresh)
    metrics = finetune_extractor(method, a[hr], b[hr], tp.gt[hr], marked[hr], b2, callbacks,
                                 step0=c.model_steps + c.steps, b_clean_second=b2_clean,
                                 selector=selector, clean_bank=tp.clean_bank)
    if selector is not None:
        metrics.update({f"stage2_{k}": v for k, v in selector.restore().items()})
    if refresh is not None:
        metrics["stage2_bn_layers_refreshed"] = float(refresh())
    after = extraction_nc(method.R, probe_out, logo, c.eval_batch)
    return {**metrics,
            "nc_surrogate_before": float(before.mean()),
            "sr_surrogate_before": float(method.hit_mask(before, probe_out).float().mean()),
            "nc_surrogate_after": float(after.mean()),
            "sr_surrogate_after": float(method.hit_mask(after, probe_out).float().mean()),
            "time_stage2_s": time.time() - start}


# --------------------------------------------------------------------------- calibration
def calibrate_held_out(method: OutputMarkParts, tp: TrainingPairs) -> dict[str, float]:
    """Replace the null NC distribution with the held-out part's clean A, M(A), targets.

    Returns:
        ``calibration_n`` (null scores kept) and ``calibrated_fpr`` (add-one
        per-image false-positive rate; 0 when nothing was calibrated).
    """
    method.reset_calibration()
    if tp.has_held_out:
        a, gt = tp.a[tp.held_out], tp.gt[tp.held_out]
        for name, x in (("heldout_A", a), ("heldout_B", method.model_outputs(a)),
                        ("heldout_target", gt)):
            method.calibrate(x, name)
    return {"calibration_n": float(len(method.null_scores)),
            "calibrated_fpr": float(method.per_image_fpr() or 0.0)}


# --------------------------------------------------------------------------- the two callers
def fit(method: OutputMarkParts, data: Mapping[str, Any],
        callbacks: Callbacks | Sequence[Any] = (), key: WatermarkKey | None = None
        ) -> dict[str, float]:
    """The whole sequence in one call (what ``OutputMark.fit`` runs).

    Args:
        method: a fresh ``output_mark`` method (groups set with ``set_groups``, if any).
        data: ``{"train": (A, B), "val": (A, B)}``, N×3×H×W in [0, 1]; ``val``
            (optional, default: the held-out pairs) only feeds the reported metrics;
            ``clean`` (optional): ``(images, groups)`` extra clean images for R's clean
            term (:func:`clean_bank`).
        callbacks: metrics/progress sinks.
        key: whose logo to hide when ``config.logo == "key"`` (default
            ``config.logo_secret``).

    Returns:
        Every stage's metrics, Table 1 on val after stage 1 (``psnr_marked``,
        ``nc_marked``, ``sr_marked``, clean NC/FPR) and after stage 2 (``final_*``),
        the surrogate's NC/SR on val before and after stage 2, ``time_total_s``,
        ``clean_bank_images`` (extra clean images R saw), ``calibration_n``,
        ``calibrated_fpr``.
    """
    if not isinstance(data, Mapping) or "train" not in data:
        raise InputError("output_mark.fit needs data={'train': (A, B), 'val': (A, B)}")
    c, cb = method.config, distributed.main_only(Callbacks.of(callbacks))
    start = time.time()
    with pinned(c.seed, c.cpu_threads):
        tp = prepare(method, data["train"], key, what="data['train']", clean=data.get("clean"))
        if data.get("val") is not None:
            va, vgt = method.working_pairs(data["val"], "data['val']")
        else:
            va, vgt = tp.a[tp.held_out], tp.gt[tp.held_out]
        metrics = train_model(method, tp, cb)
        metrics.update(stage1(method, tp, cb))
        metrics.update(quality(method, va, vgt))
        if c.stage2:
            metrics.update(stage2(method, tp, cb, probe=va))
            metrics.update({f"final_{k}": v for k, v in quality(method, va, vgt).items()})
        metrics["time_total_s"] = time.time() - start
        metrics["clean_bank_images"] = clean_bank_size(tp)
        metrics.update(calibrate_held_out(method, tp))
    method.trained = True
    cb.on_metrics(c.model_steps + c.steps + c.stage2_steps, metrics)
    return metrics


def stage1_method(train_pairs: tuple[torch.Tensor, torch.Tensor],
                  config: OutputMarkConfig | Mapping[str, Any], key: WatermarkKey | None = None,
                  callbacks: Callbacks | Sequence[Any] = (), groups: Sequence[str] | None = None,
                  clean: CleanImages | None = None) -> tuple[OutputMarkParts, dict[str, float]]:
    """The pipeline's first training step: a new method through M, stage 1, calibration.

    Args:
        train_pairs: ``(A, B)`` N×3×H×W in [0, 1] (resized to the working size).
        config: ``output_mark`` config (or its fields).
        key: whose logo to hide when ``config.logo == "key"``.
        callbacks: metrics/progress sinks.
        groups: source group (photo) of each training pair.
        clean: extra clean images and their groups for R's clean term (:func:`clean_bank`).

    Returns:
        ``(method, metrics)``: the stage-1 method (``trained``, calibrated on the
        held-out part) and the stage-0/1 and calibration metrics (with
        ``clean_bank_images``, the extra clean images R saw).
    """
    built = build("output_mark", config)
    if not isinstance(built.config, OutputMarkConfig):
        raise InputError("stage1_method needs an output_mark config")
    method = cast(OutputMarkParts, built)
    with pinned(method.config.seed, method.config.cpu_threads):
        tp = prepare(method, train_pairs, key, groups, clean=clean)
        metrics = train_model(method, tp, callbacks)
        metrics.update(stage1(method, tp, callbacks))
        metrics["clean_bank_images"] = clean_bank_size(tp)
        metrics.update(calibrate_held_out(method, tp))
    method.trained = True
    return method, metrics


def stage2_method(method_stage1: OutputMarkParts, train_pairs: tuple[torch.Tensor, torch.Tensor],
                  callbacks: Callbacks | Sequence[Any] = (), clean: CleanImages | None = None
                  ) -> tuple[OutputMarkParts, dict[str, float]]:
    """The pipeline's second training step: stage 2 and calibration on a *copy*.

    ``method_stage1`` is left unchanged (the matrix scores both extractors). With
    ``config.stage2`` off the copy is not fine-tuned, as in :func:`fit`. ``clean``: as
    in :func:`stage1_method`.

    Returns:
        ``(new method, metrics)``: see :func:`stage2` and :func:`calibrate_held_out`.
    """
    method = copy.deepcopy(method_stage1)
    with pinned(method.config.seed, method.config.cpu_threads):
        tp = training_pairs(method, train_pairs, clean=clean)
        metrics = stage2(method, tp, callbacks) if method.config.stage2 else {}
        metrics["clean_bank_images"] = clean_bank_size(tp)
        metrics.update(calibrate_held_out(method, tp))
    return method, metrics


__all__ = ["CleanImages", "TrainingPairs", "calibrate_held_out", "clean_bank",
           "clean_bank_size", "clean_variety_images",
           "clean_surrogate_outputs", "fit", "interleave", "prepare", "split_indices", "stage1",
           "stage1_method", "stage2", "stage2_method", "train_model", "train_protected_model",
           "training_pairs"]
