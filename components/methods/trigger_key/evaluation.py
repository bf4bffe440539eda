"""The model attack suite on a marked host and both baselines: one tidy row per measure.

:func:`attacker_data` assembles what the attacker holds (the host's task data, new
data — a prepared KTH-TIPS/DIV2K folder or procedural textures —, query inputs, a fresh
student, an overwriting embed with the attacker's own key, and the host's task
degradation for the keyless ``fine_tune_noise``); :func:`evaluate_attacks`
runs ``attacks/model_registry.iter_model_attacks`` on each method's marked host and
verifies every attacked copy with that method's key. Rows: ``method, attack, strength,
label, metric, value`` with metrics ``psnr`` (task PSNR of the attacked host), ``detected``,
``p_value``, ``score``, ``ncc``, ``ncc_verified`` and ``d`` (trigger_key) — so a "removal"
that ruins the host shows as such.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from neuralmark.components.attacks.model_registry import (
    MODEL_ATTACK_SUITE,
    AttackerData,
    ModelAttackSettings,
    ModelSuite,
    iter_model_attacks,
)
from neuralmark.components.data.restoration import new_data_patches, task_pairs
from neuralmark.components.methods.base import Callbacks, Verdict, WatermarkKey
from neuralmark.components.methods.trigger_key.host import HostMark

Row = dict[str, Any]
#: the attacker's own key for the overwriting attack
ATTACKER_SECRET = "neuralmark-attacker"


def overwriting_attacker(method: HostMark) -> HostMark:
    """The overwriting attacker's method: ``method``'s sizes, λ, schedule and task pairs,
    embedding with the public code's plain recipe, not the owner's attack-aware settings
    (``lookahead_*``); no λ = 0 reference (an attacker needs none)."""
    attacker = method.with_config(lambda0_reference=False, lookahead_steps=0,
                                  lookahead_noise=0.0, lookahead_attacks=("original",),
                                  lookahead_every=1)
    if not isinstance(attacker, HostMark):
        raise TypeError(f"overwrite_embed needs a host watermark, got {type(attacker).__name__}")
    attacker.train_pairs, attacker.test_pairs = method.train_pairs, method.test_pairs
    return attacker


def overwrite_embed(method: HostMark, secret: str = ATTACKER_SECRET):
    """``embed(copy) -> copy marked with the attacker's key`` (:func:`overwriting_attacker`);
    ``method`` is not changed."""
    attacker = overwriting_attacker(method)

    def embed(model: nn.Module) -> nn.Module:
        return attacker.embed_model(model, WatermarkKey(secret))

    return embed


def attacker_data(method: HostMark, new_manifest: str | os.PathLike | None = None,
                  n_new: int | None = None, seed: int = 5) -> AttackerData:
    """What the attacker holds against ``method``'s host (see the module docstring)."""
    (x, y), _ = method.require_pairs()
    c = method.config
    g = torch.Generator().manual_seed(seed)
    new = new_data_patches(n_new or len(x), c.patch_size, g, c.channels, new_manifest)
    nx, ny = task_pairs(c.task, new.patches, g, c.sigma, c.scale)

    def degrade(clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return task_pairs(c.task, clean, gen, c.sigma, c.scale)

    return AttackerData(original=(x, y), new=(nx, ny), new_source=new.source, queries=x,
                        student=method.new_host(seed + 100), embed=overwrite_embed(method),
                        degrade=degrade)


def verdict_rows(method_name: str, attack: str, strength: float | None, label: str,
                 verdict: Verdict, psnr: float) -> list[Row]:
    """Tidy rows of one verified host."""
    base = {"method": method_name, "attack": attack,
            "strength": math.nan if strength is None else float(strength), "label": label}
    values: dict[str, float] = {"psnr": psnr, "detected": float(verdict.detected),
                                "p_value": math.nan if verdict.p_value is None
                                else float(verdict.p_value), "score": float(verdict.score)}
    for k in ("d", "d_rel", "ncc", "ncc_verified", "share", "ber"):
        v = verdict.extra.get(k)
        if v is not None:
            values[k] = float(v)
    return [{**base, "metric": k, "value": v} for k, v in values.items()]


def evaluate_attacks(methods: Mapping[str, tuple[HostMark, WatermarkKey]],
                     suite: ModelSuite = MODEL_ATTACK_SUITE,
                     settings: ModelAttackSettings | None = None,
                     new_manifest: str | os.PathLike | None = None,
                     callbacks: Callbacks | Sequence[Any] = ()) -> list[Row]:
    """Run ``suite`` on every method's marked host; verify each attacked copy.

    Args:
        methods: ``{name: (marked method, its key)}`` — trigger_key and the baselines.
        suite: ``[(attack, [strength, ...]), ...]`` (``MODEL_ATTACK_SUITE``: the seed's).
        settings: the attacker's schedule (lr, batch, seed, device).
        new_manifest: a prepared new-data folder (KTH-TIPS / DIV2K layout), else
            procedural textures.
        callbacks: progress per attack.

    Returns:
        Tidy rows; the first of each method is the unattacked host (``attack = "none"``).
    """
    cb = Callbacks.of(callbacks)
    rows: list[Row] = []
    total, done = len(methods) * sum(len(strengths) for _, strengths in suite), 0
    for name, (method, key) in methods.items():
        host = method.host
        rows += verdict_rows(name, "none", None, "none", method.verify_model(host, key),
                             method.task_psnr_of(host))
        data = attacker_data(method, new_manifest)
        for params, attacked in iter_model_attacks(host, suite, data, settings):
            rows += verdict_rows(name, params["attack"], params["strength"], params["label"],
                                 method.verify_model(attacked, key),
                                 method.task_psnr_of(attacked))
            done += 1
            cb.on_progress(done, total, f"{name}:{params['label']}")
    return rows


__all__ = ["ATTACKER_SECRET", "Row", "attacker_data", "evaluate_attacks", "overwrite_embed",
           "overwriting_attacker", "verdict_rows"]
