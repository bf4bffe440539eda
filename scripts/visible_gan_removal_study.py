"""Assemble ``removal_study.json`` (the card's removal study) from measured outputs.

Reads ``visible_gan_removability.py``'s JSON for the shipped bundle and, per lever, the
folder ``visible_gan_seed_spread.py`` wrote (``--summarize --baseline BASE`` already run:
its ``summary.json``); adds, over every W in those folders that has both, the correlation
between what the best local linear inverse leaves of W's mark (``local_linear_left``) and
how much more of it V′ leaves than of the static mark (``removal_left_vs_static``): whether
the W's that resist V′ are the ones whose mark is not a local linear function of the image.

Usage::

    python scripts/visible_gan_removal_study.py --removability runs/removability.json \\
        --lever "baseline W=runs/vg_base" --lever "V schedule=runs/vg_vsched" \\
        --note "..." --out components/pretrained/visible_gan/removal_study.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuralmark.components.methods.visible_gan.config import VisibleGanConfig

#: the config fields a lever run may change (listed in the card when not the default)
LEVERS = ("removal_warmup_steps", "v_updates_per_step", "lambda_v", "lambda_d", "lambda_f",
          "max_delta", "lambda_visibility")


def seed_figures(folder: Path, base: Path | None) -> list[dict[str, float]]:
    """Per seed file: ``local_linear_left`` and ``removal_left_vs_static`` of DeepStamp."""
    out = []
    for path in sorted(folder.glob("seed_*.json")):
        run = json.loads(path.read_text())
        rows = {(r["label"], r["metric"]): r["value"] for r in run["rows"]}
        static = rows.get(("static", "removal_left"))
        if static is None and base is not None:
            other = json.loads((base / path.name).read_text())
            static = {(r["label"], r["metric"]): r["value"]
                      for r in other["rows"]}[("static", "removal_left")]
        linear = rows.get(("deepstamp", "local_linear_left"))
        if linear is not None and static is not None:
            out.append({"folder": str(folder), "seed": run["seed"], "local_linear_left": linear,
                        "image_dependent_share": rows[("deepstamp", "image_dependent_share")],
                        "removal_left_vs_static": rows[("deepstamp", "removal_left")] - static})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--removability", type=Path, required=True)
    ap.add_argument("--removability-command", required=True)
    ap.add_argument("--lever", action="append", default=[], metavar="NAME=FOLDER")
    ap.add_argument("--note", required=True, help="the levers' commands and load, one line")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    levers, points, base = [], [], None
    for item in args.lever:
        name, _, folder = item.partition("=")
        folder = Path(folder)
        summary = json.loads((folder / "summary.json").read_text())
        sets = [] if summary.get("baseline") is None else [
            f"{k}={v}" for k, v in sorted(summary["recipe"].items())
            if k in LEVERS and v != VisibleGanConfig.model_fields[k].default]
        if summary.get("baseline") is None:
            base = folder
        levers.append({"name": name, "folder": str(folder), "sets": sets, "summary": summary})
        points += seed_figures(folder, base)
    corr = {}
    if len(points) >= 3:
        for key in ("local_linear_left", "image_dependent_share"):
            x = torch.tensor([[p[key] for p in points],
                              [p["removal_left_vs_static"] for p in points]])
            corr[key] = float(torch.corrcoef(x)[0, 1])
    removability = json.loads(args.removability.read_text())
    removability["command"] = args.removability_command
    args.out.write_text(json.dumps({"removability": removability, "levers": levers,
                                    "levers_note": args.note, "per_w": points,
                                    "corr_with_removal_left_vs_static": corr}, indent=1))
    print(json.dumps({"n_w": len(points), "corr": corr}, indent=1))


if __name__ == "__main__":
    main()
