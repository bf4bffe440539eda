"""anti_forward: where stamped held-out photos score against a bundle's clean calibration.

For each bundle (its own ``stamp_mode`` and calibration), on the held-out photo crops of
``anti_forward_invisibility.py`` at 256² and 512²: the scan statistic of each stamped and
clean photo, and the empirical p-value of the stamped ones among the calibration's clean
scores, i.e. the false-positive rate a threshold would have to accept to detect them. It
says how far a scanner is from its calibrated level when it detects nothing there.

Usage::

    python scripts/anti_forward_tile_scores.py outputs/af_ship_tiles/final outputs/af_grid/final
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from anti_forward_invisibility import heldout_photos  # noqa: E402

from neuralmark.components.methods import load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _quantiles(values: list[float]) -> str:
    t = torch.tensor(values)
    q = torch.quantile(t, torch.tensor([0.0, 0.5, 1.0])).tolist()
    return f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data-root", type=Path, default=ROOT / "data")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    photos = {size: heldout_photos(args.data_root, size, args.limit)[0] for size in (256, 512)}
    lines = ["| bundle | size | threshold (fpr) | stamped score min / median / max | clean score "
             "min / median / max | p-value of the stamped: median (max) |",
             "|---|---|---|---|---|---|"]
    record = {}
    for path in args.bundles:
        m = load_bundle(path).with_config(smoothing=False)
        for size, clean in photos.items():
            with torch.no_grad():
                stamped = m.scan_statistic(m.embed(clean, None, batch_size=8)).tolist()
                plain = m.scan_statistic(clean).tolist()
            p = sorted(m.p_value(s) for s in stamped)
            record[f"{path}/{size}"] = {"stamped": stamped, "clean": plain, "p_values": p}
            thr = m.calibration.get("threshold_statistic")
            lines.append(f"| `{path}` ({m.config.stamp_mode}) | {size}² | "
                         f"{'–' if thr is None else f'{thr:.2f}'} ({m.config.fpr:g}) | "
                         f"{_quantiles(stamped)} | {_quantiles(plain)} | "
                         f"{p[len(p) // 2]:.2e} ({p[-1]:.2e}) |")
            print(lines[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
