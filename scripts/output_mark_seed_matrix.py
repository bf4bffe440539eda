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
and of the attacker cells' schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neuralmark.components.attacks.surrogate import matrix_cells
from neuralmark.components.data import pairs
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark.seeds import (
    seed_matrix_rows,
    spread_markdown,
    spread_summary,
)
from neuralmark.runtime.settings import CODE_ROOT, resolve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--profile", default="tiny")
    p.add_argument("--config", default="{}", help="JSON overrides of the output_mark config")
    p.add_argument("--surrogate", default="{}", help="JSON overrides of the cells' schedule")
    p.add_argument("--cells", default=None, help='JSON [[arch, loss], ...] (default: nine)')
    p.add_argument("--out", type=Path, required=True, help="JSON file for rows and summary")
    p.add_argument("--bundles", type=Path, default=None,
                   help="save each seed's stage-2 model as the bundle BUNDLES/seed<N>")
    args = p.parse_args(argv)

    overrides = {**json.loads(args.config), "task": "derain"}
    settings = resolve("output_mark", args.profile, config=overrides)
    manifest = settings.data.build(CODE_ROOT)
    size = settings.data.size
    train, groups, test = pairs.synthesised_pairs(manifest, "derain", size)
    cells = matrix_cells(json.loads(args.cells) if args.cells else None)
    key = WatermarkKey(settings.evaluation.key_secret)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        p.error(f"a seed spread needs at least two distinct seeds, got {args.seeds}")
    start = time.time()
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # the rows so far are written after each seed: a cut run keeps them
        rows += seed_matrix_rows(seed, train, test, settings.config, cells, key, groups,
                                 json.loads(args.surrogate), manifest=str(manifest),
                                 bundle_dir=args.bundles)
        args.out.write_text(json.dumps({"argv": sys.argv, "seconds": time.time() - start,
                                        "config": settings.config.model_dump(mode="json"),
                                        "rows": rows}, indent=1))
        print(f"seed {seed} done, {time.time() - start:.0f} s", flush=True)
    summary = spread_summary(rows)
    markdown = spread_markdown(summary)
    args.out.write_text(json.dumps({"argv": sys.argv, "seconds": time.time() - start,
                                    "config": settings.config.model_dump(mode="json"),
                                    "rows": rows, "summary": summary}, indent=1))
    print(markdown)
    for s in summary:
        if s["label"] == "none" and s["metric"] in ("psnr_marked", "sr_marked", "fpr_clean_B"):
            print(f"{s['stage']} {s['metric']}: {s['mean']:.3f} [{s['ci_low']:.3f}, "
                  f"{s['ci_high']:.3f}] {[round(v, 3) for v in s['values']]}")
    print(f"{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
