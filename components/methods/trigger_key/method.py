"""``TriggerKey``: the seed's black-box watermark of an image-processing host (seed 002).

Owner's key → K (trigger) and S0 = G_key(K) (:mod:`.trigger`); ``embed_model`` fine-tunes
a copy of the host on ℓ_d + λ‖M(K) − S0‖² until ℓ_w is small, then S := M(K; θ*);
``calibrate`` measures η from the null (:mod:`.calibration`); ``train_visualizer`` fits
R(S) → logo (:mod:`.visualizer`); ``verify_model`` gives the three-way verdict with d,
NCC, η and the p-value. ``protect`` runs the whole sequence.

How the key and S are held: the bundle stores S (``key_store.s``), the logo, the public
fingerprint of the key and the calibration null, never the secret. Verification
regenerates K from the secret the verifier gives; a key whose fingerprint is not the
bundle's is compared with its own S0 = G_key(K) (what a claimant who never marked this
host holds), which the calibration null covers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import (
    Callbacks,
    Status,
    Verdict,
    WatermarkKey,
    random_keys,
)
from neuralmark.components.methods.registry import register
from neuralmark.components.methods.trigger_key import calibration
from neuralmark.components.methods.trigger_key.embedding import MarkLoss
from neuralmark.components.methods.trigger_key.host import HostMark
from neuralmark.components.methods.trigger_key.trigger import (
    distance,
    key_material,
    keyed_generator,
    ncc,
    negative_inputs,
)
from neuralmark.components.methods.trigger_key.visualizer import (
    CopyrightVisualizer,
    load_logo,
    logo_similarity,
    render,
    train_visualizer,
)
from neuralmark.components.nets.image_nets import apply_net

#: what the calibration null (and η) is measured on, per ``config.readout``; bundles record
#: it (``null_statistic``)
NULL_STATISTICS = {"d_rel": "relative_distance", "matched": "matched_distance"}
#: the default readout's (every bundle before tk12)
NULL_STATISTIC = NULL_STATISTICS["d_rel"]

class KeyStore(nn.Module):
    """Buffers kept in the bundle: S (``1×C×T×T``) and the logo I (``1×L×L``)."""

    def __init__(self, channels: int, side: int, logo: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("s", torch.zeros(1, channels, side, side))
        self.register_buffer("logo", logo.clone())


def triggered_output(model: Any, host_input: torch.Tensor, channels: int) -> tuple[
        torch.Tensor | None, str]:
    """``(M′(K) as 1×C×T×T, "")`` or ``(None, why it is unreadable)``.

    ``model`` is a host (run in eval mode on ``host_input``, ``1×C×T×T``) or its output
    on the trigger (a ``C×T×T`` / ``1×C×T×T`` tensor).
    """
    shape = tuple(host_input.shape[1:])
    if isinstance(model, nn.Module):
        try:
            from neuralmark.components.nets.restoration import host_channels

            c = host_channels(model)
        except InputError as err:
            return None, str(err)
        if c != channels:
            return None, f"the model takes {c}-channel images; the mark is on {channels}"
        try:
            out = apply_net(model, host_input, 1)
        except (RuntimeError, ValueError, TypeError) as err:
            return None, f"the model cannot run on the {shape} trigger: {err}"
    elif isinstance(model, torch.Tensor):
        out = model.detach().float().cpu()
        out = out[None] if out.ndim == 3 else out
    else:
        return None, (f"expected a host (torch.nn.Module) or its output on the trigger "
                      f"(a tensor), got {type(model).__name__}")
    if tuple(out.shape) != (1, *shape):
        return None, f"the output on the trigger is {tuple(out.shape)}, expected {(1, *shape)}"
    if not torch.isfinite(out).all():
        return None, "the output on the trigger holds NaN or infinite values"
    return out, ""


@register("trigger_key")
class TriggerKey(HostMark):
    """Quan et al.'s trigger-key watermark with a keyed ∇ (see the package docstring)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        c = self.config
        torch.manual_seed(c.seed + 1)
        self.visualizer = CopyrightVisualizer(c.channels, c.visualizer_width,
                                              c.logo_size).eval()
        self.key_store = KeyStore(c.channels, c.input_side, load_logo(c.logo, c.logo_size))
        self.null: list[float] = []
        self.calibration: dict[str, float] = {}
        #: the other keys' marked hosts of the last calibration (in memory, not in the
        #: bundle; the pipeline hands them to the uniqueness step as ``pool_tensor``)
        self.pool: list[calibration.MarkedPeer] = []

    # -- state -------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "visualizer": self.visualizer, "key_store": self.key_store}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "null": self.null, "calibration": self.calibration,
                "null_statistic": NULL_STATISTICS[self.config.readout]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        stored, wanted = state.get("null_statistic"), NULL_STATISTICS[self.config.readout]
        if state.get("null") and stored in NULL_STATISTICS.values() and stored != wanted:
            raise InputError(f"this trigger_key bundle's null was measured on {stored}, its "
                             f"config's readout {self.config.readout!r} needs {wanted}: "
                             "re-run calibrate (or the pipeline)")
        if state.get("null") and stored != wanted:
            raise InputError("this trigger_key bundle was calibrated on the absolute distance "
                             "d (before neuralmark verified on d_rel = d / d of the unmarked "
                             "host); its η does not apply: re-run calibrate (or the pipeline)")
        self.null = [float(v) for v in state.get("null", [])]
        self.calibration = {k: float(v) for k, v in state.get("calibration", {}).items()}

    @property
    def s(self) -> torch.Tensor:
        """The verification image S: ``1×C×T×T`` (zeros before ``embed_model``)."""
        return self.key_store.s

    @property
    def eta(self) -> float | None:
        """η on the readout's statistic (detected ⇔ statistic < η), or ``None`` before
        calibration / when unreachable."""
        eta = calibration.eta_at(self.null, self.config.alpha) if self.null else None
        return None if eta is None or math.isinf(eta) else eta

    # -- the key -----------------------------------------------------------------------------
    def key_material(self, key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor]:
        """``(host input for K, S0 = G_key(K))`` of ``key``, each ``1×C×T×T``."""
        c = self.config
        return key_material(key.secret, c.trigger_side, c.channels, c.task, c.scale,
                            c.keyed_gradient, c.key_family)

    def reference(self, key: WatermarkKey) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(host input, S to compare with, own key?)``: the stored S for the owner's key."""
        x, s0 = self.key_material(key)
        if self.owns(key):
            return x, self.s.detach().cpu().clone(), True
        return x, s0, False

    def mark_loss(self, key: WatermarkKey) -> tuple[MarkLoss, Any]:
        """ℓ_w = ‖M(K) − S0‖² and the stopping rule (ℓ_w per pixel ≤ ``stop_mse``).

        With ``config.contrastive_negatives`` n > 0 (opt-in, issue #13 tk14) ℓ_w also holds
        ``contrastive_weight``·(1/n)·Σ‖M(N_j) − U(N_j)‖² over n fresh U(0, 1) noise inputs
        N_j per call (:func:`.trigger.negative_inputs`, drawn from the key's HMAC stream), U
        the host as it was when the loss was made (``unmarked``: the host being marked): the
        host must answer K with S0 and any other noise as before, instead of learning G as
        a function on all noise (which a black-box query reads, MODEL_CARD tk14). The stop
        rule then reads the sum.
        """
        c = self.config
        x, s0 = self.key_material(key)
        dev = self.run_device()
        limit = c.stop_mse * s0.numel()
        n = c.contrastive_negatives
        if n == 0:
            def loss(net: nn.Module) -> torch.Tensor:
                return (net(x.to(dev)) - s0.to(dev)).pow(2).sum()

            return loss, (lambda l_w: l_w <= limit)
        before = copy.deepcopy(self.unmarked).to(dev).eval().requires_grad_(False)
        g = keyed_generator(key.secret, "contrastive")

        def contrastive_loss(net: nn.Module) -> torch.Tensor:
            z = negative_inputs(g, n, c.trigger_side, c.channels, c.task, c.scale).to(dev)
            with torch.no_grad():
                keep = before(z)
            own = (net(x.to(dev)) - s0.to(dev)).pow(2).sum()
            return own + c.contrastive_weight * (net(z) - keep).pow(2).sum() / n

        return contrastive_loss, (lambda l_w: l_w <= limit)

    def after_embed(self, key: WatermarkKey, marked: nn.Module) -> None:
        """S := M(K; θ*), clamped to [0, 1]; an old calibration no longer applies."""
        x, s0 = self.key_material(key)
        s = apply_net(marked, x).clamp(0, 1)
        self.key_store.s.copy_(s)
        self.null, self.calibration, self.pool = [], {}, []
        self.metrics["d_s_to_s0"] = float(distance(s, s0)[0])

    def extra_loss(self) -> torch.Tensor:
        x, s0 = self.key_material(WatermarkKey("training-loss"))
        return (self.visualizer(s0) - self.key_store.logo).pow(2).mean()

    # -- calibration and the visualizer ------------------------------------------------------
    def pool_keys(self, n: int | None = None, seed: int = 3,
                  owner: WatermarkKey | None = None) -> list[WatermarkKey]:
        """The keys of :meth:`marked_pool`: ``n`` random keys (``base.random_keys``), or with
        ``config.calibration_pool == "aligned"`` the ``n`` most aligned with ``owner``'s of
        ``config.calibration_candidates`` random ones (``calibration.aligned_keys``).

        Raises:
            InputError: an aligned pool without the owner's key.
        """
        c = self.config
        n = c.calibration_marked_keys if n is None else n
        if c.calibration_pool == "random":
            return random_keys(n, torch.Generator().manual_seed(seed))
        if owner is None:
            raise InputError("calibration_pool aligned: the pool is chosen by alignment with "
                             "the owner's key; pass owner")
        return [k for k, _ in calibration.aligned_keys(
            owner.secret, n, c.calibration_candidates, seed, c.trigger_side, c.channels,
            c.task, c.scale, c.keyed_gradient, c.key_family)]

    def marked_pool(self, n: int | None = None, seed: int = 3,
                    owner: WatermarkKey | None = None) -> list[calibration.MarkedPeer]:
        """``n`` hosts marked with other keys (:meth:`pool_keys`; never the owner's)
        into ``unmarked`` with this config's schedule: ``(host, K input, S)`` each.

        Args:
            n: how many (default ``config.calibration_marked_keys``).
            seed: draws the keys (apart from the calibration's random keys).
            owner: the owner's key (needed by ``calibration_pool: aligned`` only).

        Raises:
            InputError: no task data (``set_task_data`` first) when ``n > 0``; an aligned
                pool without ``owner``.
        """
        n = self.config.calibration_marked_keys if n is None else n
        pool: list[calibration.MarkedPeer] = []
        if n > 0:
            self.require_pairs()
        for k in self.pool_keys(n, seed, owner):
            peer = self.with_config(lambda0_reference=False)
            assert isinstance(peer, TriggerKey)
            peer.train_pairs, peer.test_pairs = self.train_pairs, self.test_pairs
            peer.embed_model(self.unmarked, k)
            x, s, _ = peer.reference(k)
            pool.append((peer.host, x, s))
        return pool

    def pool_tensor(self) -> torch.Tensor:
        """The last calibration's marked pool packed as one tensor (``calibration.pack_pool``)."""
        return calibration.pack_pool(self.pool)

    def pool_from_tensor(self, packed: torch.Tensor) -> list[calibration.MarkedPeer]:
        """A pool :meth:`pool_tensor` packed, as this config's hosts (``[]`` for an empty one)."""
        x, s0 = self.key_material(WatermarkKey("pool-shape"))
        return calibration.unpack_pool(packed, self.unmarked, x.shape, s0.shape)

    def calibrate(self, key: WatermarkKey, null_hosts: Sequence[nn.Module] = (),
                  n_keys: int | None = None, seed: int = 1,
                  pool: Sequence[calibration.MarkedPeer] | None = None,
                  allow_no_eta: bool = False) -> dict[str, float]:
        """Measure η and the FPR from the null (:mod:`.calibration`); kept in the bundle.

        Args:
            key: the owner's key (the host must be marked with it).
            null_hosts: independently trained hosts (``unmarked`` and, after ``embed_model``
                in this session, the λ = 0 fine-tuned host are always added).
            n_keys: random keys (default ``config.calibration_keys``).
            seed: draws the random keys.
            pool: hosts marked with other keys (:meth:`marked_pool`; ``None``: embed
                ``config.calibration_marked_keys`` of them now; ``[]``: none). Reusing one
                pool for several owners of the same unmarked host is what the uniqueness
                study does; a pool must not contain a host marked with ``key``.
            allow_no_eta: keep a null too small for ``config.alpha`` (``eta`` NaN, nothing
                ever verifies): for a measurement that wants the null scores only. By
                default such a calibration is refused before anything is stored.

        Returns:
            :func:`.calibration.calibrate`'s numbers (``eta``, ``fpr`` with its interval…).

        Raises:
            InputError: the host is not marked with ``key``, the pool holds a host of
                another trigger shape, or (unless ``allow_no_eta``) the calibration null is
                too small for ``config.alpha`` (:func:`.calibration.require_reachable`:
                the counts and the fields that raise them); the method is then unchanged.
        """
        if not self.owns(key):
            raise InputError("calibrate: the host is not marked with this key; embed_model first")
        c = self.config
        n = n_keys or c.calibration_keys
        peers = self.marked_pool(owner=key) if pool is None else list(pool)
        null = self.null_trials(key, null_hosts, n, seed, peers, c.readout)
        # refuses (before anything is stored) a null too small for alpha
        result = calibration.calibrate(null, c.alpha, n, allow_no_eta=allow_no_eta)
        self.pool = peers
        self.null = calibration.calibration_null(null, n)
        self.calibration = result
        self.metrics.update({f"calibration_{k}": v for k, v in self.calibration.items()})
        return dict(self.calibration)

    def null_trials(self, key: WatermarkKey, null_hosts: Sequence[nn.Module], n_keys: int,
                    seed: int, pool: Sequence[calibration.MarkedPeer],
                    readout: str) -> dict[str, list[float]]:
        """The raw null trials of :meth:`calibrate` (:func:`.calibration.null_distances`) on
        ``readout``'s statistic: the same hosts, keys and pool for either readout.

        Raises:
            InputError: the host is not marked with ``key``, or the pool holds a host of
                another trigger shape.
        """
        if not self.owns(key):
            raise InputError("calibrate: the host is not marked with this key; embed_model first")
        c = self.config
        x, s, _ = self.reference(key)
        for _, px, ps in pool:
            if px.shape != x.shape or ps.shape != s.shape:
                raise InputError(f"calibrate: a marked pool host's trigger is {tuple(px.shape)}, "
                                 f"this key's is {tuple(x.shape)}")
        plain = [self.lambda0_host] if self.lambda0_host is not None else []
        return calibration.null_distances(self.host, self.unmarked, [*plain, *null_hosts], x, s,
                                          n_keys, seed, c.trigger_side, c.channels, c.task,
                                          c.scale, c.keyed_gradient, pool, c.key_family, readout)

    def visualizer_negatives(self, key: WatermarkKey, null_hosts: Sequence[nn.Module] = (),
                             n_keys: int | None = None, seed: int = 2) -> torch.Tensor:
        """``N×C×T×T`` outputs R must leave blank: null hosts on K, other keys' S0, and the
        marked host on other keys' triggers."""
        c = self.config
        n = n_keys or c.visualizer_negatives
        x, _, _ = self.reference(key)
        rx, rs = calibration.random_key_material(n, seed, c.trigger_side, c.channels, c.task,
                                                 c.scale, c.keyed_gradient, c.key_family)
        outs = [apply_net(h, x) for h in (self.unmarked, *null_hosts)]
        return torch.cat([*outs, rs, apply_net(self.host, rx)]).clamp(0, 1)

    def train_visualizer(self, key: WatermarkKey, null_hosts: Sequence[nn.Module] = (),
                         callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
        """Fit R(S) → logo (positives: S with noise) and negatives → blank; in place."""
        if not self.owns(key):
            raise InputError("train_visualizer: the host is not marked with this key")
        c = self.config
        negatives = self.visualizer_negatives(key, null_hosts)
        noise = c.visualizer_noise
        torch.manual_seed(c.seed + 2)
        self.visualizer = CopyrightVisualizer(c.channels, c.visualizer_width, c.logo_size)
        out = train_visualizer(self.visualizer, self.s.cpu(), negatives,
                               self.key_store.logo.cpu(), c.visualizer_steps, c.visualizer_lr,
                               c.batch_size, noise, c.seed + 3, self.run_device(), callbacks)
        self.visualizer.cpu().eval()
        self.metrics.update({f"visualizer_{k}": v for k, v in out.items()})
        return out

    def visualize(self, model_or_outputs: Any, key: WatermarkKey) -> torch.Tensor:
        """R(M′(K)): the copyright image a suspect shows, ``1×L×L`` in [0, 1].

        Raises:
            InputError: the suspect is unreadable (the reason is named).
        """
        x, _, _ = self.reference(key)
        out, reason = triggered_output(model_or_outputs, x, self.config.channels)
        if out is None:
            raise InputError(f"cannot visualize: {reason}")
        return render(self.visualizer, out.clamp(0, 1))

    # -- the whole sequence ------------------------------------------------------------------
    def protect(self, data: Any, key: WatermarkKey, callbacks: Callbacks | Sequence[Any] = (),
                independent_seed: int = 1000) -> dict[str, float]:
        """Train the host (unless trained), mark it, calibrate η, fit the visualizer.

        Args:
            data: clean images (see ``set_task_data``); reused when already fitted.
            key: the owner's key.
            callbacks: metrics and progress of every stage.
            independent_seed: init/batch seed of the independently trained null host.

        Returns:
            Every metric of the run (``self.metrics``).
        """
        cb = Callbacks.of(callbacks)
        if not self.trained:
            self.fit(data, cb)
        elif self.train_pairs is None:
            self.set_task_data(data)
        self.embed_model(self.unmarked if self.marked else self.host, key, cb)
        independent = self.train_independent_host(independent_seed, cb)
        self.calibrate(key, [independent])
        self.train_visualizer(key, [independent], cb)
        cb.on_metrics(0, {k: v for k, v in self.metrics.items() if math.isfinite(v)})
        return dict(self.metrics)

    # -- verification ------------------------------------------------------------------------
    def verify_model(self, model_or_outputs: Any, key: WatermarkKey) -> Verdict:
        """Is ``model_or_outputs`` (a host, or its output on K) marked with ``key``?

        The statistic is the relative distance ``d_rel = d(M′(K), S) / d(M_ref(K), S)``
        with M_ref the bundle's unmarked host (the choice, see :mod:`.calibration`: every
        denoiser maps noise to nearly the same smooth image, so the seed's absolute d
        cannot tell a weak mark from a host that never saw K); detected ⇔ its empirical
        p-value against the calibration null is ≤ alpha (⇔ d_rel < η). ``score`` is
        ``1 / (1 + d_rel)``. With ``config.readout: matched`` the statistic is instead
        ``1 − matched`` (:func:`.calibration.matched_distance`), calibrated on the same
        null trials. ``extra``: ``d`` (the seed's eq. (1)), ``d_unmarked`` (d of M_ref),
        ``d_rel``, ``matched`` (NCC of M′(K) − M_ref(K) with S − M_ref(K), either readout),
        ``readout``, ``statistic`` (the readout's), ``ncc``, ``eta`` (on the readout's
        statistic), ``ncc_verified`` (the seed's NCC > 0.95 rule), ``own_key`` (the key is
        the one the bundle was marked with), ``alpha``, ``n_null``. Unreadable (with the
        reason): not a host or a tensor, wrong channels,
        an output of the wrong shape, non-finite values.
        """
        c = self.config
        x, s, own = self.reference(key)
        out, reason = triggered_output(model_or_outputs, x, c.channels)
        if out is None:
            return Verdict.unreadable(reason)
        ref = apply_net(self.unmarked, x)
        d, corr = float(distance(out, s)[0]), float(ncc(out, s)[0])
        rel = float(calibration.relative_distance(out, s, ref)[0])
        matched = 1 - float(calibration.matched_distance(out, s, ref)[0])
        stat = rel if c.readout == "d_rel" else 1 - matched
        eta = self.eta
        p = calibration.p_value(stat, self.null)
        extra = {"d": d, "d_unmarked": float(distance(ref, s)[0]), "d_rel": rel,
                 "matched": matched, "readout": c.readout, "statistic": stat, "ncc": corr,
                 "eta": eta, "ncc_verified": corr > c.ncc_threshold, "own_key": own,
                 "alpha": c.alpha, "n_null": len(self.null)}
        score = 1 / (1 + stat)  # in [0, 1], 1 on the marked host, 0 for d_rel = inf
        if p is None:
            return Verdict(False, score, None, Status.NOT_DETECTED,
                           "not calibrated: no null distances (run calibrate)", extra=extra)
        detected = p <= c.alpha
        shown = (f"d_rel = {rel:.3f} (d = {d:.3e})" if c.readout == "d_rel"
                 else f"1 − matched = {stat:.3f} (matched {matched:.3f}, d_rel {rel:.3f})")
        shown += (f", η = {eta:.3f}" if eta is not None else
                  f", no η: {len(self.null)} calibration trials cannot reach alpha "
                  f"{c.alpha:g} (needs {calibration.min_null(c.alpha)}; re-run calibrate "
                  "with more calibration_keys)")
        reason = (f"{shown}, p = {p:.3g} ≤ {c.alpha:g}" if detected
                  else f"{shown}, p = {p:.3g} > {c.alpha:g}"
                  + ("" if own else "; the key is not the one this host was marked with"))
        return Verdict(detected, score, p, Status.DETECTED if detected else Status.NOT_DETECTED,
                       reason, extra=extra)

    def shown(self, model_or_outputs: Any, key: WatermarkKey) -> float:
        """Logo similarity of R(M′(K)) (:func:`.visualizer.logo_similarity`)."""
        img = self.visualize(model_or_outputs, key)
        return float(logo_similarity(img[None], self.key_store.logo.cpu())[0])


__all__ = ["KeyStore", "TriggerKey", "triggered_output"]
