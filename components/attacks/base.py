"""Image attacks with kornia's sample/apply split.

``sample(batch_size, generator)`` draws the random parameters of one call (a
dict of tensors, one row per image) and ``apply(x, params)`` applies them, so a
draw can be replayed and logged. ``__call__`` does both.

``differentiable`` attacks (kornia) are used in training and signing;
evaluation attacks run real codecs (PIL JPEG/WebP) and pass gradients
straight through where one is needed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

Params = dict[str, torch.Tensor]


class ImageAttack:
    """Base class. Shapes: ``x`` is B×3×H×W float in [0, 1]; output same B and C."""

    name: ClassVar[str] = "identity"
    differentiable: ClassVar[bool] = True

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Params:
        return {}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def uniform(lo: float, hi: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` draws from U(lo, hi) as a float32 CPU tensor."""
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def select_rows(params: Any, rows: torch.Tensor, batch_size: int) -> Any:
    """The part of a draw for ``batch_size`` images that belongs to the images ``rows``.

    Data-parallel training draws the parameters of the *global* batch from the generator
    every process shares and applies each process's rows to its shard, so that N processes
    see the draws one process would see for the whole batch. Every tensor whose first
    dimension is ``batch_size`` is indexed by ``rows``; kornia's ``forward_input_shape``
    gets the new batch size; anything else (per-call values: an order, a kernel size, a
    seed) is kept. Nested dicts (``EoTChain``, ``StochasticAugmentation``) are walked.

    Args:
        params: a draw of ``sample(batch_size, ...)``.
        rows: 1-D int64 indices into the batch.
        batch_size: the batch size the draw was for (>= 2, so a per-call tensor of
            length 1 is never mistaken for a row).

    Returns:
        The same structure with ``len(rows)`` rows.
    """
    if isinstance(params, dict):
        out = {k: select_rows(v, rows, batch_size) for k, v in params.items()}
        shape = out.get("forward_input_shape")
        if isinstance(shape, torch.Tensor) and shape.ndim == 1 and shape.numel() == 4:
            out["forward_input_shape"] = torch.cat([shape.new_tensor([len(rows)]), shape[1:]])
        return out
    if isinstance(params, torch.Tensor) and params.ndim >= 1 and params.shape[0] == batch_size:
        return params[rows.to(params.device)]
    return params
