"""The stopping rule of stages 1 and 2: keep the checkpoint that meets the release conditions.

Stage 1 is an adversarial game (H against D, H and R against the clean term) at a
high learning rate; where it stands at its last step is one draw. Over seeds 0–2 the
tiny derain run ended with B′ at 42.9 / 48.0 / 31.0 dB and 0 / 15.6 / 0% of clean
outputs flagged (MODEL_CARD.md, issue #19): the last step broke the release
conditions (B′ ≥ the target, no clean image read as marked) on two seeds of three.
The seed trains to a fixed schedule and says nothing about which iterate ships.

:class:`CheckpointSelector` scores H and R every ``config.select_every`` steps on
the **held-out part** (photos H and R never train on; the test pairs stay untouched):
PSNR of B′ against M's outputs, the share of B′ read as marked, and the share of
clean images (A, M(A), targets) read as marked. A checkpoint *qualifies* when its
PSNR ≥ ``config.psnr_target``, no clean image is read and at least
``config.select_min_read`` of B′ is; among those the one that reads the most marked
outputs wins, ties to the later step. With no qualifying checkpoint the last step is
kept and the metrics say so, unless ``config.select_fallback`` is ``fewest_clean``: then
the checkpoint with B′ ≥ the target and the read floor met that reads the fewest clean
images wins (ties: most read, then the later step), so B′ is never traded away.
Stage 2 (H frozen) selects R the same way, its rank adding
the share of the stage-2 surrogates' outputs on the held-out inputs that R reads, and
their clean counterparts' outputs counting as clean images. (Stage 2 with three
surrogates took seed 0's clean-output hits from 2% to 11% at its last step.)

Shapes: images are ``N×3×S×S`` in [0, 1] at the working size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from neuralmark.components.methods.base import Callbacks
from neuralmark.components.methods.output_mark.evaluation import extraction_nc, quality
from neuralmark.components.methods.output_mark.parts import OutputMarkParts


class CheckpointSelector:
    """Scores checkpoints on held-out pairs and keeps the best qualifying one.

    Args:
        method: whose networks are being trained.
        a: K×3×S×S held-out inputs.
        gt: K×3×S×S their targets.
        callbacks: each checkpoint's scores go to ``on_metrics`` as ``<prefix>_<name>``.
        step0: offset of the reported step numbers.
        nets: the networks a checkpoint holds (stage 1: H, R, D; stage 2: R).
        copies: stage 2: the stage-2 surrogates' outputs on ``a`` (J×3×S×S each); their
            read rate joins the rank (R should read the copies, not only B′).
        clean_copies: stage 2: the clean surrogates' outputs on ``a``; a hit on one is a
            clean hit.
        prefix: the metrics' prefix.
        before_score: called before each checkpoint is scored (``config.refresh_bn_stats``:
            recompute R's BatchNorm statistics, :func:`.loops.refresh_extractor_bn`), so the
            checkpoint is judged, and kept, as it will be served.
    """

    def __init__(self, method: OutputMarkParts, a: torch.Tensor, gt: torch.Tensor,
                 callbacks: Callbacks | Sequence[Any] = (), step0: int = 0,
                 nets: Sequence[str] = ("H", "R", "D"), copies: Sequence[torch.Tensor] = (),
                 clean_copies: Sequence[torch.Tensor] = (), prefix: str = "select",
                 before_score: Callable[[], Any] | None = None) -> None:
        self.method, self.a, self.gt = method, a, gt
        self.before_score = before_score
        self.callbacks, self.step0 = Callbacks.of(callbacks), step0
        self.nets, self.prefix = tuple(nets), prefix
        self.copies, self.clean_copies = list(copies), list(clean_copies)
        self.history: list[dict[str, float]] = []
        self.best: tuple[tuple[float, int], dict[str, Any]] | None = None
        #: ``select_fallback: fewest_clean``: the best checkpoint with B′ and read met
        self.fallback: tuple[tuple[float, float, int], dict[str, Any]] | None = None

    def _read(self, images: Sequence[torch.Tensor]) -> float:
        """Share of ``images`` (each N×3×S×S) R reads as marked."""
        m, logo = self.method, self.method.logo.cpu()
        hits = [m.hit_mask(extraction_nc(m.R, x, logo, m.config.eval_batch), x) for x in images]
        return float(torch.cat(hits).float().mean()) if hits else 0.0

    def __call__(self, step: int) -> dict[str, float]:
        """Score the current networks (after ``step`` steps); remember them if best so far."""
        c = self.method.config
        if self.before_score is not None:
            self.before_score()
        q = quality(self.method, self.a, self.gt)
        clean = max(q["fpr_clean_A"], q["fpr_clean_B"], q["fpr_clean_target"],
                    self._read(self.clean_copies))
        row = {"step": float(step), "psnr": q["psnr_marked"], "sr_marked": q["sr_marked"],
               "fpr_clean": clean, "sr_copies": self._read(self.copies) if self.copies else 0.0}
        visible_ok = row["psnr"] >= c.psnr_target and row["sr_marked"] >= c.select_min_read
        ok = visible_ok and clean == 0.0
        row["qualifies"] = float(ok)
        self.history.append(row)
        self.callbacks.on_metrics(self.step0 + step, {f"{self.prefix}_{k}": v
                                                      for k, v in row.items() if k != "step"})
        rank = (row["sr_marked"] + row["sr_copies"], step)
        if ok and (self.best is None or rank >= self.best[0]):
            self.best = (rank, self._states())
        fb_rank = (-clean, rank[0], step)
        if (visible_ok and c.select_fallback == "fewest_clean" and self.best is None
                and (self.fallback is None or fb_rank >= self.fallback[0])):
            self.fallback = (fb_rank, self._states())
        return row

    def _states(self) -> dict[str, Any]:
        """Copies of the current state of the checkpoint's networks."""
        return {k: copy.deepcopy(getattr(self.method, k).state_dict()) for k in self.nets}

    def restore(self) -> dict[str, float]:
        """Load the best qualifying checkpoint into H, R, D (if any); its metrics.

        Returns:
            ``selected_step`` (−1: none qualified, the last step stays),
            ``selected_psnr``, ``selected_sr_marked``, ``selected_sr_copies``,
            ``selected_fpr_clean``, ``checkpoints_scored``, ``checkpoints_qualified``,
            ``selected_fallback`` (1: no checkpoint qualified and the
            ``fewest_clean`` fallback was kept).
        """
        qualified = sum(int(r["qualifies"]) for r in self.history)
        out = {"checkpoints_scored": float(len(self.history)),
               "checkpoints_qualified": float(qualified), "selected_step": -1.0,
               "selected_fallback": 0.0}
        if self.best is not None:
            (_, step), states = self.best
        elif self.fallback is not None:
            (_, _, step), states = self.fallback
            out["selected_fallback"] = 1.0
        else:
            return out
        for name, state in states.items():
            getattr(self.method, name).load_state_dict(state)
        row = next(r for r in self.history if r["step"] == step)
        return {**out, "selected_step": float(step), "selected_psnr": row["psnr"],
                "selected_sr_marked": row["sr_marked"], "selected_sr_copies": row["sr_copies"],
                "selected_fpr_clean": row["fpr_clean"]}


__all__ = ["CheckpointSelector"]
