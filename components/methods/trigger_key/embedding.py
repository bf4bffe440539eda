"""Watermark embedding: fine-tune a copy of the host on ℓ = ℓ_d + λ·ℓ_w until ℓ_w is small.

:func:`embed_into_host` is the one loop every mark of this package uses (trigger_key's
ℓ_w = ‖M(K; θ) − S0‖², and the baselines' trigger-set and projection losses): Adam on
random batches of the host's task pairs with the seed's ℓ_d
(``nets.training.restoration_loss``) plus λ times a mark loss of the network, checked
every ``check_every`` steps against a stopping rule. BatchNorm statistics are frozen
while embedding (BN layers in eval mode): the mark is learned exactly as verification
runs the host, and the trigger's noise statistics never enter the running means used on
real images (the choice; the seed does not say).

Fine-tuning-aware embedding (``lookahead_steps`` > 0; off by default): at every step a
shadow copy of the network takes ``lookahead_steps`` attacker steps (fresh Adam at
``lookahead_lr`` on ℓ_d alone, BatchNorm in train mode so its statistics move as an
attacker's would) and ℓ_w is also evaluated there; its gradient at the shadow's weights is
added to the network's (a first-order, MAML-style lookahead), so the mark is learned where
an attacker's first fine-tuning steps take the host, not only at θ (the choice; the seed
does not say how its mark survives fine-tuning). The total is
ℓ_d + λ·(ℓ_w(θ) + ``lookahead_weight``·ℓ_w(θ′)). ``lookahead_noise`` δ > 0 also moves the
shadow by δ·sign(ε) per weight (ε standard normal), the size and shape of a fresh Adam's
steps (each ≈ lr·sign(∇)): with ``lookahead_steps`` 0 it is an expectation over weight
perturbations of ℓ_w alone, one trigger pass per step.

Attack-aware embedding (issue #13; ``lookahead_attacks`` and ``lookahead_every``): the
simulated attack is a :class:`Lookahead` — the pairs the attacker fine-tunes on (data the
owner's ℓ_d never sees, e.g. procedural textures, for new-data fine-tuning) and, for
overwriting, the attacker's own ℓ_w′ of a random second key with its λ — drawn per refresh
by the caller. With ``lookahead_every`` N > 1 the k attacker steps run every N-th step only;
their weight displacement Δ = θ′ − θ is kept and ℓ_w is evaluated at θ + Δ at every step in
between (one trigger pass; the choice: an attacker's displacement changes slowly with θ, and
a k-step simulation every step would cost k+1 times the embedding). N = 1 is the lookahead
above, exactly.

Shapes: task pairs ``N×C×S×S``; the mark loss sees the whole network.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuralmark.components import distributed
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks
from neuralmark.components.nets.training import check_host_pairs, restoration_loss, task_psnr

MarkLoss = Callable[[nn.Module], torch.Tensor]


@dataclass(frozen=True)
class Lookahead:
    """One simulated attack of the attack-aware embedding (module docstring).

    Attributes:
        pairs: ``(inputs, targets)``, each N×C×S×S: what the simulated attacker trains on.
        attacker_mark: the attacker's own ℓ_w′ (a second key: overwriting) or ``None``
            (fine-tuning on ``pairs`` alone).
        attacker_lam: λ of ``attacker_mark`` in the attacker's loss.
    """

    pairs: tuple[torch.Tensor, torch.Tensor]
    attacker_mark: MarkLoss | None = None
    attacker_lam: float = 0.0


def freeze_batchnorm(net: nn.Module) -> None:
    """Put every BatchNorm layer of ``net`` in eval mode (running statistics frozen)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def embed_into_host(host: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    mark_loss: MarkLoss, lam: float, steps: int, lr: float, batch_size: int,
                    generator: torch.Generator | int, device: torch.device,
                    done: Callable[[float], bool] | None = None, check_every: int = 25,
                    callbacks: Callbacks | Sequence[Any] = (), desc: str = "embed",
                    n_eval: int = 32, lookahead_steps: int = 0, lookahead_lr: float = 1e-3,
                    lookahead_weight: float = 1.0, lookahead_noise: float = 0.0,
                    lookahead_every: int = 1,
                    lookahead_attacks: Callable[[int], Lookahead] | None = None
                    ) -> tuple[nn.Module, dict[str, float]]:
    """Fine-tune a deep copy of ``host`` on ℓ_d + λ·``mark_loss`` (the seed's embedding).

    Args:
        host: the unmarked host (not modified).
        inputs: N×C×S×S degraded task patches.
        targets: N×C×S×S clean / HR patches in [0, 1].
        mark_loss: ``mark_loss(net) -> scalar`` ℓ_w of the network being trained.
        lam: λ (seed: ≤ 1e-2 DnCNN, ≤ 1e-3 RED).
        steps: the step budget (Adam, betas (0.9, 0.999), as the seed).
        lr: learning rate (seed 1e-3).
        batch_size: task pairs per step (drawn with replacement).
        generator: batch draws (an int seeds a fresh CPU generator).
        device: where to train.
        done: ``done(ℓ_w) -> bool`` stopping rule, checked every ``check_every`` steps
            (``None``: run the whole budget).
        check_every: steps between checks (metrics are reported then).
        callbacks: ``{desc}_l_d``, ``{desc}_l_w``, ``{desc}_psnr`` (task PSNR on the first
            ``n_eval`` pairs) at every check; progress.
        desc: prefix of the metrics.
        n_eval: pairs the reported PSNR is measured on.
        lookahead_steps: simulated attacker steps per embedding step (0: none; see the
            module docstring); ignored at λ = 0.
        lookahead_lr: the simulated attacker's Adam learning rate.
        lookahead_weight: weight of ℓ_w after the lookahead, relative to ℓ_w at θ.
        lookahead_noise: δ of the sign perturbation of the shadow's weights (0: none).
        lookahead_every: run the attacker's steps every this many steps, reusing their
            displacement in between (1: every step).
        lookahead_attacks: ``lookahead_attacks(i) -> Lookahead``, the i-th refresh's
            simulated attack (``None``: fine-tuning on ``inputs``/``targets``).

    Returns:
        ``(marked copy in eval mode, metrics)`` with ``steps`` (taken), ``stopped_early``
        (1.0 when the rule fired), ``l_d``, ``l_w`` (last check) and ``seconds``.

    Raises:
        InputError: bad pairs, a negative budget or λ.
    """
    x, y = check_host_pairs(inputs, targets, desc)
    if steps < 0 or lam < 0 or batch_size < 1 or lr <= 0:
        raise InputError(f"{desc}: need steps >= 0, lam >= 0, batch_size >= 1, lr > 0")
    if lookahead_steps < 0 or lookahead_lr <= 0 or lookahead_weight < 0 or lookahead_noise < 0 \
            or lookahead_every < 1:
        raise InputError(f"{desc}: need lookahead_steps >= 0, lookahead_lr > 0, "
                         f"lookahead_weight >= 0, lookahead_noise >= 0, lookahead_every >= 1")
    cb = distributed.main_only(Callbacks.of(callbacks))
    g = generator if isinstance(generator, torch.Generator) else \
        torch.Generator().manual_seed(int(generator))
    start = time.perf_counter()
    net = copy.deepcopy(host).to(device).requires_grad_(True)  # a frozen reference too
    net.train()
    freeze_batchnorm(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999))
    l_d = l_w = math.nan
    taken, stopped = 0, False
    lookahead = (lookahead_steps > 0 or lookahead_noise > 0) and lam > 0
    shadow = copy.deepcopy(net) if lookahead else None
    # its own draws (g is not consumed), so the main loop's batches are those of the λ = 0
    # reference and of an embedding without lookahead
    g_la = torch.Generator().manual_seed(g.initial_seed() + 1) if lookahead else None
    delta: list[torch.Tensor] = []  # the last simulated attack's θ′ − θ
    train_net = distributed.wrap(net)  # data-parallel: this process's rows, DDP (BN frozen)
    for step in range(steps):
        idx = distributed.batch_rows(x.shape[0], batch_size, g)
        loss_d = restoration_loss(train_net(x[idx].to(device)), y[idx].to(device))
        loss_w = mark_loss(train_net)
        opt.zero_grad()
        (loss_d + lam * loss_w).backward()
        if shadow is not None:
            if step % lookahead_every == 0:
                attack = Lookahead((x, y)) if lookahead_attacks is None else \
                    lookahead_attacks(step // lookahead_every)
                delta = _simulate_attack(net, shadow, attack, lookahead_steps, lookahead_lr,
                                         batch_size, g_la, device)
            _add_displaced_gradient(net, shadow, delta, mark_loss, lam * lookahead_weight,
                                    g_la, lookahead_noise)
        opt.step()
        taken = step + 1
        if taken % check_every == 0 or taken == steps:
            with torch.no_grad():
                l_d = distributed.mean_over_processes({"l_d": float(loss_d)})["l_d"]
                l_w = float(mark_loss(net))
            net.eval()
            score = task_psnr(net, x[:n_eval], y[:n_eval])
            net.train()
            freeze_batchnorm(net)
            cb.on_metrics(taken, {f"{desc}_l_d": l_d, f"{desc}_l_w": l_w, f"{desc}_psnr": score})
            cb.on_progress(taken, steps, desc)
            if done is not None and distributed.agree(done(l_w)):
                stopped = True
                break
    net.eval()
    if taken == 0:
        with torch.no_grad():
            l_w = float(mark_loss(net))
    return net, {"steps": float(taken), "stopped_early": float(stopped), "l_d": l_d,
                 "l_w": l_w, "seconds": time.perf_counter() - start}


def _add_lookahead_gradient(net: nn.Module, shadow: nn.Module, x: torch.Tensor,
                            y: torch.Tensor, mark_loss: MarkLoss, weight: float, k: int,
                            lr: float, batch_size: int, g: torch.Generator,
                            device: torch.device, noise: float = 0.0) -> None:
    """Add ``weight``·∇ℓ_w at θ′ (``k`` attacker steps on ``x``/``y`` from θ, then
    ``noise``·sign(ε)) to ``net``'s gradients: one refresh and its use (``lookahead_every`` 1).
    """
    delta = _simulate_attack(net, shadow, Lookahead((x, y)), k, lr, batch_size, g, device)
    _add_displaced_gradient(net, shadow, delta, mark_loss, weight, g, noise)


def _simulate_attack(net: nn.Module, shadow: nn.Module, attack: Lookahead, k: int,
                     lr: float, batch_size: int, g: torch.Generator,
                     device: torch.device) -> list[torch.Tensor]:
    """Run ``k`` attacker steps (fresh Adam at ``lr``) on ``shadow`` from ``net``'s θ.

    Fine-tuning (``attack.attacker_mark`` None) runs BatchNorm in train mode, as the library's
    fine-tuning attack; an overwrite adds λ′·ℓ_w′ and keeps BatchNorm frozen, as an
    embedding does. Under data parallelism every step's gradient is averaged over processes
    (the shadow is not DDP-wrapped: it is rebuilt from θ at every refresh).

    Returns:
        Δ = θ′ − θ per parameter (``shadow`` is left at θ′ with the attack's BN statistics).
    """
    shadow.load_state_dict(net.state_dict())
    shadow.train()  # BatchNorm statistics move, as in the attacker's fine-tuning
    if attack.attacker_mark is not None:
        freeze_batchnorm(shadow)
    ax, ay = attack.pairs
    opt = torch.optim.Adam(shadow.parameters(), lr=lr, betas=(0.9, 0.999))
    with distributed.sync_batchnorm(shadow):  # global batch statistics, as train_host
        for _ in range(k):
            idx = distributed.batch_rows(ax.shape[0], batch_size, g)
            opt.zero_grad()
            loss = restoration_loss(shadow(ax[idx].to(device)), ay[idx].to(device))
            if attack.attacker_mark is not None:
                loss = loss + attack.attacker_lam * attack.attacker_mark(shadow)
            loss.backward()
            distributed.average_gradients(shadow)
            opt.step()
    with torch.no_grad():
        return [q.detach() - p.detach()
                for p, q in zip(net.parameters(), shadow.parameters(), strict=True)]


def _add_displaced_gradient(net: nn.Module, shadow: nn.Module, delta: Sequence[torch.Tensor],
                            mark_loss: MarkLoss, weight: float, g: torch.Generator,
                            noise: float = 0.0) -> None:
    """Add ``weight``·∇ℓ_w at θ + Δ (+ ``noise``·sign(ε)) to ``net``'s gradients.

    First-order (as first-order MAML): the attacker's steps are not differentiated
    through, ∇_θ′ ℓ_w(θ′) stands for ∇_θ ℓ_w(θ′(θ)). ``shadow`` keeps the BatchNorm
    statistics of the last simulated attack.
    """
    with torch.no_grad():
        for p, q, d in zip(net.parameters(), shadow.parameters(), delta, strict=True):
            q.copy_(p + d)
            if noise > 0:  # the same draw on every process (the shared generator)
                q.add_(noise * torch.randn(q.shape, generator=g).sign().to(q.device))
    shadow.eval()
    shadow.zero_grad(set_to_none=True)
    mark_loss(shadow).backward()
    distributed.average_gradients(shadow)
    with torch.no_grad():
        for p, q in zip(net.parameters(), shadow.parameters(), strict=True):
            if q.grad is not None:
                p.grad = weight * q.grad if p.grad is None else p.grad.add_(q.grad,
                                                                           alpha=weight)


__all__ = ["Lookahead", "MarkLoss", "embed_into_host", "freeze_batchnorm"]
