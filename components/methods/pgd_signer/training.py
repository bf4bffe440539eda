"""``pgd_signer``'s EM training: the M-step loss, feature whitening, robustness curves, the loop.

``method`` is the ``PGDSigner`` throughout (typed ``Any``: its module imports this one).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components import distributed
from neuralmark.components.attacks.differentiable import DiffRotate, DiffZoom, EoTChain
from neuralmark.components.methods.base import Callbacks, InputError, pick_device
from neuralmark.components.methods.pgd_signer import keying, signing
from neuralmark.components.time_budget import out_of_time, time_budget


def training_loss(method: Any, images: torch.Tensor) -> torch.Tensor:
    """M-step loss on a batch: attacked signed images → random bits, clean → no word."""
    g = torch.Generator().manual_seed(method.config.seed)
    bits = torch.randint(0, 2, (images.shape[0], method.config.n_bits), generator=g).float()
    xw = method._to_working(images.to(method.device))
    delta = signing.sign_working(method, xw, bits.to(method.device), 2, g)
    return m_loss(method, (xw + delta).clamp(0, 1), bits.to(method.device), xw, g)[0]


def m_loss(method: Any, signed: torch.Tensor, bits: torch.Tensor, clean: torch.Tensor,
            generator: torch.Generator | None,
            chain: EoTChain | None = None, decoder: torch.nn.Module | None = None,
            sharded: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """M-step loss. ``clean`` are the *same* images before signing (B×3×S×S).

    Pairing matters: with the same image clean (→ logits 0) and signed
    (→ bits), the decoder cannot memorise image content and must read the
    perturbation.

    Args:
        decoder: the network to run (the DDP wrapper in data-parallel training);
            default ``method.decoder``.
        sharded: the batch is this process's shard of a data-parallel global batch:
            EoT draws for the global batch, the clean term's statistics over the
            global batch (``distributed.gather_batch``; that term is scaled by the
            number of processes in the returned loss so DDP's gradient average gives
            the one-process gradient). ``metrics["m_loss"]`` is the unscaled loss.

    Returns:
        The loss to back-propagate and the metrics of this batch.
    """
    chain = chain or method.eot
    decoder = decoder or method.decoder
    params = (distributed.sample_shard(chain, signed.shape[0], generator) if sharded
              else chain.sample(signed.shape[0], generator))
    logits = decoder(chain.apply(signed, params))
    clean_logits = decoder(chain.apply(clean, params))
    bce = F.binary_cross_entropy_with_logits(logits, bits)
    scale = 1.0
    if method.config.clean_loss in ("unit_variance", "standardized"):
        if sharded and distributed.is_distributed():
            clean_logits = distributed.gather_batch(clean_logits)
            scale = float(distributed.world_size())
        mean, std = clean_logits.mean(0), clean_logits.std(0)
        if method.config.clean_loss == "standardized":
            # no fixed word: each bit's clean mean small against its own spread, and no
            # hedging: a spread below 1 is penalised, a larger one is not. Scale-free, so
            # nothing rewards shrinking the features; ``unit_variance`` pulled the spread of
            # images outside the whitening set (2-3 under a fresh keyed whitening: 32×4
            # views for 256 features leave its near-null directions amplified ~30×) down
            # to 1, which the decoder met by killing ReLU channels until every image read
            # one word (issue #17, the model card's EM-collapse section)
            penalty = ((mean / (std + 1e-3)).pow(2).mean()
                       + F.relu(1 - std).pow(2).mean())
        else:
            # clean logits: zero mean, unit spread per bit
            penalty = mean.pow(2).mean() + (std - 1).pow(2).mean()
    else:
        penalty = clean_logits.pow(2).mean()
    loss = bce + method.config.clean_weight * penalty
    with torch.no_grad():
        acc = ((logits > 0).float() == bits).float().mean()
    metrics = {"m_bce": float(bce.detach()), "m_clean_penalty": float(penalty.detach()),
               "m_bit_acc_attacked": float(acc), "m_loss": float(loss.detach())}
    if scale != 1.0:
        loss = bce + method.config.clean_weight * scale * penalty
    return loss, metrics


@torch.no_grad()
def fit_whitening(method: Any, images: torch.Tensor, views: int = 4,
                  generator: torch.Generator | None = None) -> None:
    """Whiten decoder features on ``views`` EoT views of clean ``images`` (N×3×S×S)."""
    was = method.decoder.training
    method.decoder.eval()
    feats = []
    for _ in range(views):
        for i in range(0, images.shape[0], 32):
            xb = images[i:i + 32].to(method.device)
            feats.append(method.decoder.pooled(method.eot(xb, generator)))
    method.decoder.fit_whitening(torch.cat(feats))
    method.decoder.train(was)


@torch.no_grad()
def _curve(decoder: torch.nn.Module, signed: torch.Tensor, bits: torch.Tensor, attack: Any,
           key: str, values: Sequence[float]) -> list[float]:
    accs = []
    for v in values:
        params = attack.sample(signed.shape[0])
        params[key] = torch.full((signed.shape[0],), float(v))
        params["on"] = torch.ones(signed.shape[0])
        logits = decoder(attack.apply(signed, params))
        accs.append(float(((logits > 0).float() == bits).float().mean()))
    return accs


def robustness_curves(method: Any, images: torch.Tensor,
                      generator: torch.Generator | None = None,
                      decoder: torch.nn.Module | None = None) -> dict[str, Any]:
    """Bit accuracy vs rotation angle and vs zoom factor (the seed's flattening plots).

    Signs ``images`` (B×3×S×S) with random bits under ``decoder`` (default the public
    ``method.decoder``) and reads them with it.
    """
    decoder = decoder or method.decoder
    bits = torch.randint(0, 2, (images.shape[0], method.config.n_bits),
                         generator=generator).float().to(method.device)
    xw = method._to_working(images.to(method.device))
    delta = signing.sign_working(method, xw, bits, method.config.pgd_steps, generator,
                                 decoder=decoder)
    signed = (xw + delta).clamp(0, 1)
    angles = [-30, -20, -10, -5, 0, 5, 10, 20, 30]
    scales = [0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5]
    decoder.eval()
    return {"rotation": (angles, _curve(decoder, signed, bits, DiffRotate(), "angle", angles)),
            "scale": (scales, _curve(decoder, signed, bits, DiffZoom(), "factor", scales))}


def fit(method: Any, data: Mapping[str, torch.Tensor],
        callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
    """EM alternation.

    With ``keyed_decoder`` every round signs and trains through a random owner's decoder
    (``keying.training_decoder``: stem and head drawn and frozen, whitening fitted on the
    whitening set, later feature modules the shipped ones), because verification replaces
    the public stem and head by the key's: the shared layers learn to work under any keyed
    stem, and nothing is trained that a keyed decoder would throw away. The M-step then
    replays only that round's signed batch (earlier rounds' bits were written for other
    heads); without keying, the public decoder and the replay buffer, as in the seed.

    Data-parallel under torchrun (``neuralmark.components.distributed``): each process
    signs and trains on its rows of every global batch of ``batch_size``; callbacks
    fire on rank 0 only, with metrics averaged over processes.

    Args:
        data: ``{"train": N×3×S×S, "val": M×3×S×S}`` float images in [0,1] (the
            whole set in every process).
        callbacks: progress / metrics / figures sinks.
    Returns:
        Final metrics (last round).
    """
    cb = distributed.main_only(Callbacks.of(callbacks))
    c = method.config
    if "train" not in data or data["train"].shape[0] == 0:
        raise InputError("pgd_signer.fit needs a non-empty 'train' tensor")
    method.to(pick_device(c.device))
    g = torch.Generator().manual_seed(c.seed)
    train = method._to_working(data["train"]).cpu()
    val = data.get("val", data["train"])[: c.curve_images]
    val = method._to_working(val).cpu()
    method.set_whitening_set(train)
    fit_whitening(method, train, generator=g)
    distributed.broadcast_state(method.decoder)  # the same whitening on every process
    keyed = c.keyed_decoder
    train_decoder = None if keyed else distributed.wrap(method.decoder)
    opt = torch.optim.Adam(method.decoder.parameters(), lr=c.lr)
    buf_x: list[torch.Tensor] = []
    buf_b: list[torch.Tensor] = []
    buf_c: list[torch.Tensor] = []
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {"rotation": {},
                                                                      "scale": {}}
    metrics: dict[str, float] = {}
    start = time.time()
    # ``time_budget_s`` through the project's one time-bound mechanism
    # (:mod:`neuralmark.components.time_budget`): inside a caller's budget the earlier
    # deadline wins, under torchrun rank 0 decides for every process, and a cut is recorded
    with time_budget(c.time_budget_s or None):
        for rnd in range(c.rounds):
            # E-step: sign a fresh batch with random payloads under the current decoder
            # drawn for the global batch; this process signs its rows (all of them in one)
            idx = torch.randperm(train.shape[0], generator=g)[: c.batch_size]
            xg = train[idx]
            bg = torch.randint(0, 2, (xg.shape[0], c.n_bits), generator=g).float()
            xb = distributed.shard(xg).to(method.device)
            bits = distributed.shard(bg).to(method.device)
            ramp = min(1.0, rnd / max(1, c.rounds // 2))
            e_psnr = c.train_psnr_start + ramp * (c.psnr_target - c.train_psnr_start)
            # curriculum on the attacks too: probability of each transform ramps
            # from aug_start·p to p (like DeepRAFT's aug_start/aug_end)
            p_att = c.eot.p * (c.aug_start + (1 - c.aug_start) * ramp)
            chain = EoTChain(c.eot.model_copy(update={"p": p_att}))
            if keyed:
                # this round's owner: the same draw on every process (``g`` is)
                owner = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=g)))
                net = keying.training_decoder(method.decoder, owner, method.whitening_views(),
                                              c.keyed_layers)
                train_decoder = distributed.wrap(net)
                for buf in (buf_x, buf_c, buf_b):
                    buf.clear()
            else:
                net = method.decoder
            delta = signing.sign_working(method, xb, bits, c.sign_steps_train, g, psnr=e_psnr,
                                         chain=chain, sharded=True, decoder=net)
            signed = (xb + delta).clamp(0, 1)
            with torch.no_grad():
                e_acc = float(((net(signed) > 0).float() == bits).float().mean())
                attacked = chain.apply(signed, distributed.sample_shard(chain, signed.shape[0], g))
                e_acc_att = float(((net(attacked) > 0).float() == bits).float().mean())
                # collapse watch (issue #17): distinct words the round's decoder reads on
                # the clean val images (a collapsed decoder reads one word on all of them)
                words = len({tuple(r) for r in (net(val.to(method.device)) > 0).int().tolist()})
            # every process keeps the whole global batch in its replay buffer
            buf_x.append(distributed.all_gather_rows(signed).cpu())
            buf_c.append(xg)
            buf_b.append(bg)
            while sum(t.shape[0] for t in buf_x) > c.buffer_size:
                for buf in (buf_x, buf_c, buf_b):
                    buf.pop(0)
            bx, bc, bb = torch.cat(buf_x), torch.cat(buf_c), torch.cat(buf_b)
            # M-step: update the decoder on attacked signed images (+ clean term)
            net.train()
            for _ in range(c.m_steps):
                j = distributed.shard(torch.randint(0, bx.shape[0], (c.batch_size,),
                                                    generator=g))
                loss, m = m_loss(method, bx[j].to(method.device), bb[j].to(method.device),
                                 bc[j].to(method.device), g, chain,
                                 decoder=train_decoder, sharded=True)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            method.decoder.eval()
            # unkeyed only: a keyed round's decoder fits its own whitening on the whitening
            # set (``training_decoder``), so refitting the public one was a wasted pass over
            # the training set that only moved the random stream (model card, #17)
            if not keyed and c.rewhiten_every and (rnd + 1) % c.rewhiten_every == 0:
                fit_whitening(method, train, generator=g)
                distributed.broadcast_state(method.decoder)
            metrics = distributed.mean_over_processes(
                {"e_bit_acc": e_acc, "e_bit_acc_attacked": e_acc_att,
                 "clean_distinct_words": float(words), **m})
            metrics = {**metrics, "e_psnr_budget": e_psnr, "attack_p": p_att,
                       "round": float(rnd), "elapsed_s": time.time() - start}
            over = out_of_time("pgd_signer/em_rounds", rnd + 1, c.rounds)
            last = rnd == c.rounds - 1 or over
            if last or rnd % max(1, c.rounds // 5) == 0:
                cur = robustness_curves(method, val, g, net)
                for name, (xs, ys) in cur.items():
                    curves[name][f"round {rnd}"] = (xs, ys)
                    metrics[f"curve_{name}_mean"] = float(np.mean(ys))
                from neuralmark.components.plots import curve  # matplotlib: only when training

                for name, lines in curves.items() if distributed.is_main() else ():
                    cb.on_figure(rnd, f"bit_accuracy_vs_{name}", curve(
                        lines, xlabel="angle (deg)" if name == "rotation" else "zoom factor",
                        ylabel="bit accuracy", title=f"bit accuracy vs {name}, per EM round"))
            cb.on_metrics(rnd, metrics)
            cb.on_progress(rnd + 1, c.rounds, "EM rounds")
            if over:
                break
    return metrics
