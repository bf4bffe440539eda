"""Benchmark ``prepare_dataset``: images/s and peak memory on a generated 1024² folder.

Usage::

    python scripts/benchmark_prepare.py [--n 2000] [--side 1024] [--size 400] [--workers N]

Images are procedural (smooth colour gradients + a random ellipse + grain,
JPEG quality 92, so decoding costs what a photo's would). Peak RSS is
``ru_maxrss`` of this process and, separately, of its largest child (the
pool workers).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralmark.components.data.datasets import PrepareConfig  # noqa: E402
from neuralmark.components.data.prepare import prepare_dataset  # noqa: E402


def generate(folder: Path, n: int, side: int, seed: int = 0) -> float:
    """Write ``n`` procedural ``side``² JPEGs into ``folder``; returns seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, side, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c0, c1, c2 = rng.random((3, 3), dtype=np.float32)
        img = (c0 * axis[None, :, None] + c1 * axis[:, None, None] + c2 * 0.5) / 2.0
        arr = np.clip(img * 255.0, 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
        ImageDraw.Draw(im).ellipse((x0, y0, x0 + side // 3, y0 + side // 4),
                                   fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im.save(folder / f"{i:05d}.jpg", quality=92)
    return time.perf_counter() - t0


def main() -> None:
    import torch

    torch.set_num_threads(1)  # the main process only streams; the pool does the work
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nm-bench-prepare-") as tmp:
        src = Path(tmp) / "images"
        gen_s = generate(src, args.n, args.side)
        config = PrepareConfig(size=args.size, workers=args.workers)
        report = prepare_dataset("image_folder", src, Path(tmp) / "out", config)
        again = prepare_dataset("image_folder", src, Path(tmp) / "out", config)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({
        "images": report.items, "source_side": args.side, "output_size": args.size,
        "workers": config.workers or "all available cores", "generate_seconds": round(gen_s, 1),
        "prepare_seconds": round(report.seconds, 1),
        "images_per_second": round(report.images_per_second, 1),
        "rerun_seconds": round(again.seconds, 2), "rerun_skipped": again.skipped,
        "peak_rss_main_mb": round(self_kb / 1024, 1),
        "peak_rss_largest_child_mb": round(child_kb / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
