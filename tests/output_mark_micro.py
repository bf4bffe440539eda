"""The micro output_mark setup the seed-matrix and clean-twin tests share: the key, a
micro config (every network a few channels, a few steps), two matrix cells and synthetic
derain pairs (smooth images B and a brighter, streaked copy A)."""

from __future__ import annotations

import torch

from neuralmark.components.methods.base import WatermarkKey

KEY = WatermarkKey("neuralmark-eval")
MICRO = {"working_size": 32, "logo_block": 16, "model_width": 4, "model_depth": 2,
         "embed_width": 4, "embed_depth": 2, "extract_width": 4, "extract_blocks": 1,
         "disc_width": 4, "disc_layers": 2, "model_steps": 4, "steps": 8, "stage2_steps": 4,
         "batch_size": 4, "eval_batch": 32,
         "surrogate": {"width": 4, "depth": 2, "steps": 4, "batch_size": 4}}
CELLS = [("unet", "l2"), ("res9", "l2")]


def pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n×3×32×32 smooth random images (B) and a brighter, streaked copy (A)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32,
                                        mode="bilinear", align_corners=False)
    streaks = (torch.rand(n, 1, 32, 1, generator=g) > 0.8).float().expand(n, 1, 32, 32)
    return (b + 0.3 * streaks).clamp(0, 1), b


def micro_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """12 training and 6 test pairs (seeds 0 and 1)."""
    return {"train": pairs(12, 0), "test": pairs(6, 1)}
