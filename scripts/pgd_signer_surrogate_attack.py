"""The surrogate-learning attack on pgd_signer's shipped (keyed) bundle (issue #17).

Usage (the model card's "Surrogate-learning attack" table)::

    OMP_NUM_THREADS=1 nice -n 5 python scripts/pgd_signer_surrogate_attack.py \\
        --sources 10 --targets 64 --fresh 20 --out /tmp/surrogate.json

The attacker holds ``--sources`` held-out sample-test photos marked under the victim's key,
their clean originals, the public files, and (generously) the victim's keyed word; it
trains a surrogate of the keyed decoder (``benchmark.surrogate_forgery``), forges
``--targets`` clean photos (every fifth of ``benchmark.forgery_targets(5 · targets)``: crops
and procedural images) and removes the mark from its own marked photos and from ``--fresh``
other photos marked under the key (targets it never saw). ``--control`` adds the same PGD
against the untrained surrogate (0 steps): what training bought. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from neuralmark.components.benchmark.forgery_targets import forgery_targets
from neuralmark.components.benchmark.surrogate_forgery import surrogate_rows
from neuralmark.components.benchmark.victim_marks import heldout_photos, victim_marks
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.pgd_signer import PGDSigner
from neuralmark.components.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "components" / "pretrained" / "pgd_signer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--targets", type=int, default=64)
    ap.add_argument("--fresh", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--pgd-steps", type=int, default=100)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgd_signer_surrogate.json"))
    ap.add_argument("--cache", type=Path, default=None,
                    help="safetensors file keeping the marked photos between runs (marking "
                         "is most of the run's time on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}

    def save(note: str) -> None:
        out["elapsed_s"] = round(time.time() - started, 1)
        args.out.write_text(json.dumps(out, indent=1))
        print(f"[{out['elapsed_s']:.0f} s] {note}", flush=True)

    m = PGDSigner.from_bundle(BUNDLE)
    clean = heldout_photos(ROOT / "data" / "sample", args.sources)
    key = WatermarkKey("victim-secret", 7)
    pool = forgery_targets(5 * args.targets, 256)
    targets = pool.images[::5]
    victim = victim_marks(m, key, clean, pool.images[2::5][:args.fresh], args.cache)
    marked, fresh = victim.marked, victim.others_marked
    budget = float(psnr(marked, clean).mean())
    out["setup"] = {"budget_db": budget, "sources": len(clean), "targets": len(targets),
                    "target_crops": sum(n.startswith("crop:") for n in pool.names[::5]),
                    "fresh_marked": 0 if fresh is None else len(fresh),
                    "fresh_psnr": None if fresh is None else
                    float(psnr(fresh, pool.images[2::5][:args.fresh]).mean())}
    save(f"setup {out['setup']}")
    base = {"method": "pgd_signer", "family": "neuralmark"}
    for name, steps in [("trained", args.train_steps)] + ([("control", 0)] if args.control
                                                          else []):
        t0 = time.time()
        rows = surrogate_rows(m, clean, marked, key, budget, base, targets, fresh=fresh,
                              train_steps=steps, pgd_steps=args.pgd_steps, views=args.views,
                              seed=args.seed)
        out["runs"][name] = {"rows": rows, "s": round(time.time() - t0, 1)}
        save(f"{name}: " + " | ".join(f"{r['label']} {r['metric']} {r['value']}"
                                      for r in rows))
    save("done")


if __name__ == "__main__":
    main()
