"""anti_forward ``stamp_mode`` "tiles": the seam at tile borders, abutting against blended tiles.

For each bundle (calibrated for tiles: ``train_shipped_anti_forward.py --recalibrate --set
stamp_mode=tiles``) and each ``tile_margin`` (0: abutting tiles, each stamped alone; > 0:
each tile stamped with that much context and blended across its borders), on the held-out
photo crops of ``anti_forward_invisibility.py`` at 256² and 512²: PSNR, the worst 32×32-block
PSNR, the seam ratio (``components.metrics.seam_energy_ratio``: stamp energy within 4 px of
a tile border over its energy elsewhere, 1 = no seam), and the fast rule's detections; once
per bundle, the clean images flagged (the scan path does not depend on the margin).

Usage::

    python scripts/anti_forward_tile_seams.py --bundle outputs/af_tiles/final --margins 0,16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from anti_forward_invisibility import chain_fpr, fpr_images, heldout_photos, measure  # noqa: E402

from neuralmark.components.methods import load_bundle  # noqa: E402
from neuralmark.components.metrics import seam_energy_ratio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _mean_min(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f} ({min(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, action="append", required=True,
                    help="a bundle calibrated with stamp_mode tiles (repeatable)")
    ap.add_argument("--margins", type=lambda t: [int(v) for v in t.split(",")], default=[0, 16])
    ap.add_argument("--data-root", type=Path, default=ROOT / "data")
    ap.add_argument("--limit", type=int, default=12, help="photos per size")
    ap.add_argument("--fpr-views", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    photos = {size: heldout_photos(args.data_root, size, args.limit)[0] for size in (256, 512)}
    fpr_clean = fpr_images(args.data_root)
    lines = ["| bundle | tile_margin | size | PSNR mean (min) dB | worst 32² block mean (min) dB "
             "| seam ratio mean (min–max) | stamped detected | clean flagged |",
             "|---|---|---|---|---|---|---|---|"]
    record: dict[str, object] = {}
    for path in args.bundle:
        base = load_bundle(path)
        if base.config.stamp_mode != "tiles":
            raise SystemExit(f"{path}: stamp_mode is {base.config.stamp_mode!r}; calibrate it "
                             "for tiles first (--recalibrate --set stamp_mode=tiles)")
        fp, trials = chain_fpr(base, fpr_clean, args.fpr_views)
        record[f"{path}/chain_fpr"] = [fp, trials]
        print(path, "chain FPR", fp, trials, flush=True)
        for margin in args.margins:
            m = base.with_config(tile_margin=margin)
            for size, clean in photos.items():
                r = measure(m, clean)
                seam = seam_energy_ratio(r["marked"], clean, m.config.working_size).tolist()
                row = {k: v for k, v in r.items() if k != "marked"} | {"seam_ratio": seam}
                record[f"{path}/{margin}/{size}"] = row
                lines.append(
                    f"| {path} | {margin} | {size}² | {_mean_min(r['psnr'])} | "
                    f"{_mean_min(r['worst_block_psnr'])} | {sum(seam) / len(seam):.3f} "
                    f"({min(seam):.3f}–{max(seam):.3f}) | {sum(r['detected'])}/{len(seam)} | "
                    f"{sum(r['clean_flagged'])}/{len(seam)} |")
                print(lines[-1], flush=True)
    lines += ["", f"Clean trials flagged (fast rule, the card's {fpr_clean.shape[0]} test images "
              f"at 256² as is and through {args.fpr_views} chain draws each): " + "; ".join(
                  f"{k.rsplit('/', 1)[0]} {v[0]}/{v[1]}" for k, v in record.items()
                  if k.endswith("/chain_fpr")) + f". {time.time() - start:.0f} s."]
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
