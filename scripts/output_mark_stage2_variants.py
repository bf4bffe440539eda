"""Stage-2 variants of output_mark scored on one shared matrix, per seed (issue #19).

Stage 1 and the attacker's cells do not depend on stage 2 (the cells train on stage 1's
B′), so for one seed this trains M, stage 1 and the nine cells once, then each stage-2
variant from the same stage 1 and scores every cell with its R — a fair comparison at
a fraction of the cost of one full run per variant. One torch thread, deterministic
algorithms (``reproducibility.pinned``). Rows (with ``seed`` and ``variant``) are
written after every variant::

    OMP_NUM_THREADS=1 python scripts/output_mark_stage2_variants.py --seed 0 \
        --variants '{"base": {}, "archs": {"stage2_archs": ["unet", "res9", "cnet"]}}' \
        --out runs/variants-seed0.json

Held-out: a cell whose architecture is in a variant's ``stage2_archs`` is *not* held out
for that variant (same arch and loss, other seed); report it as such.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from safetensors.torch import save_file

from neuralmark.components.attacks.surrogate import matrix_cells
from neuralmark.components.data import pairs
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.output_mark.matrix import (
    attack_pairs,
    cell_outputs,
    evaluation_rows,
)
from neuralmark.components.methods.output_mark.seeds import attacker_settings, seeded_config
from neuralmark.components.methods.output_mark.training import stage1_method, stage2_method
from neuralmark.runtime.settings import CODE_ROOT, resolve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="tiny")
    p.add_argument("--config", default="{}", help="JSON overrides of the output_mark config")
    p.add_argument("--variants", default='{"base": {}}',
                   help="JSON {name: stage-2 config overrides}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--save", type=Path, default=None,
                   help="folder for the stage-1 bundle and each variant's stage-2 bundle")
    args = p.parse_args(argv)

    settings = resolve("output_mark", args.profile,
                       config={**json.loads(args.config), "task": "derain"})
    manifest = settings.data.build(CODE_ROOT)
    size = settings.data.size
    train, groups, test = pairs.synthesised_pairs(manifest, "derain", size)
    key = WatermarkKey(settings.evaluation.key_secret)
    cfg = seeded_config(settings.config, args.seed)
    cells = matrix_cells()
    start = time.time()
    checkpoints: list[dict] = []  # the stopping rule's scores (config select_every)

    class Checkpoints:
        def on_metrics(self, step: int, metrics: dict) -> None:
            if any(k.startswith("select_") for k in metrics):
                checkpoints.append({"step": step, **metrics})

    stage1, stage1_metrics = stage1_method(train, cfg, key, [Checkpoints()], groups)
    print(f"stage 1 {time.time() - start:.0f} s", {k: v for k, v in stage1_metrics.items()
                                                   if k.startswith(("selected", "checkpoints"))},
          flush=True)
    if args.save is not None:
        stage1.to_bundle(args.save / "stage1")
    a, marked = attack_pairs(stage1, train)
    query, _ = stage1.working_pairs(test, "test pairs")
    outputs = [cell_outputs(marked, a, query, arch, loss, attacker_settings(cfg),
                            cfg.cpu_threads) for arch, loss in cells]
    print(f"cells {time.time() - start:.0f} s", flush=True)
    if args.save is not None:  # the cells' test outputs, to rescore without retraining
        save_file({f"{arch}_{loss}": o.contiguous() for (arch, loss), o in
                   zip(cells, outputs, strict=True)}, str(args.save / "cells.safetensors"))
    rows: list[dict] = []
    for name, over in json.loads(args.variants).items():
        variant = copy.deepcopy(stage1)
        variant.config = type(cfg).model_validate({**variant.config.model_dump(), **over})
        stage2, _ = stage2_method(variant, train)
        if args.save is not None:
            stage2.to_bundle(args.save / name)
        got = evaluation_rows(stage1, stage2, None, key, test, cells, outputs, [], None)
        rows += [{**r, "seed": args.seed, "variant": name} for r in got]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": sys.argv, "seconds": time.time() - start,
                                        "stage1": stage1_metrics, "checkpoints": checkpoints,
                                        "rows": rows}, indent=1))
        rates = {r["label"]: r["value"] for r in got
                 if r["metric"] == "success_rate" and r["stage"] == "stage2"}
        print(f"{name} {time.time() - start:.0f} s: " + ", ".join(
            f"{k.removeprefix('surrogate_')} {v:.2f}" for k, v in rates.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
