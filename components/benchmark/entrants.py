"""Who takes part in a benchmark: registered content methods and the peers.

An ``Entrant`` is a name, a family (``neuralmark`` or ``peer``), where it came from, and
either a ready content method or the reason it cannot run (a peer that is not installed, a
method without shipped weights, a model method). The benchmark reports the reason as a row
and goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neuralmark.components.benchmark.peers import (
    PeerMethod,
    PeerUnavailable,
    available_peers,
    peer_name,
)
from neuralmark.components.errors import InputError
from neuralmark.components.methods.registry import (
    available,
    build,
    load_bundle,
    method_class,
    shipped_bundle,
)


@dataclass
class Entrant:
    """One contestant.

    Attributes:
        name: method key or peer name (the ``method`` column).
        family: ``neuralmark`` or ``peer``.
        method: a content method (``embed``/``verify``), or ``None`` when it cannot run.
        source: where it came from (bundle folder, package, default config).
        unavailable: why it cannot run (empty when it can).
    """

    name: str
    family: str
    method: Any = None
    source: str = ""
    unavailable: str = ""

    @property
    def min_size(self) -> int:
        return int(getattr(self.method, "min_size", 1))


def content_methods() -> list[str]:
    """Registered methods that mark images (``kind == "content"``)."""
    return [k for k in available() if method_class(k).kind == "content"]


def method_entrant(key: str, device: str = "cpu") -> Entrant:
    """A registered method with its shipped bundle, or the reason it cannot take part.

    A method with nothing to learn (no networks: ``spread_spectrum``) runs from its default
    config; one with networks needs shipped weights.

    Raises:
        InputError: ``key`` is not a registered method.
    """
    cls = method_class(key)
    if cls.kind != "content":
        return Entrant(key, "neuralmark", unavailable=(
            "model method: it marks networks, not images (benchmark it with "
            "`neuralmark attack-model`)"))
    bundle = shipped_bundle(key)
    if bundle is not None:
        return Entrant(key, "neuralmark", load_bundle(bundle, device=device),
                       source=f"shipped bundle components/pretrained/{key}")
    method = build(key)
    if not method.parameters():
        return Entrant(key, "neuralmark", method.to(device),
                       source="default config (nothing to learn)")
    return Entrant(key, "neuralmark", unavailable="no shipped weights (train it with "
                   f"`neuralmark train {key}` and pass the bundle)")


def peer_entrant(name: str, alpha: float = 1e-6) -> Entrant:
    """A peer adapter, or a "not installed" entrant.

    Raises:
        InputError: ``name`` is not a known peer.
    """
    try:
        peer = PeerMethod(name, alpha=alpha)
    except PeerUnavailable as err:
        return Entrant(name, "peer", unavailable=str(err))
    return Entrant(peer.key, "peer", peer, source=f"{peer.spec.package} (pip)")


def entrants(methods: Sequence[str] | None = None, peers: Sequence[str] | None = None,
             alpha: float = 1e-6, device: str = "cpu") -> list[Entrant]:
    """Every requested contestant, in order: our methods, then the peers.

    Args:
        methods: method keys (``None``: every content method).
        peers: peer names (``None``: every known peer).
        alpha: the peers' p-value level.
        device: where our methods run.

    Raises:
        InputError: an unknown method or peer name (the message lists the known ones).
    """
    method_keys = content_methods() if methods is None else list(methods)
    peer_names = available_peers() if peers is None else list(peers)
    for key in method_keys:
        method_class(key)  # InputError listing the registered methods
    peer_names = [peer_name(p) for p in peer_names]  # InputError listing the known peers
    if not method_keys and not peer_names:
        raise InputError("nothing to benchmark: name at least one method or peer")
    return ([method_entrant(k, device) for k in method_keys]
            + [peer_entrant(p, alpha) for p in peer_names])
