"""η from the null: relative distances of hosts that do not carry the owner's mark, p-values, FPR.

The seed fixes η = 6.07e-3 "by a probabilistic approach"; here η is measured, and on the
**relative distance** ``d_rel = d(M′(K), S) / d(M_ref(K), S)`` (:func:`relative_distance`),
where ``M_ref`` is the owner's own unmarked host (kept in the bundle). The choice, measured on
the tiny pipeline (issue #13): every denoiser maps the noise trigger to nearly the same
smooth image (two independently trained hosts differ by d ≈ 1.5e-3), the mark moves S only
part of the way from that natural output towards S0 (d(M_ref(K), S) ≈ 6–9e-3), and the
seed's absolute d put the natural output of another key's host within η of its S; d_rel
is 0 on the marked host and ≈ 1 ± the hosts' natural spread on any host that never saw K,
whatever the key's scale. Three kinds of null trials (:func:`null_distances`):

* **owner's trigger** — unmarked hosts and independently trained hosts run on the owner's
  K, compared with the owner's S (a model that never saw the key);
* **random keys** — the marked host and the null hosts other than the reference run on
  many random keys' triggers, each compared with that key's own S0 = G_key(K) (a claimant
  with the wrong key, or a marked model probed for a key it was not marked with); the
  reference itself is left out there, its d_rel is 1 by construction;
* **other keys' marked hosts** (:func:`marked_peer_distances`) — a pool of hosts, each
  marked with its own random key into the same unmarked host with the same schedule, run
  on the owner's K against the owner's S (exactly what the uniqueness table tests: another
  owner's marked host under this key), and every marked host (the owner's and the pool's)
  run on each pool key's K against that key's own S. Measured on the RED / VDSR ×2 tiny
  pipelines (issue #13): marking with *any* key moves a small host's output on every noise
  trigger part of the way towards every other key's weak S (d_rel 0.695–0.927 between
  marked hosts while never-marked hosts stay ≥ 1), and the first two kinds never contain
  such a trial, so η sat above them.

Every kind is split in two (:func:`calibrate`): the random keys key-wise (even keys
calibrate, odd keys are held out), the marked-host trials by probed key (the owner's key
and even pool keys calibrate, odd pool keys are held out), the owner's-trigger trials are
all held out. The *calibration* half gives the empirical p-value of a distance,
``p = (1 + #{null d ≤ d}) / (n + 1)`` (``stats.empirical_p_value``), and η, the distance
below which ``p ≤ alpha``; the *held-out* half measures the false-positive rate of that
rule with its Clopper–Pearson interval, so the reported FPR is not in-sample (and the
marked-host trials' own held-out FPR is reported beside it, ``marked_fpr``).

Shapes: hosts map ``B×C×T×T`` → ``B×C×T×T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import WatermarkKey, random_keys
from neuralmark.components.methods.trigger_key.trigger import (
    band_trigger,
    distance,
    gradient_kernel,
    key_material,
    midband_kernel,
    ncc,
    trigger,
    verification_target,
)
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.stats import clopper_pearson, empirical_p_value


def random_key_material(n_keys: int, seed: int, size: int, channels: int, task: str,
                        scale: int, keyed: bool, family: str = "filter"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Host inputs and S0 of ``n_keys`` random keys (``base.random_keys``) of the key
    ``family``: two ``n×C×T×T``."""
    keys = random_keys(n_keys, torch.Generator().manual_seed(seed))
    pairs = [key_material(k.secret, size, channels, task, scale, keyed, family) for k in keys]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def key_alignment(owner: str, names: Sequence[str], size: int, channels: int, task: str,
                  scale: int, keyed: bool, family: str = "filter") -> list[float]:
    """Training-free alignment of each key in ``names`` with the ``owner``'s:
    ``NCC(G_name(K), G_owner(K))`` on the owner's raw K (LR for SR: ``verification_target``
    upsamples it), each key through its own keyed ∇ (``midband``: its own 7×7 Gabor).

    What predicts another key's host verifying the owner's key (MODEL_CARD "Cross-key false
    matches", Spearman −0.958 with d_rel over 200 keys; tk11: −0.968 RED, −0.959 VDSR): the
    statistic of ``scripts/measure_trigger_key_cross_key.py`` and of the ``aligned`` pool.
    """
    if family not in ("filter", "band", "midband"):
        raise InputError(f"unknown key family {family!r}; expected filter, band or midband")
    make = band_trigger if family == "band" else trigger
    k = make(owner, size, channels)[None]  # 1 c t t

    def target(secret: str) -> torch.Tensor:
        kernel = (midband_kernel(secret) if family == "midband" and keyed
                  else gradient_kernel(secret, keyed))
        return verification_target(k, kernel, task, scale)

    own = target(owner)
    return [float(ncc(target(name), own)) for name in names]


