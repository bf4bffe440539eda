"""Model attack: surrogate training, the attacker's copy of an image-processing model.

An attacker who can query a protected model M (a service) collects its
(input, output) pairs and trains a surrogate SM on them (Zhang et al., AAAI'20,
seed 001; the same attack threatens trigger-key marks, seed 002). What the
attacker controls is the surrogate's architecture and its loss; the seed's
attack matrix varies both (Table 2: CNet, Res9, Res16, UNet with L2; Table 3:
UNet with L1, L2, perceptual, adversarial and their sums).

* :class:`SurrogateSettings` — the attacker's schedule (arch, loss, sizes, steps).
* :func:`parse_loss` — ``"l2+adversarial"`` → its terms (from ``nets/training``, whose
  :func:`~neuralmark.components.nets.training.train_image_net` trains every surrogate,
  the protected model and the restoration hosts alike).
* :func:`train_surrogate` — build SM(arch) and train it on the service's pairs.
* :func:`surrogate_matrix_cells`, :func:`matrix_cells`, :func:`cell_name`,
  :func:`attack_cell` — the cells of the matrix, validated and named, and one
  cell run end to end (train SM, query it on test inputs).

Shapes: images are ``N×3×H×W`` float32 in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from neuralmark.components.data.pairs import check_pairs
from neuralmark.components.errors import InputError, describe_validation_error
from neuralmark.components.methods.base import Callbacks, pick_device, resize_square
from neuralmark.components.nets.image_nets import (
    SURROGATE_ARCHS,
    SurrogateArch,
    apply_net,
    build_image_net,
)
from neuralmark.components.nets.training import LOSS_TERMS, parse_loss, train_image_net

#: loss terms an attacker's surrogate can combine (seed 001, Table 3)
SURROGATE_LOSS_TERMS: tuple[str, ...] = LOSS_TERMS
#: the seed's Table 3 columns
SURROGATE_LOSSES: tuple[str, ...] = ("l1", "l1+adversarial", "l2", "l2+adversarial",
                                     "perceptual", "perceptual+adversarial")


class SurrogateSettings(BaseModel):
    """How a surrogate SM is trained (``output_mark``'s stage 2 and each matrix cell).

    Attributes:
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet``.
        loss: ``+``-joined terms of ``l1``, ``l2``, ``perceptual``, ``adversarial``.
        output: head of the surrogate (``residual`` or ``sigmoid``).
        width: base channels.
        depth: UNet depth.
        steps: optimiser steps.
        steps_by_arch: the matrix cells' budget per architecture (e.g. ``{cnet: 2400,
            unet: 1200}``), falling back to ``steps`` for an arch it does not name; read by
            :func:`attack_cell` (:meth:`budget`), so a cell can train to the theft bar of
            its arch (issue #19, om10: CNet·L2 ≈ 2400 steps, UNet·L2 600–1200). Empty:
            every cell trains ``steps``. :func:`train_surrogate` itself (output_mark's
            stage-2 surrogate) always trains ``steps``.
        batch_size: pairs per step.
        lr: Adam learning rate.
        adv_weight: weight of the adversarial term (pix2pix's 1:100 ratio).
        seed: seeds the init and the batch order.
        device: ``auto`` (cuda when present) or a torch device string.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: SurrogateArch = "unet"
    loss: str = "l2"
    output: Literal["residual", "sigmoid"] = "residual"
    width: int = Field(32, ge=1)
    depth: int = Field(3, ge=1)
    steps: int = Field(2000, ge=0)
    steps_by_arch: dict[SurrogateArch, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    adv_weight: float = Field(0.01, ge=0)
    seed: int = 0
    device: str = "auto"

    @field_validator("loss")
    @classmethod
    def _known_terms(cls, value: str) -> str:
        parse_loss(value)
        return value

    def budget(self, arch: str) -> int:
        """The optimiser steps of a matrix cell of ``arch``: ``steps_by_arch[arch]``, else
        ``steps``."""
        return int(self.steps_by_arch.get(arch, self.steps))  # type: ignore[call-overload]

    def for_arch(self, arch: str) -> SurrogateSettings:
        """These settings with ``steps`` set to :meth:`budget` of ``arch`` (and no map)."""
        return self.model_copy(update={"steps": self.budget(arch), "steps_by_arch": {}})


def _settings(config: Any) -> SurrogateSettings:
    """``config`` as ``SurrogateSettings``: itself, a dict of its fields, or any object
    whose ``surrogate`` attribute is one (a method config such as ``OutputMarkConfig``)."""
    if config is None:
        return SurrogateSettings()
    if isinstance(config, SurrogateSettings):
        return config
    if isinstance(getattr(config, "surrogate", None), SurrogateSettings):
        return config.surrogate
    if isinstance(config, Mapping):
        try:
            return SurrogateSettings.model_validate(dict(config))
        except ValidationError as err:
            raise InputError(f"invalid surrogate settings: "
                             f"{describe_validation_error(err)}") from None
    raise InputError(f"surrogate config must be SurrogateSettings, a config with a "
                     f"'surrogate' part or a dict, got {type(config).__name__}")


def train_surrogate(inputs: torch.Tensor, targets: torch.Tensor, arch: str | None = None,
                    loss: str | Sequence[str] | None = None,
                    config: SurrogateSettings | Mapping[str, Any] | Any = None,
                    callbacks: Callbacks | Sequence[Any] = (),
                    after_step: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """The attacker: train a surrogate SM on the protected service's (input, output) pairs.

    Args:
        inputs: N×3×S×S domain-A images in [0, 1].
        targets: N×3×S×S outputs of the service (B′ when marked) in [0, 1].
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet`` (default: the settings').
        loss: ``+``-joined ``l1``, ``l2``, ``perceptual``, ``adversarial`` (default: the
            settings').
        config: ``SurrogateSettings``, a dict of its fields, or a method config with a
            ``surrogate`` part (``OutputMarkConfig``).
        callbacks: metrics/progress sinks (prefix: the cell name).
        after_step: ``after_step(k, net)`` after each optimiser step (see
            :func:`~neuralmark.components.nets.training.train_image_net`).

    Returns:
        The trained surrogate (eval mode; B×3×H×W → B×3×H×W in [0, 1]).

    Raises:
        InputError: bad tensors, unknown arch or loss term, bad settings.
    """
    s = _settings(config)
    a, b = check_pairs((inputs, targets), "train_surrogate")
    arch = arch or s.arch
    if arch not in SURROGATE_ARCHS:
        raise InputError(f"unknown surrogate architecture {arch!r}; expected one of "
                         f"{list(SURROGATE_ARCHS)}")
    loss = loss or s.loss
    name = cell_name(arch, loss if isinstance(loss, str) else "+".join(loss))
    torch.manual_seed(s.seed)
    net = build_image_net(arch, s.width, s.output, s.depth)
    train_image_net(net, a, b, loss, s.steps, s.batch_size, s.lr, s.seed, pick_device(s.device),
                    s.adv_weight, callbacks=callbacks, desc=name, after_step=after_step)
    return net


def surrogate_matrix_cells() -> list[tuple[str, str]]:
    """The seed's attack matrix: every arch with L2 (Table 2), UNet with every loss (Table 3).

    Returns:
        ``(arch, loss)`` cells, no duplicates, in table order.
    """
    cells = [(arch, "l2") for arch in SURROGATE_ARCHS]
    cells += [("unet", loss) for loss in SURROGATE_LOSSES if ("unet", loss) not in cells]
    return cells


def cell_name(arch: str, loss: str) -> str:
    """MLflow/step-safe label of a cell, e.g. ``surrogate_unet_l2_adversarial``.

    Raises:
        InputError: an unknown loss term.
    """
    parse_loss(loss)
    return f"surrogate_{arch}_{'_'.join(p.strip().lower() for p in loss.split('+'))}"


def matrix_cells(cells: Sequence[Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """The cells to run: ``cells`` (``[arch, loss]`` pairs), validated, or the seed's nine.

    Raises:
        InputError: a cell that is not ``[arch, loss]``, an unknown arch or loss, or a
            duplicate.
    """
    if cells is None:
        return surrogate_matrix_cells()
    out = []
    for cell in cells:
        if len(cell) != 2:
            raise InputError(f"a matrix cell is [arch, loss], got {list(cell)}")
        arch, loss = str(cell[0]), str(cell[1])
        try:
            SurrogateSettings(arch=arch, loss=loss)  # validates both
        except ValidationError as err:
            raise InputError(f"bad matrix cell [{arch}, {loss}]: "
                             f"{describe_validation_error(err)}") from None
        out.append((arch, loss))
    if len(set(out)) != len(out):
        raise InputError(f"duplicate matrix cells in {out}")
    return out


def attack_cell(marked_train_outputs: torch.Tensor, train_inputs: torch.Tensor,
                test_inputs: torch.Tensor, arch: str, loss: str,
                settings: SurrogateSettings | Mapping[str, Any],
                callbacks: Callbacks | Sequence[Any] = ()) -> torch.Tensor:
    """One cell of the matrix: train SM(arch, loss) on (inputs, marked outputs), run it on test.

    Args:
        marked_train_outputs: K×3×S×S the service's outputs (the attacker's targets).
        train_inputs: K×3×S×S the matching inputs.
        test_inputs: T×3×H×W test inputs (resized to S).
        arch: ``cnet`` / ``res9`` / ``res16`` / ``unet``.
        loss: ``+``-joined loss terms (see :func:`parse_loss`).
        settings: the schedule (``SurrogateSettings`` fields; its arch/loss are ignored;
            the budget is ``settings.budget(arch)``: ``steps_by_arch`` or ``steps``).
        callbacks: metrics/progress sinks.

    Returns:
        T×3×S×S surrogate outputs on the test inputs (B″), CPU, in [0, 1].
    """
    s = _settings(settings).for_arch(arch)
    sm = train_surrogate(train_inputs, marked_train_outputs, arch, loss, s, callbacks)
    size = marked_train_outputs.shape[-1]
    return apply_net(sm, resize_square(test_inputs.float(), size), s.batch_size * 4).clamp(0, 1)


def attack_cell_ladder(marked_train_outputs: torch.Tensor, train_inputs: torch.Tensor,
                       test_inputs: torch.Tensor, arch: str, loss: str,
                       settings: SurrogateSettings | Mapping[str, Any],
                       budgets: Sequence[int],
                       callbacks: Callbacks | Sequence[Any] = ()) -> dict[int, torch.Tensor]:
    """:func:`attack_cell` at several training budgets, from one run of the longest.

    The attacker's schedule is constant (Adam, fixed rate, batches from a seeded
    generator), so the surrogate after k steps of a longer run is the surrogate of a
    ``steps=k`` run: its outputs are those :func:`attack_cell` gives with ``steps=k``
    (tested to the bit on CPU). One process only.

    Args:
        marked_train_outputs, train_inputs, test_inputs, arch, loss, settings,
            callbacks: as :func:`attack_cell` (``settings.steps`` and ``steps_by_arch`` are
            ignored).
        budgets: step counts, each ≥ 1.

    Returns:
        ``{k: T×3×S×S outputs on the test inputs after k steps}``, CPU, in [0, 1].

    Raises:
        InputError: no budget, or one below 1.
    """
    wanted = sorted({int(k) for k in budgets})
    if not wanted or wanted[0] < 1:
        raise InputError(f"budgets must be step counts >= 1, got {list(budgets)}")
    s = _settings(settings).model_copy(update={"steps": wanted[-1], "steps_by_arch": {}})
    size = marked_train_outputs.shape[-1]
    query = resize_square(test_inputs.float(), size)
    outputs: dict[int, torch.Tensor] = {}

    def snapshot(k: int, net: nn.Module) -> None:
        if k in wanted:  # apply_net runs in eval mode and restores train mode
            with torch.no_grad():
                outputs[k] = apply_net(net, query, s.batch_size * 4).clamp(0, 1)

    train_surrogate(train_inputs, marked_train_outputs, arch, loss, s, callbacks, snapshot)
    return outputs


__all__ = ["SURROGATE_LOSSES", "SURROGATE_LOSS_TERMS", "SurrogateSettings", "attack_cell",
           "attack_cell_ladder", "cell_name", "matrix_cells", "parse_loss",
           "surrogate_matrix_cells", "train_surrogate"]
