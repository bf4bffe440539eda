"""Assemble ``accuracy_study.json`` (the card's accuracy section) from measured seed runs.

Reads, per recipe, the folder ``visible_gan_seed_spread.py --set utility_steps=N`` wrote
(``--summarize`` already run: its ``summary.json``; every recipe after the first summarized
with ``--baseline`` the first one's folder, so it carries the paired
``accuracy_drop_vs_baseline``), adds the seed's own Table I rows for comparison, the decision
rule as it was stated before the runs, and the command and load. The card's
``accuracy_section`` (``components/methods/visible_gan/card.py``) reads it.

Usage::

    python scripts/visible_gan_accuracy_study.py --recipe "tiny recipe=runs/vg_acc_base" \\
        --recipe "V schedule=runs/vg_acc_vsched" --command "..." --note "..." \\
        --rule "..." --out components/pretrained/visible_gan/accuracy_study.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neuralmark.components.methods.visible_gan.card import SEED_TABLE
from neuralmark.components.methods.visible_gan.config import VisibleGanConfig

#: the config fields a recipe may change from the first one (listed as its ``--set``)
LEVERS = ("removal_warmup_steps", "v_updates_per_step", "lambda_v", "lambda_d", "lambda_f",
          "max_delta", "lambda_visibility")


def recipe_entry(name: str, folder: Path, first: Path | None) -> dict:
    """One recipe: its summary and the levers it sets (none for the first, the baseline)."""
    summary = json.loads((folder / "summary.json").read_text())
    if first is not None and (summary.get("baseline") is None
                              or Path(summary["baseline"]).resolve() != first.resolve()):
        raise SystemExit(f"{folder}: summarize it with --baseline {first} first (its summary "
                         f"has baseline {summary.get('baseline')!r})")
    if not any(r["metric"] == "accuracy_drop" for r in summary["judged"]):
        raise SystemExit(f"{folder}: no accuracy_drop in its summary (run the seeds with "
                         "--set utility_steps=N)")
    sets = [f"{k}={v}" for k, v in sorted(summary["recipe"].items())
            if k in LEVERS and v != VisibleGanConfig.model_fields[k].default]
    return {"name": name, "folder": str(folder), "sets": sets, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME=FOLDER",
                    help="the first is the baseline the others were summarized against")
    ap.add_argument("--command", required=True, help="the seed runs' command, one line")
    ap.add_argument("--note", required=True, help="what F′ is, the load, the wall times")
    ap.add_argument("--rule", required=True, help="the decision rule, as stated before")
    ap.add_argument("--test-images", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    recipes, first = [], None
    for item in args.recipe:
        name, _, folder = item.partition("=")
        recipes.append(recipe_entry(name, Path(folder), first))
        first = first or Path(folder)
    args.out.write_text(json.dumps({"command": args.command, "note": args.note,
                                    "rule": args.rule, "test_images": args.test_images,
                                    "seed_reports": SEED_TABLE, "recipes": recipes}, indent=1))
    print(f"wrote {args.out}: {len(recipes)} recipes")


if __name__ == "__main__":
    main()
