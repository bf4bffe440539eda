"""anti_forward: which augmentation of the training chain makes clean images score "stamped".

A scanner's calibrated threshold is set by the tail of its clean scores, which are made of
clean images and their views through the full-strength training chain. For each bundle
(its own ``stamp_mode`` and calibration) and each augmentation of the chain alone (applied
with p = 1 at full strength), and the whole chain for reference, on the card's 72 clean
test images at 256², ``--views`` draws each: the share of clean views scoring above a
level (``--level``, default: the bundle's calibrated threshold; ``--level`` takes
numbers too, e.g. the stamped photos' median score) and the largest score.

Usage::

    python scripts/anti_forward_tail_by_augmentation.py outputs/af_grid/final --level 4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from anti_forward_invisibility import fpr_images  # noqa: E402

from neuralmark.components.attacks.stochastic import NAMES, StochasticAugmentation  # noqa: E402
from neuralmark.components.methods import load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--views", type=int, default=2, help="draws per image and augmentation")
    ap.add_argument("--level", type=float, action="append", default=[],
                    help="score levels to count views above (besides the threshold)")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    clean = fpr_images(args.data_root)
    lines = []
    for path in args.bundles:
        m = load_bundle(path).with_config(smoothing=False)
        levels = [m.calibration["threshold_statistic"], *args.level]
        lines += [f"`{path}` ({m.config.stamp_mode}; threshold {levels[0]:.2f} at "
                  f"{m.config.fpr:g}), {clean.shape[0]} clean images × {args.views} views:", "",
                  "| augmentation (alone, p = 1) | "
                  + " | ".join(f"share > {v:.2f}" for v in levels) + " | max score |",
                  "|---|" + "---|" * (len(levels) + 1)]
        for name in (*NAMES, "whole chain"):
            aug = (m.config.aug if name == "whole chain"
                   else m.config.aug.model_copy(update={"enabled": (name,), "p": 1.0}))
            chain = StochasticAugmentation(aug, 1.0)
            g = torch.Generator().manual_seed(11)
            with torch.no_grad():
                scores = torch.cat([m.scan_statistic(chain(clean, g))
                                    for _ in range(args.views)])
            lines.append(f"| {name} | " + " | ".join(
                f"{float((scores > v).float().mean()):.3f}" for v in levels)
                + f" | {float(scores.max()):.2f} |")
            print(lines[-1], flush=True)
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
