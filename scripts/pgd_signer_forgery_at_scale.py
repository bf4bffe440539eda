"""pgd_signer's shipped (keyed) bundle against forgery over hundreds of targets (issue #17).

Usage (the model card's "Forgery at scale" table)::

    OMP_NUM_THREADS=1 nice -n 5 python scripts/pgd_signer_forgery_at_scale.py \\
        --targets 320 --sources 10 --mean-shift-minutes 20 --out /tmp/forgery.json

The attacker holds ``--sources`` held-out sample-test photos marked once under the victim's
key (and, generously, their clean originals) plus the public files. The targets are
``benchmark.forgery_targets`` (photo crops and procedural images under their own seed).
Runs the benchmark's own attacks (``forgery.copy_attack_rows``, ``estimation_forgery``'s
residual copy and mean shift) with separate targets: copy and residual copy on every target,
the costlier mean shift on chunks of targets until its time budget is spent. Writes the
rows (rates with their 95% intervals) to ``--out`` after every phase.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neuralmark.components.benchmark.estimation_forgery import (
    _rate_rows,
    mean_shift,
    residual_copy,
)
from neuralmark.components.benchmark.forgery import _detected, copy_attack_rows
from neuralmark.components.benchmark.forgery_targets import forgery_targets
from neuralmark.components.benchmark.victim_marks import heldout_photos, victim_marks
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.pgd_signer import PGDSigner
from neuralmark.components.metrics import psnr
from neuralmark.components.stats import clopper_pearson

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "components" / "pretrained" / "pgd_signer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=320)
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--mean-shift-minutes", type=float, default=20.0)
    ap.add_argument("--mean-shift-steps", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--skip-copy", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgd_signer_forgery_at_scale.json"))
    ap.add_argument("--cache", type=Path, default=None,
                    help="safetensors file keeping the marked sources between runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": []}

    def save(note: str) -> None:
        out["elapsed_s"] = round(time.time() - started, 1)
        args.out.write_text(json.dumps(out, indent=1))
        print(f"[{out['elapsed_s']:.0f} s] {note}", flush=True)

    m = PGDSigner.from_bundle(BUNDLE)
    clean = heldout_photos(ROOT / "data" / "sample", args.sources)
    key = WatermarkKey("victim-secret", 7)
    marked = victim_marks(m, key, clean, cache=args.cache).marked
    verdicts = m.verify(marked, key)
    budget = float(psnr(marked, clean).mean())
    out["sources"] = {"n": len(clean), "psnr": budget,
                      "bit_accuracy": sum(v.bit_accuracy for v in verdicts) / len(verdicts),
                      "detected": sum(v.detected for v in verdicts),
                      "other_key_detected": sum(v.detected for v in
                                                m.verify(marked, WatermarkKey("other", 7))),
                      "clean_detected": sum(v.detected for v in m.verify(clean, key))}
    photos = forgery_targets(args.targets, 256)
    targets = photos.images
    out["targets"] = {"n": len(targets),
                      "photo_crops": sum(n.startswith("crop:") for n in photos.names),
                      "procedural": sum(n.startswith("procedural:") for n in photos.names)}
    out["targets"]["clean_detected"] = sum(_detected(m.verify(targets, key)))
    save(f"sources marked {out['sources']}; targets {out['targets']}")
    base = {"method": "pgd_signer", "family": "neuralmark"}

    # residual copy on every target (cheap)
    forged = residual_copy(clean, marked, budget, args.sources, targets)
    rows = _rate_rows(m, forged, targets, key, {**base, "attack": "residual_copy",
                                                 "label": "residual_copy",
                                                 "strength": float(args.sources)},
                       args.sources, "mean (photo − median-3×3) residual, scaled, added")
    out["rows"] = rows
    save("residual copy: " + rows[0]["note"])

    if not args.skip_copy:
        t0 = time.time()
        rows += copy_attack_rows(m, clean, marked, key, base, targets=targets,
                                 batch_size=args.chunk)
        out["rows"] = rows
        out["copy_s"] = round(time.time() - t0, 1)
        save("copy: " + rows[-2]["note"])

    # mean shift on chunks until the budget is spent
    hits: list[bool] = []
    quality: list[float] = []
    t0 = time.time()
    for i in range(0, len(targets), args.chunk):
        if time.time() - t0 > args.mean_shift_minutes * 60:
            break
        goal = targets[i:i + args.chunk]
        with torch.enable_grad():
            f = mean_shift(m, clean, marked, budget, args.mean_shift_steps, args.sources, goal)
        with torch.no_grad():
            hits += _detected(m.verify(f, key))
        quality += psnr(f, goal).tolist()
        k, n = sum(hits), len(hits)
        lo, hi = clopper_pearson(k, n)
        out["mean_shift"] = {"k": k, "n": n, "ci": [lo, hi],
                             "psnr": sum(quality) / len(quality),
                             "steps": args.mean_shift_steps}
        save(f"mean shift {k}/{n} CI [{lo:.3f}, {hi:.3f}]")
    save("done")


if __name__ == "__main__":
    main()
