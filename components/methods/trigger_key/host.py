"""``HostMark``: what every host watermark of this package shares (trigger_key, Base-1, Base-2).

The host (a restoration net, ``components/nets/restoration``) and its unmarked twin,
the task data, ``fit`` (train the unmarked host), ``embed_model`` (fine-tune a copy with
ℓ_d + λ·ℓ_w, :mod:`.embedding`), fidelity, and the checks that turn a bad suspect into an
*unreadable* verdict. A subclass supplies the mark: ``mark_loss(key)``, ``after_embed``,
``verify_model``.

Bundle: ``host`` (the marked host once ``embed_model`` ran, else the trained unmarked
one) and ``unmarked`` (the host before marking: frozen, the reference an audit compares
with) in ``weights.safetensors``; the key's public fingerprint and the metrics in
``state.json``. No secret is stored: verification regenerates the key's material from
the secret the verifier gives.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from neuralmark.components import distributed
from neuralmark.components.data.restoration import (
    extract_patches,
    new_data_patches,
    task_pairs,
)
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import (
    Callbacks,
    WatermarkKey,
    WatermarkMethod,
    pick_device,
)
from neuralmark.components.methods.trigger_key.config import TriggerKeyConfig
from neuralmark.components.methods.trigger_key.embedding import (
    Lookahead,
    MarkLoss,
    embed_into_host,
)
from neuralmark.components.methods.trigger_key.trigger import fingerprint
from neuralmark.components.nets.restoration import build_host, host_channels
from neuralmark.components.nets.training import restoration_loss, task_psnr, train_host

Pairs = tuple[torch.Tensor, torch.Tensor]
#: share of the patches held out for fidelity when ``fit`` gets no test images
HOLD_OUT = 8
#: offset of the config's seed for the owner's own new data in the attack-aware embedding
#: (the attacker's come from ``evaluation.attacker_data``'s draws)
OWNER_NEW_DATA_SEED = 1009


class HostMark(WatermarkMethod):
    """Shared base of the host watermarks (see the module docstring)."""

    Config = TriggerKeyConfig
    config: TriggerKeyConfig
    kind = "model"
    own_pipeline = ("neuralmark mark-model (neuralmark.pipelines.trigger_key."
                    "trigger_key_pipeline, configs/trigger_key*.yaml)")
    min_size = 8
    data_parallel = True  # host training and embedding: components/distributed.py
    smoke_config: dict[str, Any] = {
        "depth": 3, "width": 4, "trigger_size": 8, "host_steps": 2, "embed_steps": 2,
        "patch_size": 8, "n_patches": 8, "batch_size": 2, "calibration_keys": 64,
        "visualizer_width": 4, "visualizer_steps": 2, "logo_size": 8, "baseline_items": 2,
        "check_every": 1}

    def __init__(self, config: TriggerKeyConfig) -> None:
        super().__init__(config)
        c = config
        torch.manual_seed(c.seed)
        self.host: nn.Module = build_host(c.arch, c.channels, c.depth, c.width).eval()
        self.unmarked: nn.Module = copy.deepcopy(self.host).requires_grad_(False)
        self.fingerprint = ""
        self.trained = False
        self.metrics: dict[str, float] = {}
        self.train_pairs: Pairs | None = None
        self.test_pairs: Pairs | None = None
        #: the same fine-tuning as the last embedding at λ = 0 (in memory only): a null host
        self.lambda0_host: nn.Module | None = None

    # -- state -------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"host": self.host, "unmarked": self.unmarked}

    def extra_state(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "trained": self.trained,
                "metrics": dict(self.metrics)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.fingerprint = str(state.get("fingerprint", ""))
        self.trained = bool(state.get("trained", False))
        self.metrics = {k: float(v) for k, v in state.get("metrics", {}).items()}

    @property
    def marked(self) -> bool:
        """Whether ``host`` carries a mark (``embed_model`` ran, or a marked bundle loaded)."""
        return bool(self.fingerprint)

    def owns(self, key: WatermarkKey) -> bool:
        """Whether ``key`` is the key the host was marked with (by its public fingerprint)."""
        return self.marked and fingerprint(key.secret) == self.fingerprint

    def run_device(self) -> torch.device:
        """Where training runs: the config's ``device`` (``auto``: cuda when present)."""
        return pick_device(self.config.device)

    def new_host(self, seed: int) -> nn.Module:
        """A fresh host of this config, initialised from ``seed`` (eval mode)."""
        c = self.config
        torch.manual_seed(seed)
        return build_host(c.arch, c.channels, c.depth, c.width).eval()

    # -- data --------------------------------------------------------------------------------
    def make_pairs(self, images: torch.Tensor | Sequence[torch.Tensor], n: int,
                   seed: int) -> Pairs:
        """``n`` task pairs (degraded, clean) of ``patch_size`` from clean images (C×H×W each)."""
        c = self.config
        g = torch.Generator().manual_seed(seed)
        clean = extract_patches(images, c.patch_size, n, g, c.channels)  # n c s s
        return task_pairs(c.task, clean, g, c.sigma, c.scale)

    def set_task_data(self, data: Any) -> None:
        """Task pairs from ``data``: clean images, or ``{"train": ..., "test": ...}``.

        Images are an ``N×C×H×W`` tensor or a list of ``C×H×W`` tensors in [0, 1] (C = 1
        or 3; converted to the config's channels). Without test images, every
        ``HOLD_OUT``-th training patch is held out for fidelity.
        """
        c = self.config
        if isinstance(data, Mapping):
            if "train" not in data:
                raise InputError("trigger_key data: a mapping needs a 'train' entry")
            train, test = data["train"], data.get("test")
        else:
            train, test = data, None
        x, y = self.make_pairs(train, c.n_patches, c.seed)
        if test is None:
            keep = torch.arange(len(x)) % HOLD_OUT != HOLD_OUT - 1
            self.train_pairs, self.test_pairs = (x[keep], y[keep]), (x[~keep], y[~keep])
            if not bool((~keep).any()):
                self.test_pairs = (x, y)
        else:
            self.train_pairs = (x, y)
            self.test_pairs = self.make_pairs(test, max(8, c.n_patches // HOLD_OUT), c.seed + 1)

    def require_pairs(self) -> tuple[Pairs, Pairs]:
        """The training and test pairs; ``InputError`` when no data was given."""
        if self.train_pairs is None or self.test_pairs is None:
            raise InputError(f"{self.key}: no task data; call fit(images) or "
                             f"set_task_data(images) first")
        return self.train_pairs, self.test_pairs

    # -- training ----------------------------------------------------------------------------
    def fit(self, data: Any, callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
        """Train the unmarked host on ``data`` (see :meth:`set_task_data`).

        Returns:
            ``host_loss_end``, ``host_psnr`` and ``input_psnr`` (the degraded inputs) on
            the test pairs.
        """
        self.set_task_data(data)
        (x, y), (tx, ty) = self.require_pairs()
        c = self.config
        run = train_host(self.host, x, y, c.host_steps, c.lr, c.batch_size, c.seed, callbacks,
                         self.run_device(), "host")
        self.host.cpu().eval()
        self.unmarked.load_state_dict(self.host.state_dict())
        self.trained = True
        self.fingerprint = ""
        out = {"host_loss_end": run["loss_end"], "host_psnr": task_psnr(self.host, tx, ty),
               "input_psnr": task_psnr(nn.Identity(), tx, ty)}
        self.metrics.update(out)
        return out

    def train_independent_host(self, seed: int,
                               callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
        """Another unmarked host trained like ``fit``'s from another init and batch order."""
        (x, y), _ = self.require_pairs()
        c = self.config
        net = self.new_host(seed)
        train_host(net, x, y, c.host_steps, c.lr, c.batch_size, seed, callbacks,
                   self.run_device(), "independent")
        return net.cpu().eval()

    @abc.abstractmethod
    def mark_loss(self, key: WatermarkKey) -> tuple[MarkLoss, Callable[[float], bool] | None]:
        """``(ℓ_w of a net, stopping rule on ℓ_w or None)`` for ``key``."""

    def after_embed(self, key: WatermarkKey, marked: nn.Module) -> None:
        """Record what verification needs once ``marked`` carries ``key``'s mark."""

    def check_host(self, model: Any) -> str:
        """Why ``model`` cannot be this config's host, or ``""`` when it can."""
        if not isinstance(model, nn.Module):
            return f"expected a host network (torch.nn.Module), got {type(model).__name__}"
        try:
            c = host_channels(model)
        except InputError as err:
            return str(err)
        if c != self.config.channels:
            return (f"the model takes {c}-channel images; this {self.key} host takes "
                    f"{self.config.channels}")
        return ""

    def embed_model(self, model: nn.Module, key: WatermarkKey,
                    callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
        """Mark a copy of ``model`` with ``key``: fine-tune on ℓ_d + λ·ℓ_w (seed's embedding).

        Fidelity (``metrics``): ``fidelity_cost_db`` = task PSNR of the same fine-tuning at
        λ = 0 (the seed's unwatermarked row; the host given when ``lambda0_reference`` is
        off) minus that of the marked host, on the test pairs; ``psnr_unmarked`` is the
        host given.

        ``model`` must be this config's host (architecture, channels, depth, width); the
        method then holds it as ``unmarked`` and the marked copy as ``host``.

        Returns:
            The marked copy (eval mode, CPU).

        Raises:
            InputError: no task data, or a model that is not this config's host.
        """
        reason = self.check_host(model)
        if reason:
            raise InputError(f"embed_model: {reason}")
        try:
            self.unmarked.load_state_dict(model.state_dict())
        except RuntimeError as err:
            c = self.config
            raise InputError(f"embed_model: the model is not a {c.arch} host of depth "
                             f"{c.depth}, width {c.width}, {c.channels} channel(s): "
                             f"{str(err).splitlines()[0]}") from err
        (x, y), (tx, ty) = self.require_pairs()
        c = self.config
        loss, done = self.mark_loss(key)
        marked, run = embed_into_host(model, x, y, loss, c.lam, c.embed_steps, c.lr,
                                      c.batch_size, c.seed + 7, self.run_device(), done,
                                      c.check_every, callbacks,
                                      lookahead_steps=c.lookahead_steps,
                                      lookahead_lr=c.lookahead_lr,
                                      lookahead_weight=c.lookahead_weight,
                                      lookahead_noise=c.lookahead_noise,
                                      lookahead_every=c.lookahead_every,
                                      lookahead_attacks=self.simulated_attacks(x, y))
        marked = marked.cpu().eval()
        # the seed's λ = 0 row: the same fine-tuning (steps, batches) without the mark, so
        # the fidelity cost is the mark's, not that of the extra training steps
        plain = None
        if c.lambda0_reference:
            plain, _ = embed_into_host(model, x, y, loss, 0.0, int(run["steps"]), c.lr,
                                       c.batch_size, c.seed + 7, self.run_device(), None,
                                       c.check_every, (), "embed_lambda0")
            plain = plain.cpu().eval()
        self.lambda0_host = plain
        self.host.load_state_dict(marked.state_dict())
        self.fingerprint = fingerprint(key.secret)
        self.after_embed(key, marked)
        before, after = task_psnr(self.unmarked, tx, ty), task_psnr(marked, tx, ty)
        zero = task_psnr(plain, tx, ty) if plain is not None else before
        out = {"psnr_unmarked": before, "psnr_lambda0": zero, "psnr_marked": after,
               "fidelity_cost_db": zero - after}
        self.metrics.update({"embed_steps": run["steps"], "embed_l_w": run["l_w"],
                             "embed_stopped_early": run["stopped_early"], **out})
        distributed.main_only(Callbacks.of(callbacks)).on_metrics(int(run["steps"]), out)
        return marked

    def simulated_attacks(self, x: torch.Tensor, y: torch.Tensor
                          ) -> Callable[[int], Lookahead] | None:
        """The attack-aware embedding's attacks (``config.lookahead_attacks``), one per refresh.

        ``None`` for fine-tuning on the owner's pairs ``x``/``y`` alone (the embedding's
        default). ``new``: procedural textures under the owner's own draws (never the pairs
        ℓ_d sees; the attacker's new data are other draws, or a prepared set); ``overwrite``:
        the owner's pairs + λ·ℓ_w′ of the made-up key ``lookahead-overwrite-<i>``.
        """
        c = self.config
        kinds = tuple(c.lookahead_attacks)
        if kinds == ("original",):
            return None
        new: Pairs | None = None
        if "new" in kinds:
            g = torch.Generator().manual_seed(c.seed + OWNER_NEW_DATA_SEED)
            patches = new_data_patches(len(x), c.patch_size, g, c.channels).patches
            new = task_pairs(c.task, patches, g, c.sigma, c.scale)

        def attack(i: int) -> Lookahead:
            kind = kinds[i % len(kinds)]
            if kind == "new" and new is not None:
                return Lookahead(new)
            if kind == "overwrite":
                second, _ = self.mark_loss(WatermarkKey(f"lookahead-overwrite-{i}"))
                return Lookahead((x, y), second, c.lam)
            return Lookahead((x, y))

        return attack

    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """ℓ_d of ``host`` on task pairs made from ``images`` (B×C×H×W) + λ·ℓ_w (+ extras)."""
        from neuralmark.components.data.restoration import to_channels

        c = self.config
        clean = to_channels(images.float(), c.channels)
        x, y = task_pairs(c.task, clean, torch.Generator().manual_seed(c.seed), c.sigma, c.scale)
        loss, _ = self.mark_loss(WatermarkKey("training-loss"))
        return restoration_loss(self.host(x), y) + c.lam * loss(self.host) + self.extra_loss()

    def extra_loss(self) -> torch.Tensor:
        """Losses of the method's other trainable parts (for the gradient check)."""
        return torch.zeros(())

    def task_psnr_of(self, model: nn.Module) -> float:
        """Task PSNR (dB) of ``model`` on the test pairs."""
        _, (tx, ty) = self.require_pairs()
        return task_psnr(model, tx, ty)


__all__ = ["HOLD_OUT", "HostMark", "Pairs"]
