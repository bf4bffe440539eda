"""Model attacks as data: by name, with their knob, one tidy row per (attack, strength).

The model-side twin of ``attacks/registry.py``. :data:`MODEL_ATTACKS` names each attack
of ``attacks/model.py`` (and the keyless ``fine_tune_noise`` of ``attacks/noise_inputs.py``)
with its knob (``rate``, ``epochs`` or none), its default and
what it needs from :class:`AttackerData`; every one is called the same way,
``attack(model, strength, data, settings, callbacks) -> attacked copy``.
``attack.params(strength, data, settings)`` is the plain, loggable description of one
run (the image attacks' ``sample``); calling the attack runs it (their ``apply``), with
its batch draws seeded by ``(settings.seed, label)`` as ``components/evaluation.py``
seeds the image attacks, so a label replays the same run in any suite order.
:func:`iter_model_attacks` walks a suite — ``[(name, [strength, …]), …]`` — yielding
``(params, attacked model)``.

Example:
    >>> MODEL_ATTACKS["prune"].label(0.25), MODEL_ATTACKS["overwrite"].label(None)
    ('prune_0.25', 'overwrite')
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from neuralmark.components.attacks.model import (
    Embed,
    distill,
    fine_tune,
    overwrite,
    prune_magnitude,
    steps_for,
)
from neuralmark.components.attacks.noise_inputs import NOISE_KINDS, Degrade, fine_tune_noise
from neuralmark.components.attacks.registry import attack_seed
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks

Pairs = tuple[torch.Tensor, torch.Tensor]
ModelSuite = list[tuple[str, list[float | None]]]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ModelAttackSettings(BaseModel):
    """The attacker's schedule for the training attacks (fine-tuning, distillation).

    Attributes:
        lr: Adam learning rate (the seed gives none for the attacker: its training 1e-3).
        batch_size: patches per step.
        seed: with the attack's label, seeds its batch draws (a label replays the same run
            in any suite order).
        device: ``auto`` (cuda when present) or a torch device string.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class AttackerData:
    """What the attacker holds besides the model; each attack needs some of it.

    Attributes:
        original: ``(inputs, targets)`` of the host's own task data (N×C×S×S).
        new: ``(inputs, targets)`` made from new data (KTH-TIPS / DIV2K / procedural).
        new_source: where ``new`` came from (``NewData.source``), for the logs.
        queries: N×C×S×S inputs the attacker sends to the marked model (distillation).
        student: the host the attacker distils into (copied for every run).
        embed: the overwriting embed, ``embed(copy) -> marked copy``.
        degrade: the host's task pairs of clean images, ``degrade(clean, generator) ->
            (inputs, targets)`` (the keyless ``fine_tune_noise`` makes its noise pairs so).
    """

    original: Pairs | None = None
    new: Pairs | None = None
    new_source: str = "new"
    queries: torch.Tensor | None = None
    student: nn.Module | None = None
    embed: Embed | None = None
    degrade: Degrade | None = None


