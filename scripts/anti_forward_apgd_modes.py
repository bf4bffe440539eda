"""anti_forward: white-box APGD at 8/255 against each ``stamp_mode``, through the deployed view.

For each (stamp mode, bundle) given: the held-out photo crops of
``anti_forward_invisibility.py`` at 256², stamped in that mode; APGD (L∞, ε = 8/255,
``torchattacks``) on the plain scanner as that mode reads images (``scanner_logits``:
``to_grid`` then the logits averaged over the working-size tiles), removal on the stamped
images and forgery on the clean ones; each image judged before and after by the smoothed
classifier (Cohen, ``--smoothing-n`` noise draws on the grid) and by ``verify`` (the bundle's
deployed rule: the calibrated scan statistic, then certification), as the card's table for
stretch mode. The bundle gives the calibration: for tiles and conv, one re-calibrated on
tile grids (the scan path, and so its calibration, is the same for both). Writes the card
section between its markers (``--card``), else prints it.

Usage::

    python scripts/anti_forward_apgd_modes.py --mode stretch=components/pretrained/anti_forward \\
        --mode tiles=outputs/af_ship_tiles/final --mode conv=outputs/af_ship_tiles/final \\
        [--images 6] [--card components/pretrained/anti_forward]
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
from anti_forward_invisibility import heldout_photos, replace_section  # noqa: E402

from neuralmark.components.adversarial_evaluation import adversarial_rows  # noqa: E402
from neuralmark.components.evaluation import summarize  # noqa: E402
from neuralmark.components.methods import load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN anti_forward apgd modes -->", "<!-- END anti_forward apgd modes -->"


def measure(path: Path, mode: str, clean: torch.Tensor, steps: int, smoothing_n: int,
            attacks: tuple[str, ...], eot_iter: int) -> dict:
    """Summarized adversarial rows of one bundle in one stamp mode (n stamped + n clean)."""
    method = load_bundle(path).with_config(stamp_mode=mode, n=smoothing_n)
    with torch.no_grad():
        marked = method.embed(clean, None, batch_size=8)
    rows = adversarial_rows(method, marked, clean, attacks=attacks, steps=steps,
                            eot_iter=eot_iter, smoothing_n=smoothing_n, also_verify=True,
                            batch_size=clean.shape[0], seed=0)
    return summarize(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", action="append", required=True, metavar="MODE=PATH",
                    help="a stamp mode and the bundle (calibrated for it) to attack")
    ap.add_argument("--images", type=int, default=6, help="photos per side (stamped, clean)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--smoothing-n", type=int, default=128,
                    help="noise draws of the smoothed decision (and of verify's certificate)")
    ap.add_argument("--eot", type=int, default=0,
                    help="> 0: also APGD-EoT with this many noise draws per step")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data")
    ap.add_argument("--card", type=Path, default=None, help="card folder to write into")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clean, _ = heldout_photos(args.data_root, 256, args.images)
    n = clean.shape[0]
    attacks = ("apgd",) + (("apgd_eot",) if args.eot else ())
    start = time.time()
    results = {}
    for text in args.mode:
        mode, _, path = text.partition("=")
        t0 = time.time()
        results[text] = measure(Path(path), mode, clean, args.steps, args.smoothing_n,
                                attacks, args.eot)
        print(mode, path, f"{time.time() - t0:.0f} s", json.dumps(results[text]), flush=True)

    def cell(summary: dict, metric: str) -> str:
        v = summary.get(metric)
        return "–" if v is None else f"{round(v * n)}/{n}"

    lines = [BEGIN, "## APGD by stamp mode (`scripts/anti_forward_apgd_modes.py`)", "",
             f"{n} held-out photo crops at 256² (the invisibility table's first {n}), stamped "
             f"in each mode, + the same {n} clean; ε = 8/255 L∞, APGD {args.steps} steps on "
             "the plain scanner as the mode reads images (`to_grid`, logits averaged over "
             "the 128² tiles)" + (f", APGD-EoT {args.steps} steps × {args.eot} noise draws "
                                  "on the grid" if args.eot else "")
             + f". Judged by the smoothed classifier (Cohen, n = {args.smoothing_n}) and by "
             f"`verify` (calibrated statistic, then certification with n = "
             f"{args.smoothing_n}), each with the calibration of the row's bundle. "
             f"{time.time() - start:.0f} s on the shared 2-core CPU.", "",
             "| stamp mode | bundle | attack | stamped still detected (smoothed / verify) | "
             "clean forged to \"stamped\" (smoothed / verify) |", "|---|---|---|---|---|"]
    for text, s in results.items():
        mode, _, path = text.partition("=")
        lines.append(f"| {mode} | `{path}` | none | "
                     f"{cell(s, 'detection_rate_unattacked/none')} / "
                     f"{cell(s, 'detection_rate_unattacked_verify/none')} | "
                     f"{cell(s, 'false_positive_rate_unattacked/none')} / "
                     f"{cell(s, 'false_positive_rate_unattacked_verify/none')} |")
        for attack in attacks:
            lab = f"{attack}_linf_8"
            lines.append(
                f"| {mode} | `{path}` | {attack} | "
                f"{cell(s, f'detection_rate_adversarial/{lab}')} / "
                f"{cell(s, f'detection_rate_adversarial_verify/{lab}')} | "
                f"{cell(s, f'false_positive_rate_adversarial/{lab}')} / "
                f"{cell(s, f'false_positive_rate_adversarial_verify/{lab}')} |")
    lines.append(END)
    if args.card:
        replace_section(args.card / "MODEL_CARD.md", lines, BEGIN, END)
        (args.card / "apgd_modes.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
