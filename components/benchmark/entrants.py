"""Who takes part in a benchmark: registered content methods and the peers.

An ``Entrant`` is a name, a family (``neuralmark`` or ``peer``), where it came from, and
either a ready content method or the reason it cannot run (a peer that is not installed, a
method without shipped weights, a model method). The benchmark reports the reason as a row
and goes on.

A method may be named with config changes, ``key[field=value,...]`` (values read as JSON,
bare words as text): ``pgd_signer[psnr_target=40]`` is the shipped decoder signing at
40 dB, ``anti_forward[smoothing=false]`` the shipped scanner's fast rule. Each such
variant is its own entrant (its own rows, the spec as the ``method`` cell), so one run puts
a method's deploy-time knobs side by side with the same attacks and photos.
"""

from __future__ import annotations

import json
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


def split_names(text: str) -> list[str]:
    """``"a,b[x=1,y=2]"`` → ``["a", "b[x=1,y=2]"]``: commas inside brackets stay."""
    names, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            names.append(current.strip())
            current = ""
        else:
            current += ch
    names.append(current.strip())
    return [n for n in names if n]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"key[field=value,...]"`` → ``(key, {field: value})``; a plain key has no changes.

    Raises:
        InputError: unbalanced brackets or a change that is not ``field=value``.
    """
    spec = spec.strip()
    if "[" not in spec and "]" not in spec:
        return spec, {}
    key, sep, rest = spec.partition("[")
    if not sep or not rest.endswith("]") or "[" in rest[:-1] or "]" in rest[:-1]:
        raise InputError(f"method {spec!r}: write config changes as key[field=value,...]")
    changes: dict[str, Any] = {}
    for item in split_names(rest[:-1]):
        field, eq, raw = item.partition("=")
        if not eq or not field.strip():
            raise InputError(f"method {spec!r}: {item!r} is not field=value")
        try:
            changes[field.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            changes[field.strip()] = raw.strip()
    return key.strip(), changes


def content_methods() -> list[str]:
    """Registered methods that mark images (``kind == "content"``)."""
    return [k for k in available() if method_class(k).kind == "content"]


def method_entrant(spec: str, device: str = "cpu") -> Entrant:
    """A registered method with its shipped bundle, or the reason it cannot take part.

    A method with nothing to learn (no networks: ``spread_spectrum``) runs from its default
    config; one with networks needs shipped weights. ``spec`` may carry config changes
    (``key[field=value,...]``, see the module docstring).

    Raises:
        InputError: ``key`` is not a registered method, or a config change is invalid.
    """
    key, changes = parse_spec(spec)
    entrant = _method_entrant(key, device)
    entrant.name = spec
    if changes and entrant.method is not None:
        entrant.method = entrant.method.with_config(**changes)  # InputError naming the field
        entrant.source += f", config changed: {changes}"
    return entrant


def _method_entrant(key: str, device: str) -> Entrant:
    cls = method_class(key)
    if cls.kind != "content":
        return Entrant(key, "neuralmark", unavailable=(
            "model method: it marks networks, not images (its shipped host goes through "
            "the model attacks: the model table)"))
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
             alpha: float = 1e-6, device: str = "cpu", allow_empty: bool = False
             ) -> list[Entrant]:
    """Every requested contestant, in order: our methods, then the peers.

    Args:
        methods: method keys (``None``: every content method).
        peers: peer names (``None``: every known peer).
        alpha: the peers' p-value level.
        device: where our methods run.
        allow_empty: no content entrant is fine (the model table has methods).

    Raises:
        InputError: an unknown method or peer name (the message lists the known ones).
    """
    method_keys = content_methods() if methods is None else list(methods)
    peer_names = available_peers() if peers is None else list(peers)
    for spec in method_keys:
        method_class(parse_spec(spec)[0])  # InputError listing the registered methods
    peer_names = [peer_name(p) for p in peer_names]  # InputError listing the known peers
    if not method_keys and not peer_names and not allow_empty:
        raise InputError("nothing to benchmark: name at least one method or peer")
    return ([method_entrant(k, device) for k in method_keys]
            + [peer_entrant(p, alpha) for p in peer_names])
