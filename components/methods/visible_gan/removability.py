"""Why a mark is (not) hard to remove: what part of it an attacker can learn to invert.

DeepStamp's claim (seed 003) is that a mark W synthesises from the image's content is
harder for a removal network V′ to learn than a fixed blend. A static alpha blend
``x′ = x + β·α·(c − x)`` is a per-pixel affine function of ``x`` and exactly invertible
by one: V′ only has to learn that inverse. W's mark is harder to remove only in so far as
its change of the image is (a) different from image to image and (b) not a simple
(local, linear) function of the marked pixels. Two figures measure those two, with no
network to train (seconds on a CPU):

* ``image_dependent_share``: of W's change relative to the static blend,
  ``Δ_i = deepstamp(x_i) − static(x_i)``, the share of its squared norm that is not the
  mean change ``E_i[Δ_i]`` (0: W adds the same pattern to every image, which is a
  different fixed mark, as easy to learn as the static one).
* ``local_linear_left``: the share of the mark's squared error
  (``Σ‖x′ − x‖²`` over the mark's square) that the best *local linear* inverse leaves on
  held-out images: for every pixel and channel, least squares of ``x`` on the 3×3×3
  neighbourhood of ``x′`` (+1), fitted on the training split. A static blend leaves ~0;
  what it leaves is the part of the mark a small V′ cannot get by learning a per-position
  linear filter. Written here (not taken from a library) because it is a plain batched
  ``torch.linalg.lstsq`` over pixel positions, nothing any attack library offers.

``left_error_map`` is the other side: where V′'s leftover error sits (mean over images of
``‖V′(x′) − x‖²`` per pixel), to set beside W's per-image variation map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from neuralmark.components.methods.visible_gan.mark import box_mask

__all__ = ["image_dependent_share", "left_error_map", "linear_inverse", "local_linear_left",
           "variation_map"]


def variation_map(static: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """Per-pixel variance over images of W's change ``Δ = marked − static``: ``1×1×S×S``.

    Args:
        static, marked: ``N×3×S×S`` static blends and DeepStamp marks of the same images.
    """
    delta = marked - static                                               # n 3 s s
    return delta.var(dim=0, unbiased=False).sum(0, keepdim=True)[None]    # 1 1 s s


def image_dependent_share(static: torch.Tensor, marked: torch.Tensor,
                          box: torch.Tensor) -> float:
    """Share of ``Σ_i‖Δ_i‖²`` (inside ``box``, ``1×1×S×S``) not explained by ``E_i[Δ_i]``.

    ``static``, ``marked``: ``N×3×S×S``. 0 when W's change is the same on every image.
    """
    delta = (marked - static) * box                                       # n 3 s s
    total = float((delta ** 2).sum())
    if total <= 0:
        return 0.0
    varying = delta - delta.mean(dim=0, keepdim=True)
    return float((varying ** 2).sum()) / total


def _patches(x: torch.Tensor) -> torch.Tensor:
    """``N×3×S×S`` → ``(S·S)×N×28``: each pixel's 3×3×3 neighbourhood and a constant."""
    n, _, s, _ = x.shape
    cols = F.unfold(x, kernel_size=3, padding=1)                          # n 27 s*s
    cols = torch.cat([cols, torch.ones(n, 1, s * s, dtype=x.dtype)], dim=1)  # n 28 s*s
    return cols.permute(2, 0, 1)                                          # s*s n 28


def linear_inverse(train: Mapping[str, torch.Tensor], marked: torch.Tensor,
                   mark_scale: float, ridge: float = 1e-4) -> torch.Tensor:
    """The best local linear inverse of a marking, fitted on ``train``, applied to ``marked``.

    Args:
        train: ``{"clean": N×3×S×S, "marked": N×3×S×S}`` pairs of one marking.
        marked: ``M×3×S×S`` images of the same marking to restore.
        mark_scale: the mark's square as a fraction of the side (only its pixels are fitted;
            outside it ``marked`` is returned unchanged).
        ridge: Tikhonov term of the normal equations (flat neighbourhoods are collinear).

    Returns:
        ``M×3×S×S`` in [0, 1]: per pixel and channel, least squares of the clean value on
        the 3×3×3 neighbourhood of the marked image (+1).
    """
    s = train["clean"].shape[-1]
    inside = box_mask(s, s, mark_scale).flatten().bool()                  # s*s
    a_tr = _patches(train["marked"].double())[inside]                     # p n 28
    a_te = _patches(marked.double())[inside]                              # p m 28
    gram = a_tr.transpose(1, 2) @ a_tr                                    # p 28 28
    gram = gram + ridge * a_tr.shape[1] * torch.eye(gram.shape[-1], dtype=gram.dtype)
    out = marked.detach().clone().double().flatten(2)                     # m 3 s*s
    for ch in range(3):
        y_tr = train["clean"][:, ch].double().flatten(1).T[inside]        # p n
        coef = torch.linalg.solve(gram, a_tr.transpose(1, 2) @ y_tr[..., None])  # p 28 1
        out[:, ch, inside] = (a_te @ coef)[..., 0].T.clamp(0, 1)          # m p
    return out.view_as(marked).to(marked.dtype)


def local_linear_left(train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor],
                      mark_scale: float, ridge: float = 1e-4) -> float:
    """Share of the mark's squared error the best local linear inverse leaves (held out).

    Args:
        train, test: ``{"clean": N×3×S×S, "marked": N×3×S×S}`` (the same marking).
        mark_scale, ridge: as in :func:`linear_inverse`.

    Returns:
        ``Σ‖x̂ − x‖² / Σ‖x′ − x‖²`` on ``test`` (0: a linear filter per pixel removes the
        mark; 1: it removes nothing).
    """
    restored = linear_inverse(train, test["marked"], mark_scale, ridge)
    left = float(((restored.double() - test["clean"].double()) ** 2).sum())
    before = float(((test["marked"].double() - test["clean"].double()) ** 2).sum())
    return left / max(before, 1e-12)


def left_error_map(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Where V′'s error stays: mean over images of ``‖V′(x′) − x‖²`` per pixel, ``1×1×S×S``."""
    return ((restored - clean) ** 2).sum(1, keepdim=True).mean(0, keepdim=True)
