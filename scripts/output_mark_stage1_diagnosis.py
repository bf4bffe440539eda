"""Stage 1 of output_mark alone, per seed, with its training curves (issue #19, om14).

Trains M and stage 1 (H, R, D) for each seed exactly as ``output_mark_seed_matrix.py``
does (same profile, pairs, key, clean images and config; one torch thread), records every
metric the loop and the stopping rule report (losses, ``h_grad_norm`` / ``r_grad_norm``,
the learning rate, the held-out checkpoints' B′ dB / read / clean hits), and scores the
shipped stage-1 model on the test pairs (Table 1: B′ dB, read, clean B / A / targets
flagged). The cheap part of the seed matrix: no stage 2, no surrogate::

    OMP_NUM_THREADS=1 python scripts/output_mark_stage1_diagnosis.py --seeds 0 1 2 \
        --config '{"stage2_archs": ["unet", "res9", "cnet"], "select_every": 50, \
        "resize_roundtrip": 0.5, "clean_variety": true, "select_fallback": "fewest_clean", \
        "log_every": 10}' --out runs/om14/base.json

``--config`` is a JSON override of the profile's output_mark config; ``--key`` the owner's
key (default: the profile's ``evaluation.key_secret``, as the seed matrix).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from neuralmark.components.environment import environment
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark.evaluation import quality
from neuralmark.components.methods.output_mark.loops import refresh_extractor_bn
from neuralmark.components.methods.output_mark.seeds import seeded_config
from neuralmark.components.methods.output_mark.training import (
    clean_variety_images,
    stage1_method,
    training_pairs,
)
from neuralmark.components.metrics import normalized_correlation
from neuralmark.components.reproducibility import pinned
from neuralmark.runtime.output_mark_study import derain_study


class Recorder:
    """Keeps every ``on_metrics`` call as ``{"step": …, **metrics}``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": float(step), **{k: float(v) for k, v in metrics.items()}})


def curve_lines(rows: list[dict[str, float]]) -> list[str]:
    """One line per logged training step and per held-out checkpoint."""
    lines = []
    for r in rows:
        if "h_mse" in r:
            db = -10 * math.log10(max(r["h_mse"], 1e-12))
            lines.append(
                f"  step {r['step']:5.0f} train B' {db:5.1f} dB  r_wm {r['r_wm']:.4f} "
                f"r_clean {r['r_clean']:.4f} d {r['d_loss']:.3f} adv {r['h_adv']:.2f} "
                f"|gH| {r.get('h_grad_norm', float('nan')):.3f} "
                f"|gR| {r.get('r_grad_norm', float('nan')):.3f} lr {r.get('stage1_lr', 0):.1e}")
        elif "select_psnr" in r:
            lines.append(f"  step {r['step']:5.0f} HELD-OUT B' {r['select_psnr']:5.1f} dB  "
                         f"read {100 * r['select_sr_marked']:5.1f}%  clean hit "
                         f"{100 * r['select_fpr_clean']:5.1f}%  qualifies "
                         f"{int(r['select_qualifies'])}")
    return lines


@torch.no_grad()
def batch_statistics_read(method, a: torch.Tensor) -> dict[str, float]:
    """Table 1's read and clean hits with R's BatchNorm on *batch* statistics, as in training.

    R (a copy; the method is untouched) runs in train mode on one batch of the marked
    outputs B′ and M's clean outputs B of ``a`` (N×3×S×S) together, half and half as stage
    1's batches are; H and M run in eval mode as the service does. Far above the eval-mode
    read, it says R's running statistics, not R's weights, are what fails to read.
    """
    r = copy.deepcopy(method.R).train()
    marked, clean = method.marked_outputs(a), method.model_outputs(a)
    logo = method.logo.cpu()
    out = r(torch.cat([marked, clean]).to(method.device)).cpu()
    ncs = normalized_correlation(out, logo[None])
    n = marked.shape[0]
    # each set alone in its batch (om15): a read that needs the clean half beside the
    # marked half is R using the batch's contrast, which no served (per-image) R has
    alone_m = normalized_correlation(r(marked.to(method.device)).cpu(), logo[None])
    alone_c = normalized_correlation(r(clean.to(method.device)).cpu(), logo[None])
    return {"bs_sr_marked": float(method.hit_mask(ncs[:n], marked).float().mean()),
            "bs_fpr_clean_B": float(method.hit_mask(ncs[n:], clean).float().mean()),
            "bs_nc_marked": float(ncs[:n].mean()),
            "bs_alone_sr_marked": float(method.hit_mask(alone_m, marked).float().mean()),
            "bs_alone_fpr_clean_B": float(method.hit_mask(alone_c, clean).float().mean())}