def _format_strength(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


@dataclass(frozen=True)
class ModelAttack:
    """One model attack as data: its knob, its default, what it needs, how it runs.

    Attributes:
        name: registry name.
        knob: what the strength is (``rate``, ``epochs``) or ``None`` (no knob).
        default: the strength when none is given.
        needs: the :class:`AttackerData` fields it reads.
        description: one line for reports.
        run: ``run(model, params, data, callbacks) -> attacked copy``, with ``params``
            from :meth:`params` (what ``__call__`` does).
    """

    name: str
    knob: str | None
    default: float | None
    needs: tuple[str, ...]
    description: str
    run: Callable[[nn.Module, dict[str, Any], AttackerData, Callbacks], nn.Module]

    def strength_of(self, strength: float | None) -> float | None:
        """The validated strength (``None`` → the default). Raises ``InputError``."""
        if self.knob is None:
            if strength is not None:
                raise InputError(f"model attack {self.name!r} takes no strength, got {strength}")
            return None
        value = self.default if strength is None else float(strength)
        if value is None or not math.isfinite(value) or value < 0 or (
                self.knob == "rate" and value > 1):
            bound = "in [0, 1]" if self.knob == "rate" else ">= 0"
            raise InputError(f"{self.name}: {self.knob} must be {bound}, got {strength}")
        return value

    def label(self, strength: float | None) -> str:
        """MLflow-safe label: ``prune_0.25``, ``fine_tune_new_10``, ``overwrite``."""
        value = self.strength_of(strength)
        text = self.name if value is None else f"{self.name}_{_format_strength(value)}"
        return _UNSAFE.sub("_", text)

    def params(self, strength: float | None, data: AttackerData,
               settings: ModelAttackSettings | None = None) -> dict[str, Any]:
        """The tidy description of one run (plain values, loggable, replayable).

        Returns:
            ``attack``, ``strength``, ``label``, the knob, and for training attacks
            ``steps``, ``lr``, ``batch_size``, ``seed``, ``n`` (training pairs) and
            ``data`` (``original`` or the new data's source) or ``student`` (its class).

        Raises:
            InputError: a bad strength, or ``data`` lacks what the attack needs.
        """
        s = settings or ModelAttackSettings()
        value = self.strength_of(strength)
        missing = [f for f in self.needs if getattr(data, f) is None]
        if missing:
            raise InputError(f"model attack {self.name!r} needs AttackerData."
                             f"{', AttackerData.'.join(missing)}, which is not given")
        label = self.label(strength)
        out: dict[str, Any] = {"attack": self.name, "strength": value, "label": label}
        if self.knob is not None:
            out[self.knob] = value
        if self.knob == "epochs":
            x = data.queries if self.name == "distill" else getattr(data, self.needs[0])[0]
            n = int(x.shape[0])
            out.update(steps=steps_for(None, value, n, s.batch_size), lr=s.lr,
                       batch_size=s.batch_size, seed=attack_seed(s.seed, label), n=n,
                       device=s.device)
            if self.name == "distill":
                out["student"] = type(data.student).__name__
            elif self.name == "fine_tune_noise":
                out.update(data="original+noise", n_noise=n, noise_kinds="+".join(NOISE_KINDS))
            else:
                out["data"] = "original" if self.needs == ("original",) else data.new_source
        return out

    def __call__(self, model: nn.Module, strength: float | None, data: AttackerData,
                 settings: ModelAttackSettings | None = None,
                 callbacks: Callbacks | Sequence[Any] = ()) -> nn.Module:
        """Run the attack on ``model`` (not modified); returns the attacked copy."""
        return self.run(model, self.params(strength, data, settings), data,
                        Callbacks.of(callbacks))


def _run_prune(model: nn.Module, p: dict[str, Any], data: AttackerData,
               cb: Callbacks) -> nn.Module:
    return prune_magnitude(model, p["rate"], cb)


def _fine_tuner(field: str) -> Callable[[nn.Module, dict[str, Any], AttackerData, Callbacks],
                                        nn.Module]:
    def run(model: nn.Module, p: dict[str, Any], data: AttackerData,
            cb: Callbacks) -> nn.Module:
        x, y = getattr(data, field)
        return fine_tune(model, x, y, steps=p["steps"], lr=p["lr"], batch_size=p["batch_size"],
                         generator=p["seed"], callbacks=cb, device=p["device"],
                         desc=p["label"])
    return run


def _run_distill(model: nn.Module, p: dict[str, Any], data: AttackerData,
                 cb: Callbacks) -> nn.Module:
    student, queries = cast(nn.Module, data.student), cast(torch.Tensor, data.queries)
    return distill(model, student, queries, steps=p["steps"], lr=p["lr"],
                   batch_size=p["batch_size"], generator=p["seed"], callbacks=cb,
                   device=p["device"], desc=p["label"])


def _run_fine_tune_noise(model: nn.Module, p: dict[str, Any], data: AttackerData,
                         cb: Callbacks) -> nn.Module:
    x, y = cast(Pairs, data.original)
    return fine_tune_noise(model, x, y, cast(Degrade, data.degrade), steps=p["steps"],
                           lr=p["lr"], batch_size=p["batch_size"], generator=p["seed"],
                           n_noise=p["n_noise"], callbacks=cb, device=p["device"],
                           desc=p["label"])


def _run_overwrite(model: nn.Module, p: dict[str, Any], data: AttackerData,
                   cb: Callbacks) -> nn.Module:
    return overwrite(model, cast(Embed, data.embed), cb)


#: the model attacks by name; every one is called ``attack(model, strength, data, settings)``
MODEL_ATTACKS: dict[str, ModelAttack] = {a.name: a for a in (
    ModelAttack("prune", "rate", 0.25, (), "per-layer magnitude pruning", _run_prune),
    ModelAttack("fine_tune_original", "epochs", 10.0, ("original",),
                "fine-tuning on the host's own task data", _fine_tuner("original")),
    ModelAttack("fine_tune_new", "epochs", 10.0, ("new",),
                "fine-tuning on new data (textures / other photos)", _fine_tuner("new")),
    ModelAttack("distill", "epochs", 10.0, ("queries", "student"),
                "a student trained on the marked host's outputs", _run_distill),
    ModelAttack("overwrite", None, None, ("embed",),
                "a second mark embedded with the attacker's key", _run_overwrite),
    ModelAttack("fine_tune_noise", "epochs", 10.0, ("original", "degrade"),
                "keyless: fine-tuning on the task data plus task pairs of random noise "
                "images (white, narrow-band, filtered; no key needed)", _run_fine_tune_noise),
)}

#: the seed's ranges: pruning 10-90% per layer, fine-tuning up to 100 epochs on original and
#: new data, overwriting; distillation and the keyless noise fine-tuning (not in the seed) as
#: long as the shortest fine-tuning
MODEL_ATTACK_SUITE: ModelSuite = [
    ("prune", [round(0.1 * i, 1) for i in range(1, 10)]),
    ("fine_tune_original", [10, 50, 100]),
    ("fine_tune_new", [10, 50, 100]),
    ("distill", [10]),
    ("overwrite", [None]),
    ("fine_tune_noise", [10]),
]


def get_model_attack(name: str) -> ModelAttack:
    """The attack called ``name``; ``InputError`` listing the valid names otherwise."""
    key = str(name).strip().lower()
    if key not in MODEL_ATTACKS:
        raise InputError(f"unknown model attack {name!r}; valid names: "
                         f"{', '.join(sorted(MODEL_ATTACKS))}")
    return MODEL_ATTACKS[key]


def iter_model_attacks(model: nn.Module, suite: ModelSuite, data: AttackerData,
                       settings: ModelAttackSettings | None = None,
                       callbacks: Callbacks | Sequence[Any] = ()
                       ) -> Iterator[tuple[dict[str, Any], nn.Module]]:
    """Run a suite: yield ``(params, attacked copy)`` per (attack, strength), in suite order.

    Every name, strength and data need is checked before the first attack runs, so a bad
    suite fails at once instead of after hours of fine-tuning.

    Raises:
        InputError: an unknown attack, a bad strength, missing data, a duplicate label.
    """
    plan = [(get_model_attack(name), strength) for name, strengths in suite
            for strength in strengths]
    described = [attack.params(strength, data, settings) for attack, strength in plan]
    labels = [p["label"] for p in described]
    if len(set(labels)) != len(labels):
        raise InputError(f"duplicate model attacks in the suite: {labels}")
    for (attack, strength), params in zip(plan, described, strict=True):
        yield params, attack(model, strength, data, settings, callbacks)


__all__ = ["MODEL_ATTACKS", "MODEL_ATTACK_SUITE", "AttackerData", "ModelAttack",
           "ModelAttackSettings", "ModelSuite", "get_model_attack", "iter_model_attacks"]
