"""trigger_key capacity per trigger size on the tiny host (issue #13; the seed: 20² … 600²).

The tiny pipeline's host (grey DnCNN 5×16 by default, σ = 25/255, 300 host steps, the tiny
sample set: 128², 4 crops per photo, 12 procedural) is trained once; then, for every size,
a fresh mark is embedded into it with the tiny schedule (200 steps, λ from ``--lam``) and
calibrated on ``--keys`` random keys (``analysis.capacity_rows``: no marked-host pool).
Prints the capacity table (fidelity cost vs the same fine-tuning at λ = 0, ℓ_w per pixel,
η, marked / unmarked verified) and the seconds each size took.

    python scripts/measure_trigger_key_capacity.py --sample /tmp/sample-tiny \
        --sizes 20,40,80,160,320,600
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.data.sample import (  # noqa: E402
    SampleDataConfig,
    build_sample_dataset,
)
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key import analysis, tables  # noqa: E402
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--sizes", default="20,40,80,160,320,600")
    ap.add_argument("--arch", default="dncnn")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--lam", type=float, default=1e-2)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    manifest = build_sample_dataset(args.sample, SampleDataConfig(size=128, crops_per_photo=4,
                                                                  n_procedural=12))
    m = build("trigger_key", {"channels": 1, "arch": args.arch, "depth": args.depth,
                              "lam": args.lam, "host_steps": 300, "embed_steps": 200,
                              "visualizer_steps": 0, "calibration_keys": args.keys})
    fit = m.fit(task_images(manifest))
    print(f"host {args.arch}×{args.depth}: noisy {fit['input_psnr']:.2f} dB, unmarked "
          f"{fit['host_psnr']:.2f} dB ({time.time() - start:.0f} s)", flush=True)
    key = WatermarkKey("neuralmark-eval")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        t0 = time.time()
        rows += analysis.capacity_rows(m, key, [size], args.keys)
        print(f"{size}: {time.time() - t0:.0f} s", flush=True)
        print(tables.capacity_table(rows), flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
