"""A wall-clock bound on training loops: ``with time_budget(seconds): ...``.

A recipe that must finish in N minutes on a machine it was never timed on (the
``full`` output_mark recipe on one GPU, ``scripts/train_shipped_output_mark.py
--minutes``) cannot size its step counts in advance; instead each loop asks
:func:`out_of_time` before a step and stops early when the innermost budget is
spent, and the budget records where it cut (:attr:`TimeBudget.cuts`), so the
metrics say how many steps each loop really took. Outside any budget nothing
changes: :func:`out_of_time` is ``False`` and runs stay reproducible to the bit.

Budgets nest (a stage's share inside the recipe's total); the earliest deadline
wins. Under ``torchrun`` every process must stop at the same step, so rank 0's
answer is broadcast (one scalar per step, only while a budget is active).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from neuralmark.components.errors import InputError


@dataclass
class TimeBudget:
    """One active bound.

    Attributes:
        deadline: ``time.monotonic()`` value after which loops stop.
        cuts: ``{loop: (steps done, steps planned)}`` of every loop it stopped early.
    """

    deadline: float
    cuts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def left_s(self) -> float:
        """Seconds left (negative once spent)."""
        return self.deadline - time.monotonic()


_ACTIVE: ContextVar[tuple[TimeBudget, ...]] = ContextVar("time_budgets", default=())


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[TimeBudget | None]:
    """Inside the block, loops stop once ``seconds`` have passed (``None``: no bound).

    Raises:
        InputError: ``seconds`` is not positive.
    """
    if seconds is None:
        yield None
        return
    if not seconds > 0:
        raise InputError(f"a time budget needs a positive number of seconds, got {seconds}")
    outer = _ACTIVE.get()
    deadline = time.monotonic() + float(seconds)
    if outer:
        deadline = min(deadline, outer[-1].deadline)
    budget = TimeBudget(deadline)
    token = _ACTIVE.set((*outer, budget))
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)
        for parent in outer:  # a stage's cuts belong to the whole run as well
            parent.cuts.update(budget.cuts)


def out_of_time(loop: str = "", step: int = 0, planned: int = 0) -> bool:
    """Whether the innermost budget is spent; records ``(step, planned)`` under ``loop`` if so.

    Always ``False`` outside a budget. Under an initialised ``torch.distributed`` group
    rank 0 decides for every process.
    """
    active = _ACTIVE.get()
    if not active:
        return False
    budget = active[-1]
    spent = budget.left_s <= 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nccl = torch.distributed.get_backend() == "nccl"  # NCCL moves CUDA tensors only
        flag = torch.tensor([float(spent)], device="cuda" if nccl else "cpu")
        torch.distributed.broadcast(flag, src=0)
        spent = bool(flag.item())
    if spent:
        budget.cuts[loop or f"loop{len(budget.cuts)}"] = (int(step), int(planned))
    return spent


__all__ = ["TimeBudget", "out_of_time", "time_budget"]