def aligned_keys(owner: str, n_keys: int, candidates: int, seed: int, size: int,
                 channels: int, task: str, scale: int, keyed: bool,
                 family: str = "filter") -> list[tuple[WatermarkKey, float]]:
    """The ``n_keys`` most aligned of ``candidates`` random keys (``base.random_keys`` from
    ``seed``; :func:`key_alignment` with the ``owner``'s), most aligned first, with their
    alignment: the other keys an attacker reading the public code would pick to collide.

    Ties keep the draw order (a stable sort), so the selection is a function of the owner's
    secret, the seed and the config alone.

    Raises:
        InputError: ``candidates < n_keys`` or ``n_keys < 0``.
    """
    if n_keys < 0 or candidates < n_keys:
        raise InputError(f"aligned pool: need 0 <= n_keys <= candidates, got {n_keys} of "
                         f"{candidates}")
    keys = [k for k in random_keys(candidates, torch.Generator().manual_seed(seed))
            if k.secret != owner]
    scores = key_alignment(owner, [k.secret for k in keys], size, channels, task, scale, keyed,
                           family)
    order = sorted(range(len(keys)), key=lambda i: -scores[i])  # stable: ties in draw order
    return [(keys[i], scores[i]) for i in order[:n_keys]]


def host_distances(host: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """d(host(input_i), target_i) for every row: the host on ``n×C×T×T`` triggers."""
    out = apply_net(host, inputs, 64)  # n c t t
    return [float(v) for v in distance(out, targets)]


def relative_distance(s_prime: torch.Tensor, s: torch.Tensor,
                      reference: torch.Tensor) -> torch.Tensor:
    """d_rel = d(S′, S) / d(S_ref, S) per item: ``B×C×M×N`` outputs, S and the reference
    host's outputs on the same triggers (0 where S′ = S; 1 for the reference itself; inf
    when S equals the reference's output, a mark that moved nothing)."""
    num, den = distance(s_prime, s), distance(reference, s)
    return torch.where(den > 0, num / den.clamp_min(1e-30),
                       torch.where(num > 0, torch.full_like(num, math.inf),
                                   torch.zeros_like(num)))


def matched_distance(s_prime: torch.Tensor, s: torch.Tensor,
                     reference: torch.Tensor) -> torch.Tensor:
    """The matched-filter readout as a distance: ``1 − c`` per item, with
    ``c = NCC(S′ − S_ref, S − S_ref)`` the centred correlation, over all pixels, of the
    suspect's change from the reference host's output with the mark direction
    ``m = S − S_ref`` (``B×C×M×N`` each; outputs clamped to [0, 1] as in ``distance``).

    0 on the marked host, 1 for the reference itself (no change: c := 0), ≈ 1 for a
    change unrelated to m, 2 for a change against m; invariant to the change's scale.
    Chosen over a block-sign count with a binomial test (Base-2's readout) because both
    are calibrated on the same empirical null, so the binomial test's analytic p-value
    buys nothing, while signs discard the magnitudes a correlation weighs (the linear
    detector of a known direction); centred, so the uniform brightness shift that
    fine-tuning with BatchNorm in train mode puts on every output (MODEL_CARD tk10)
    does not count. A mark a quarter of which is left, with drift orthogonal to m,
    reads c ≈ ‖¼m‖ / ‖¼m + drift‖ where d_rel reads ≥ ¾.
    """
    a, b, r = torch.broadcast_tensors(s_prime.float().clamp(0, 1), s.float().clamp(0, 1),
                                      reference.float().clamp(0, 1))
    delta, mark = (a - r).flatten(-3), (b - r).flatten(-3)
    delta = delta - delta.mean(-1, keepdim=True)
    mark = mark - mark.mean(-1, keepdim=True)
    norm = delta.norm(dim=-1) * mark.norm(dim=-1)
    c = torch.where(norm > 0, (delta * mark).sum(-1) / norm.clamp_min(1e-30),
                    torch.zeros_like(norm))
    return 1 - c


#: the readouts (``TriggerKeyConfig.readout``): name → statistic(S′, S, S_ref), small = marked
STATISTICS = {"d_rel": relative_distance, "matched": matched_distance}


def host_relative_distances(host: nn.Module, reference: nn.Module, inputs: torch.Tensor,
                            targets: torch.Tensor, readout: str = "d_rel") -> list[float]:
    """The ``readout``'s statistic (default d_rel) of ``host`` against ``reference`` for
    every row of ``n×C×T×T`` triggers."""
    ref = apply_net(reference, inputs, 64)  # n c t t
    out = apply_net(host, inputs, 64)  # n c t t
    return [float(v) for v in STATISTICS[readout](out, targets, ref)]


#: a marked host with its key's material: ``(host, 1×C×T×T host input of K, 1×C×T×T S)``
MarkedPeer = tuple[nn.Module, torch.Tensor, torch.Tensor]


def marked_peer_distances(owner: MarkedPeer, pool: Sequence[MarkedPeer],
                          reference: nn.Module, readout: str = "d_rel") -> list[float]:
    """d_rel of marked hosts probed with a key they were not marked with.

    Args:
        owner: the owner's marked host, K input and S.
        pool: ``P`` hosts marked with other keys (same unmarked host, same schedule).
        reference: the owner's unmarked host (every d_rel's denominator).
        readout: the statistic (``STATISTICS``; default d_rel).

    Returns:
        ``P·(P + 1)`` values, probed-key-major: first the ``P`` pool hosts on the owner's
        (K, S), then for each pool key ``b`` the owner's host and the other ``P − 1`` pool
        hosts on ``b``'s (K, S). Empty when the pool is.
    """
    peers = [owner, *pool]
    out: list[float] = []
    for b, (_, x, s) in enumerate(peers):
        out += [d for a, (host, _, _) in enumerate(peers) if a != b
                for d in host_relative_distances(host, reference, x, s, readout)]
    return out


def p_value(d: float, null: Sequence[float]) -> float | None:
    """Empirical p-value of distance ``d``: ``(1 + #{null ≤ d}) / (n + 1)``; None if no null."""
    if not null:
        return None
    return empirical_p_value(sum(1 for v in null if v <= d), len(null))


def eta_at(null: Sequence[float], alpha: float) -> float | None:
    """η: detected ⇔ ``d < η`` ⇔ ``p ≤ alpha``; ``None`` when no d can reach ``alpha``.

    With ``k = ⌊alpha·(n + 1)⌋ − 1`` null distances allowed at or below d, η is the
    ``(k + 1)``-th smallest null distance.
    """
    k = math.floor(alpha * (len(null) + 1) + 1e-12) - 1
    if k < 0 or not null:
        return None
    ordered = sorted(null)
    return ordered[k] if k < len(ordered) else math.inf


def min_null(alpha: float) -> int:
    """The fewest calibration trials with which :func:`eta_at` can set η at ``alpha``: the
    smallest p-value is ``1 / (n + 1)``, so ``n + 1 >= 1 / alpha`` (99 at alpha 0.01)."""
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    return max(1, math.ceil(1 / alpha - 1e-9) - 1)


def null_size(n_keys: int, hosts: int, marked_keys: int) -> int:
    """How many calibration trials :func:`calibration_null` holds, from the counts alone:
    ``hosts × ⌈n_keys/2⌉`` (the even random keys on every host run on them) plus
    ``P·(1 + ⌈P/2⌉)`` of ``P = marked_keys`` other keys' marked hosts (the pool on the
    owner's key, and on every even pool key the owner's host and the other ``P − 1``).

    What a run will calibrate on, known before anything is trained (the pipeline checks
    its three calibrations with it when its settings are validated)."""
    return hosts * ((n_keys + 1) // 2) + marked_keys * (1 + (marked_keys + 1) // 2)


#: what raises a calibration's trial count, besides its random keys (``TriggerKey.calibrate``)
MORE_TRIALS = ("calibration_marked_keys, pass independently trained null hosts, or raise "
               "alpha")


def _unreachable(n_null: int, alpha: float, n_keys: int, hosts: int, marked_keys: int,
                 where: str, keys_field: str, more: str = MORE_TRIALS,
                 outcome: str = "nothing was stored", tense: str = "has") -> InputError:
    need = min_null(alpha)
    per_host = (n_keys + 1) // 2
    keys_needed = 2 * math.ceil(max(0, need - marked_keys * (1 + (marked_keys + 1) // 2))
                                / hosts) if hosts else 0
    return InputError(
        f"{where}: the calibration null {tense} {n_null} trials, alpha {alpha:g} needs at "
        f"least {need} (the smallest p-value is 1/(n + 1)): no η could be set and no host "
        f"would ever verify. Now: {hosts} host(s) × {per_host} calibrating random keys "
        f"({keys_field} {n_keys}) + {marked_keys} other keys' marked hosts "
        f"(calibration_marked_keys). Raise {keys_field} (to {max(keys_needed, n_keys + 1)} "
        f"with these hosts), {more}; {outcome}")


def require_null_size(alpha: float, n_keys: int, hosts: int, marked_keys: int,
                      where: str = "calibrate", keys_field: str = "calibration_keys",
                      more: str = MORE_TRIALS) -> None:
    """:func:`require_reachable` before any trial exists: refuse counts whose
    :func:`null_size` is below :func:`min_null` (the same ``InputError``, "would have").

    Args:
        alpha, n_keys, hosts, marked_keys: as :func:`require_reachable`.
        where: what the message starts with (the step or setting that calibrates).
        keys_field: the setting that holds ``n_keys`` (e.g. ``study.capacity_keys``).
        more: the other settings that add trials, as the message lists them.

    Raises:
        InputError: too few trials for ``alpha``, naming the counts and the fields.
    """
    n_null = null_size(n_keys, hosts, marked_keys)
    if n_null < min_null(alpha):
        raise _unreachable(n_null, alpha, n_keys, hosts, marked_keys, where, keys_field, more,
                           "refused before anything is trained", "would have")


def require_reachable(calib: Sequence[float], alpha: float, n_keys: int, hosts: int,
                      marked_keys: int, where: str = "calibrate",
                      keys_field: str = "calibration_keys") -> None:
    """Refuse a calibration null too small for ``alpha`` (no η: nothing could ever verify).

    Args:
        calib: the calibration trials (:func:`calibration_null`).
        alpha: the detection level.
        n_keys: random keys (the even half calibrates, ``⌈n_keys/2⌉`` trials per host).
        hosts: hosts run on the random keys (the marked host and the null hosts).
        marked_keys: other keys' marked hosts in the pool (``P·(1 + ⌈P/2⌉)`` trials).
        where, keys_field: as :func:`require_null_size`.

    Raises:
        InputError: :func:`eta_at` finds no η (fewer than :func:`min_null` trials),
            naming the fields that raise the count.
    """
    if eta_at(calib, alpha) is None:
        raise _unreachable(len(calib), alpha, n_keys, hosts, marked_keys, where, keys_field)


def null_distances(marked: nn.Module, reference: nn.Module, null_hosts: Sequence[nn.Module],
                   owner_input: torch.Tensor, owner_s: torch.Tensor, n_keys: int, seed: int,
                   size: int, channels: int, task: str, scale: int,
                   keyed: bool, marked_pool: Sequence[MarkedPeer] = (),
                   family: str = "filter", readout: str = "d_rel") -> dict[str, list[float]]:
    """The null trials: ``owner_trigger``, ``random_keys`` and ``marked_hosts`` (module doc).

    Args:
        marked: the marked host (probed with random keys only).
        reference: the owner's unmarked host, the denominator of every d_rel (an owner's-
            trigger trial; left out of the random keys, where its d_rel is 1).
        null_hosts: other hosts without the mark (λ = 0 fine-tuned, independently trained).
        owner_input: ``1×C×T×T`` the host input of the owner's K.
        owner_s: ``1×C×T×T`` the owner's S.
        n_keys: random keys.
        seed: draws the random keys.
        size, channels, task, scale, keyed, family: how key material is made (the config's).
        marked_pool: hosts marked with other keys, with their K input and S
            (:func:`marked_peer_distances`; empty: no such trials).
        readout: the statistic of every trial (``STATISTICS``: ``d_rel`` or ``matched``;
            the same trials either way, so two readouts' nulls differ in the statistic only).

    Returns:
        ``{"owner_trigger": [...], "random_keys": [...], "marked_hosts": [...]}``;
        ``random_keys`` is ordered host-major (all keys on ``marked``, then on each null
        host), ``marked_hosts`` as :func:`marked_peer_distances` returns it.
    """
    if n_keys < 2:
        raise InputError(f"calibration needs at least 2 random keys, got {n_keys}")
    inputs, targets = random_key_material(n_keys, seed, size, channels, task, scale, keyed,
                                          family)
    if readout not in STATISTICS:
        raise InputError(f"unknown readout {readout!r}; expected one of {sorted(STATISTICS)}")
    owner = [d for h in (reference, *null_hosts)
             for d in host_relative_distances(h, reference, owner_input, owner_s, readout)]
    rand = [d for h in (marked, *null_hosts)
            for d in host_relative_distances(h, reference, inputs, targets, readout)]
    peers = marked_peer_distances((marked, owner_input, owner_s), marked_pool, reference,
                                  readout)
    return {"owner_trigger": owner, "random_keys": rand, "marked_hosts": peers}


def split_marked_hosts(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(calibration, held out)`` of :func:`marked_peer_distances`' values: the owner's
    key and even pool keys calibrate, odd pool keys are held out.

    Raises:
        InputError: a length that is not ``P·(P + 1)``.
    """
    n = len(values)
    pool = next((p for p in range(n + 1) if p * (p + 1) >= n), 0)
    if pool * (pool + 1) != n:
        raise InputError(f"marked-host trials: expected P·(P + 1) values, got {n}")
    calib, held = [], []
    for i, d in enumerate(values):
        probed = i // pool  # 0: the owner's key, b ≥ 1: pool key b − 1
        (calib if probed == 0 or (probed - 1) % 2 == 0 else held).append(d)
    return calib, held


def calibrate(null: dict[str, list[float]], alpha: float, n_keys: int,
              allow_no_eta: bool = False) -> dict[str, float]:
    """η, and the held-out false-positive rate of ``d < η`` with its 95% interval.

    The random-key trials are split key-wise (even keys calibrate, odd keys are held
    out), the marked-host trials by probed key (:func:`split_marked_hosts`); the
    owner's-trigger trials are all held out.

    Args:
        null: :func:`null_distances`' trials.
        alpha: the detection level.
        n_keys: the random keys they were run on.
        allow_no_eta: return a null too small for ``alpha`` with ``eta`` NaN (a
            measurement that wants the null's scores only) instead of refusing it.

    Returns:
        ``eta`` (NaN only with ``allow_no_eta``, a null too small for alpha), ``n_null``
        (calibration trials), ``fpr``, ``fpr_ci_low``, ``fpr_ci_high``, ``fp`` and ``trials`` (held
        out, all kinds), ``null_min`` / ``null_median`` (calibration distances),
        ``owner_trigger_min``; with marked-host trials also ``marked_trials`` /
        ``marked_fp`` / ``marked_fpr`` (their held-out part alone) and ``marked_min``
        (the smallest of all of them).

    Raises:
        InputError: (unless ``allow_no_eta``) fewer calibration trials than ``alpha``
            needs (:func:`require_reachable`; hosts and pool read off the trials).
    """
    rand = null["random_keys"]
    marked_calib, marked_held = split_marked_hosts(null.get("marked_hosts", []))
    calib = calibration_null(null, n_keys)
    if not allow_no_eta:
        pool = math.isqrt(len(null.get("marked_hosts", [])))  # P·(P + 1): ⌊√⌋ = P
        require_reachable(calib, alpha, n_keys, len(rand) // n_keys if n_keys else 0, pool)
    held = ([d for i, d in enumerate(rand) if (i % n_keys) % 2 == 1] + null["owner_trigger"]
            + marked_held)
    eta = eta_at(calib, alpha)

    def false_positives(values: Sequence[float]) -> int:
        return sum(1 for d in values if eta is not None and d < eta)

    fp = false_positives(held)
    lo, hi = clopper_pearson(fp, len(held))
    ordered = sorted(calib)
    out = {"eta": math.nan if eta is None else float(eta), "n_null": float(len(calib)),
           "fpr": fp / len(held), "fpr_ci_low": lo, "fpr_ci_high": hi, "fp": float(fp),
           "trials": float(len(held)), "null_min": ordered[0],
           "null_median": ordered[len(ordered) // 2],
           "owner_trigger_min": min(null["owner_trigger"], default=math.nan)}
    if marked_calib:
        mfp = false_positives(marked_held)
        out.update({"marked_trials": float(len(marked_held)), "marked_fp": float(mfp),
                    "marked_fpr": mfp / len(marked_held) if marked_held else math.nan,
                    "marked_min": min([*marked_calib, *marked_held])})
    return out


def calibration_null(null: dict[str, list[float]], n_keys: int) -> list[float]:
    """The calibration half of the null (what p-values are computed against): even random
    keys and the calibrating marked-host trials (:func:`split_marked_hosts`)."""
    rand = [d for i, d in enumerate(null["random_keys"]) if (i % n_keys) % 2 == 0]
    return rand + split_marked_hosts(null.get("marked_hosts", []))[0]


def pack_pool(pool: Sequence[MarkedPeer]) -> torch.Tensor:
    """A marked pool as one ``P×L`` float32 tensor: per peer its host's state (every tensor
    of ``state_dict`` flattened, in order), then K's host input, then S (``P×0`` for none).

    What a pipeline step hands the next one (a tensor artifact, safetensors): the uniqueness
    study reuses the owner's pool instead of embedding it again. Integer buffers (BatchNorm's
    step count) travel as float32, exact below 2²⁴.
    """
    rows = [torch.cat([*(t.detach().float().reshape(-1).cpu()
                         for t in host.state_dict().values()),
                       x.detach().float().reshape(-1).cpu(), s.detach().float().reshape(-1).cpu()])
            for host, x, s in pool]
    return torch.stack(rows) if rows else torch.zeros(0, 0)


def unpack_pool(packed: torch.Tensor, template: nn.Module, x_shape: Sequence[int],
                s_shape: Sequence[int]) -> list[MarkedPeer]:
    """The pool :func:`pack_pool` wrote, each host a copy of ``template`` (its architecture)
    with the stored state; ``x_shape`` / ``s_shape``: the trigger input's and S's shapes.

    Raises:
        InputError: a tensor whose rows do not hold this host and trigger (another
            architecture, depth, width or trigger size).
    """
    import copy

    state = template.state_dict()
    sizes = [t.numel() for t in state.values()]
    nx, ns = math.prod(x_shape), math.prod(s_shape)
    if packed.numel() == 0:
        return []
    if packed.ndim != 2 or packed.shape[1] != sum(sizes) + nx + ns:
        raise InputError(f"marked pool: rows of {tuple(packed.shape)[1:]} values do not hold a "
                         f"{sum(sizes)}-value host and a {tuple(x_shape)} trigger")
    pool: list[MarkedPeer] = []
    for row in packed:
        parts = list(torch.split(row, [*sizes, nx, ns]))
        host = copy.deepcopy(template)
        host.load_state_dict({k: p.reshape(t.shape).to(t.dtype)
                              for (k, t), p in zip(state.items(), parts, strict=False)})
        pool.append((host.eval(), parts[-2].reshape(*x_shape).clone(),
                     parts[-1].reshape(*s_shape).clone()))
    return pool


__all__ = ["MORE_TRIALS", "STATISTICS", "MarkedPeer", "aligned_keys", "calibrate",
           "calibration_null", "eta_at",
           "host_distances", "host_relative_distances", "key_alignment", "marked_peer_distances",
           "matched_distance", "min_null", "null_distances", "null_size", "p_value",
           "pack_pool", "random_key_material", "relative_distance", "require_null_size",
           "require_reachable",
           "split_marked_hosts", "unpack_pool"]