def refreshed_read(method, train_pairs, clean, a: torch.Tensor, gt: torch.Tensor
                   ) -> dict[str, float]:
    """Table 1 on ``a``/``gt`` with R's BatchNorm statistics recomputed (a copy; om15).

    The copy's R gets :func:`refresh_extractor_bn` on the H/R part's stage-1 batches (B′ and
    the mixed clean rows, as ``config.refresh_bn_stats`` does), then the eval-mode Table 1,
    so one trained model shows eval mode as stored, batch statistics and refreshed
    statistics side by side. Keys ``rf_<Table-1 key>``.
    """
    m = copy.deepcopy(method)
    tp = training_pairs(m, train_pairs, clean=clean)
    b = m.model_outputs(tp.a)
    refresh_extractor_bn(m, tp.a[tp.hr], b[tp.hr], tp.gt[tp.hr], clean_bank=tp.clean_bank)
    return {f"rf_{k}": v for k, v in quality(m, a, gt).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--profile", default="tiny")
    p.add_argument("--key", default=None)
    p.add_argument("--config", default="{}", help="JSON overrides of the output_mark config")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quiet", action="store_true", help="print no curves, only the summary")
    p.add_argument("--bundles", type=Path, default=None,
                   help="save each seed's stage-1 model as the bundle DIR/seed<seed>")
    args = p.parse_args(argv)

    study = derain_study(args.profile, json.loads(args.config))
    key = WatermarkKey(args.key or study.settings.evaluation.key_secret)
    start = time.time()
    record: dict = {"argv": sys.argv, "key": key.secret, "environment": environment(),
                    "config": study.settings.config.model_dump(mode="json"), "seeds": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        t0 = time.time()
        cfg = seeded_config(study.settings.config, seed)
        rec = Recorder()
        with pinned(cfg.seed, cfg.cpu_threads):
            clean = clean_variety_images(cfg, str(study.manifest))
            method, metrics = stage1_method(study.train, cfg, key, [rec], study.groups,
                                            clean=clean)
            ta, tgt = method.working_pairs(study.test, "test pairs")
            test = quality(method, ta, tgt)
            test.update(batch_statistics_read(method, ta))
            test.update(refreshed_read(method, study.train, clean, ta, tgt))
        if args.bundles is not None:
            method.to_bundle(args.bundles / f"seed{seed}")
        record["seeds"][str(seed)] = {"history": rec.rows, "metrics": metrics, "test": test,
                                      "seconds": time.time() - t0}
        args.out.write_text(json.dumps(record, indent=1))
        if not args.quiet:
            print(f"seed {seed}:")
            print("\n".join(curve_lines(rec.rows)))
        print(f"seed {seed}: test B' {test['psnr_marked']:.2f} dB, read "
              f"{100 * test['sr_marked']:.1f}%, clean B / A / target flagged "
              f"{100 * test['fpr_clean_B']:.1f} / {100 * test['fpr_clean_A']:.1f} / "
              f"{100 * test['fpr_clean_target']:.1f}%; selected step "
              f"{metrics.get('selected_step', -1):.0f} (fallback "
              f"{metrics.get('selected_fallback', 0):.0f}, qualified "
              f"{metrics.get('checkpoints_qualified', 0):.0f}/"
              f"{metrics.get('checkpoints_scored', 0):.0f}); with R on batch statistics: "
              f"read {100 * test['bs_sr_marked']:.1f}%, clean B flagged "
              f"{100 * test['bs_fpr_clean_B']:.1f}% (each alone in its batch: read "
              f"{100 * test['bs_alone_sr_marked']:.1f}%, clean B flagged "
              f"{100 * test['bs_alone_fpr_clean_B']:.1f}%); with R's statistics recomputed: read "
              f"{100 * test['rf_sr_marked']:.1f}%, clean B / A / target flagged "
              f"{100 * test['rf_fpr_clean_B']:.1f} / {100 * test['rf_fpr_clean_A']:.1f} / "
              f"{100 * test['rf_fpr_clean_target']:.1f}%; {time.time() - t0:.0f} s",
              flush=True)
    print(f"{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
