"""pgd_signer's keyed decoder vs the unkeyed public one: quality and forgery (issue #17).

Usage (the model card's forgery table)::

    python scripts/pgd_signer_forgery_keyed_vs_public.py 8 keyed 1
    python scripts/pgd_signer_forgery_keyed_vs_public.py 8 public 1

Arguments: held-out photos N, ``keyed`` or ``public``, ``keyed_layers``. Builds the shipped
recipe (0 EM rounds, whitened, 36 dB), marks N sample-test photos, and runs the benchmark's
forgery attacks (copy with the public decoder: keyed only, the unkeyed figure is issue
#17's 5/5; residual copy; public-feature mean shift) with the other N − 1 marked photos as
the attacker's material.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from neuralmark.components.benchmark.estimation_forgery import estimation_forgery_rows
from neuralmark.components.benchmark.forgery import copy_attack_rows
from neuralmark.components.data.manifest import load_split
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
from neuralmark.components.methods import build
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    keyed = sys.argv[2] != "public" if len(sys.argv) > 2 else True
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    manifest = build_sample_dataset(ROOT / "data" / "sample", SampleDataConfig())
    train = load_split(manifest, "train", size=256)
    test = load_split(manifest, "test", size=256, limit=n)
    m = build("pgd_signer", {"working_size": 256, "input_stride": 4, "psnr_target": 36.0,
                             "pgd_steps": 60, "eot_samples": 4, "width": 24, "rounds": 0,
                             "keyed_decoder": keyed, "keyed_layers": layers})
    m.fit_whitening(train, generator=torch.Generator().manual_seed(0))
    m.set_whitening_set(train)
    key = WatermarkKey("victim-secret", 7)
    start = time.time()
    marked = (m.embed(test, key).clamp(0, 1) * 255).round() / 255
    print("embed s/img", (time.time() - start) / n, flush=True)
    v = m.verify(marked, key)
    print("psnr", float(psnr(marked, test).mean()), "bitacc", sum(x.bit_accuracy for x in v) / n,
          "det", sum(x.detected for x in v) / n, flush=True)
    print("clean det", sum(x.detected for x in m.verify(test, key)), flush=True)
    print("other-key det", sum(x.detected for x in m.verify(marked, WatermarkKey("other", 7))))
    budget = float(psnr(marked, test).mean())
    base = {"method": "pgd_signer", "family": "neuralmark"}
    rows = copy_attack_rows(m, test, marked, key, base) if keyed else []
    rows += estimation_forgery_rows(m, test, marked, key, budget, base)
    for r in rows:
        print(r["label"], r["metric"], r["value"], r["note"], flush=True)


if __name__ == "__main__":
    main()
