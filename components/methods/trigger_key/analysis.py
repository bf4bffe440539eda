"""The seed's analyses beyond attacks: uniqueness (hosts × keys) and capacity (trigger sizes).

* :func:`uniqueness_rows` — d and the verdict for every (host, key) pair: each marked
  host with its own key and every other, the unmarked and independently trained hosts
  with every key (the seed's "pairs of watermarked models", its uniqueness tables).
* :func:`capacity_rows` — for each trigger size, a fresh embedding into the same unmarked
  host: fidelity cost (dB), ℓ_w reached, and verification of the marked vs the unmarked
  host (the seed: 20² … 600², about −0.27 dB at 600²).
* :func:`keyed_gradient_ablation` — the uniqueness fix measured: wrong-key distances and η
  with the seed's fixed ∇ and with the keyed ∇ on the same host and data.

Rows are tidy dicts; ``tables.py`` turns them into Markdown and figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.trigger_key import calibration
from neuralmark.components.methods.trigger_key.method import TriggerKey

Row = dict[str, Any]
#: trigger sides of the capacity analysis: the seed's (``full``) and a short tiny list
CAPACITY_SIZES_FULL: tuple[int, ...] = (20, 40, 80, 160, 320, 480, 600)
CAPACITY_SIZES_TINY: tuple[int, ...] = (16, 32, 64)


def variant(method: TriggerKey, **changes: Any) -> TriggerKey:
    """A fresh, unmarked ``TriggerKey`` with config ``changes``, holding ``method``'s unmarked
    host (as ``host`` and ``unmarked``) and task data; ``method`` is not changed.

    (``with_config`` copies every module, and S changes shape with the trigger size.)
    """
    config = method.Config.model_validate({**method.config.model_dump(), **changes})
    other = TriggerKey(config)
    other.host.load_state_dict(method.unmarked.state_dict())
    other.unmarked.load_state_dict(method.unmarked.state_dict())
    other.trained = True
    other.train_pairs, other.test_pairs = method.train_pairs, method.test_pairs
    return other


def uniqueness_rows(owners: Mapping[str, tuple[TriggerKey, WatermarkKey]],
                    hosts: Mapping[str, nn.Module]) -> list[Row]:
    """``host, key, d, d_rel, ncc, p_value, detected`` for every host × owner key.

    Args:
        owners: ``{key name: (the method marked with it, the key)}``; each verifies with
            its own S and calibration.
        hosts: ``{host name: host}`` (marked, unmarked, independent).
    """
    rows = []
    for key_name, (method, key) in owners.items():
        for host_name, host in hosts.items():
            v = method.verify_model(host, key)
            rows.append({"host": host_name, "key": key_name, "d": v.extra.get("d"),
                         "d_rel": v.extra.get("d_rel"), "ncc": v.extra.get("ncc"),
                         "p_value": v.p_value,
                         "detected": v.detected, "eta": v.extra.get("eta")})
    return rows


def capacity_rows(method: TriggerKey, key: WatermarkKey, sizes: Sequence[int],
                  n_keys: int = 250) -> list[Row]:
    """Fidelity and verification per trigger size, embedded into ``method``'s unmarked host.

    Args:
        method: a fitted method (its ``unmarked`` host and task data are used; not changed).
        key: the owner's key.
        sizes: trigger sides.
        n_keys: random keys of each size's calibration (η needs ``alpha·(n + 1) >= 1``
            calibration trials: at alpha 0.01 with two hosts, n_keys >= 100).

    Each size's η is calibrated without other keys' marked hosts (``pool=[]``: they
    would cost ``calibration_marked_keys`` embeddings per size); the rows measure whether
    the mark takes and what it costs, uniqueness is the uniqueness table's.
    """
    if not isinstance(method, TriggerKey):
        raise TypeError("capacity_rows needs a trigger_key method")
    rows = []
    for size in sizes:
        m = variant(method, trigger_size=int(size))
        m.embed_model(method.unmarked, key)
        m.calibrate(key, n_keys=n_keys, pool=[])
        own, clean = m.verify_model(m.host, key), m.verify_model(m.unmarked, key)
        for metric, value in (("fidelity_cost_db", m.metrics["fidelity_cost_db"]),
                              ("psnr_marked", m.metrics["psnr_marked"]),
                              ("l_w_per_pixel", m.metrics["embed_l_w"] / m.s.numel()),
                              ("eta", m.calibration["eta"]),
                              ("detected_marked", float(own.detected)),
                              ("detected_unmarked", float(clean.detected)),
                              ("d_unmarked", clean.extra["d"]),
                              ("d_rel_unmarked", clean.extra["d_rel"])):
            rows.append({"trigger_size": int(size), "metric": metric, "value": float(value)})
    return rows


def keyed_gradient_ablation(method: TriggerKey, key: WatermarkKey,
                            wrong_keys: Sequence[WatermarkKey], n_keys: int = 200) -> list[Row]:
    """Wrong-key margins with the seed's fixed ∇ and with the keyed ∇ (same host, data).

    Returns:
        Rows ``gradient`` (``fixed`` / ``keyed``), ``metric`` (``eta``,
        ``wrong_key_d_min``, ``wrong_key_margin`` = min wrong-key d_rel / η,
        ``wrong_keys_detected``), ``value``.

    ``n_keys`` 200: each variant is calibrated on the marked host alone when ``method``
    has no λ = 0 reference (100 calibrating trials, alpha 0.01 needs 99; 100 keys left
    η unreachable, which ``calibrate`` now refuses).
    """
    rows = []
    for keyed in (False, True):
        m = variant(method, keyed_gradient=keyed)
        m.embed_model(method.unmarked, key)
        m.calibrate(key, n_keys=n_keys, pool=[])  # the ablation is on the random keys' S0
        verdicts = [m.verify_model(m.host, k) for k in wrong_keys]
        d_min = min(float(v.extra["d_rel"]) for v in verdicts)
        eta = m.calibration["eta"]
        # η from the λ = 0 host alone (no marked host in the null): the naive calibration
        c = m.config
        rx, rs = calibration.random_key_material(n_keys, 7, c.trigger_side, c.channels, c.task,
                                                 c.scale, keyed, c.key_family)
        plain = m.lambda0_host if m.lambda0_host is not None else m.unmarked
        naive = calibration.eta_at(
            calibration.host_relative_distances(plain, m.unmarked, rx, rs), c.alpha)
        naive = float("nan") if naive is None else float(naive)
        name = "keyed" if keyed else "fixed"
        for metric, value in (("eta", eta), ("eta_unmarked_null", naive),
                              ("wrong_key_d_min", d_min),
                              ("wrong_key_margin", d_min / eta),
                              ("wrong_keys_detected", float(sum(v.detected for v in verdicts))),
                              ("wrong_keys_below_unmarked_eta",
                               float(sum(float(v.extra["d"]) < naive for v in verdicts))),
                              ("fidelity_cost_db", m.metrics["fidelity_cost_db"])):
            rows.append({"gradient": name, "metric": metric, "value": float(value)})
    return rows


__all__ = ["CAPACITY_SIZES_FULL", "CAPACITY_SIZES_TINY", "capacity_rows",
           "keyed_gradient_ablation", "uniqueness_rows", "variant"]
