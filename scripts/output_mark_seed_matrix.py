"""The output_mark surrogate matrix over several seeds, without the pipeline (issue #19).

Builds the profile's derain pairs exactly as the pipeline's ``make_pairs`` step does,
then runs ``output_mark.seeds.seed_matrix_rows`` for each seed (M, stage 1, stage 2 and
every cell, one torch thread, deterministic algorithms; the rows so far are written
after each seed) and prints the matrix as
mean [95% t-interval] (per seed). What ``neuralmark protect --seeds`` logs to MLflow,
minus the ZenML/MLflow bookkeeping, for experiments on a loaded machine::

    OMP_NUM_THREADS=1 python scripts/output_mark_seed_matrix.py --seeds 0 1 2 \
        --config '{"stage2_steps": 600}' --out runs/om-seeds.json

``--config`` / ``--surrogate`` are JSON overrides of the profile's output_mark config
and of the attacker cells' schedule; ``--profile`` is a profile name or a profile YAML.
One seed gives that seed's rows (no spread); two or more add the spread.

The attacker at the theft bar (issue #19, om12): ``--surrogate '{"steps_by_arch": {"cnet":
2400, "unet": 1200}}'`` gives each arch its own budget (others keep ``steps``);
``--twins`` trains each cell's clean twin (the same attacker on the unmarked M's outputs)
and reports its flag rate (``clean_twin_<cell>`` false-positive rows, with the exact 95%
Clopper–Pearson interval over the test outputs); ``--attacker-quality`` adds each cell's
fidelity to B′ and task PSNR (stage ``attacker``); ``--theft-bar`` trains each cell's attacker
on to twice its budget in the same run (the cell's outputs stay the budget's) and adds per cell
``bar_fidelity_gain_db``, ``bar_task_margin_db`` and ``met_theft_bar`` (1: the om10 bar met —
doubling adds < 0.5 dB of fidelity to B′ and it derains within 1 dB of the service).

The key: by default the profile's ``evaluation.key_secret`` (``neuralmark-eval``), the
key ``neuralmark protect --seeds`` trains and scores with, so these rows are the
pipeline's (and the sixth to om10 sessions' figures in the method card used it).
``scripts/train_shipped_output_mark.py`` trains the shipped demo model with the demo key
``neuralmark-demo``; the key picks the logo H hides, so the two scripts' figures for one
seed differ unless ``--key neuralmark-demo`` is passed here: with the same key, seed,
profile and config the two give the same stage-1 and stage-2 models and matrix cells
(``tests/test_output_mark_recipe.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neuralmark.components.attacks.surrogate import matrix_cells
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark.seeds import (
    TRAINING,
    seed_matrix_record,
    seed_matrix_rows,
    spread_markdown,
    spread_summary,
)
from neuralmark.components.stats import clopper_pearson
from neuralmark.runtime.output_mark_study import derain_study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--profile", default="tiny", help="a profile name or a profile YAML")
    p.add_argument("--key", default=None,
                   help="the owner's key (default: the profile's evaluation.key_secret)")
    p.add_argument("--config", default="{}", help="JSON overrides of the output_mark config")
    p.add_argument("--surrogate", default="{}", help="JSON overrides of the cells' schedule")
    p.add_argument("--cells", default=None, help='JSON [[arch, loss], ...] (default: nine)')
    p.add_argument("--out", type=Path, required=True, help="JSON file for rows and summary")
    p.add_argument("--bundles", type=Path, default=None,
                   help="save each seed's stage-2 model as the bundle BUNDLES/seed<N>")
    p.add_argument("--twins", action="store_true",
                   help="train each cell's clean twin (false positives on innocent copies)")
    p.add_argument("--attacker-quality", action="store_true",
                   help="rows of each cell's fidelity to B' and task PSNR")
    p.add_argument("--theft-bar", action="store_true",
                   help="train each attacker on to twice its budget and judge each cell "
                        "against the om10 theft bar (met_theft_bar rows; doubles its time)")
    args = p.parse_args(argv)

    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"repeated seed in {args.seeds}")
    study = derain_study(args.profile, json.loads(args.config))
    settings, train, groups, test = study.settings, study.train, study.groups, study.test
    cells = matrix_cells(json.loads(args.cells) if args.cells else None)
    key = WatermarkKey(args.key or settings.evaluation.key_secret)
    start = time.time()
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # the rows so far are written after each seed: a cut run keeps them
        rows += seed_matrix_rows(seed, train, test, settings.config, cells, key, groups,
                                 json.loads(args.surrogate), manifest=str(study.manifest),
                                 bundle_dir=args.bundles, twins=args.twins,
                                 attacker_quality=args.attacker_quality,
                                 theft_bar=args.theft_bar)
        args.out.write_text(json.dumps(seed_matrix_record(
            rows, settings.config, key, sys.argv, time.time() - start), indent=1))
        print(f"seed {seed} done, {time.time() - start:.0f} s", flush=True)
    if len(args.seeds) == 1:  # one seed: its rows, no spread (a spread needs two)
        for r in rows:
            if r["metric"] in ("success_rate", "psnr_marked", "sr_marked", "fpr_clean_B") \
                    or r["label"] == TRAINING or r["stage"] == "attacker":
                print(f"{r['stage']} {r['label']} {r['metric']}: {r['value']:.3f}")
            elif r["metric"] == "false_positive_rate":
                k, n = round(r["value"] * r["n"]), int(r["n"])
                lo, hi = clopper_pearson(k, n)
                print(f"{r['stage']} {r['label']} flagged {k}/{n} "
                      f"[{100 * lo:.1f}, {100 * hi:.1f}]%")
        print(f"{time.time() - start:.0f} s")
        return 0
    summary = spread_summary(rows)
    markdown = spread_markdown(summary)
    args.out.write_text(json.dumps(seed_matrix_record(
        rows, settings.config, key, sys.argv, time.time() - start, summary), indent=1))
    print(markdown)
    for s in summary:
        if s["label"] == TRAINING or s["label"] == "none" and s["metric"] in (
                "psnr_marked", "sr_marked", "fpr_clean_B"):
            print(f"{s['stage']} {s['metric']}: {s['mean']:.3f} [{s['ci_low']:.3f}, "
                  f"{s['ci_high']:.3f}] {[round(v, 3) for v in s['values']]}")
    print(f"{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
