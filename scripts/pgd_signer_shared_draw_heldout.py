"""Shared vs independent EoT draw of ``pgd_signer``'s embed on a larger held-out set (issue #17).

Usage (the model card's "Session ps9" table)::

    OMP_NUM_THREADS=1 nice -n 5 python scripts/pgd_signer_shared_draw_heldout.py \\
        --photos 60 --marks /tmp/ps9-marks --out /tmp/ps9-shared.json

The photos are ``forgery_targets(n, photo_share=1.0)``: random 256² crops of the 20 bundled
scikit-image / scikit-learn photos under the targets' own seed (17; the sample dataset uses 0),
spread evenly over the photos, so none is a sample-dataset (training or whitening) image. The
shipped bundle signs each photo twice, one photo per ``embed`` call, with
``eot_shared_draw=true`` (``shared``, the default since ps8) and ``false`` (``independent``),
the two taking turns (which goes first alternates), so a change of the machine's load hits both
alike. Each 8-bit mark is stored under ``--marks`` as it is made (a re-run resumes; stopping
early leaves a smaller paired set, ``--evaluate-only`` scores it). Then ``BENCHMARK_SUITE`` with
the benchmark's draws per photo (``suite_per_photo`` of ``pgd_signer_embed_levers.py``), key
``neuralmark-benchmark`` / 7, detection at p ≤ 1e-6; printed: means, and the paired 95 %
t-intervals (shared − independent) of the per-photo mean bit accuracy and the per-photo mean
detection over the 11 attacks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from pgd_signer_embed_levers import (  # the sibling script (scripts/ on sys.path)
    BUNDLE,
    configured,
    paired_interval,
    per_photo_mean,
    suite_per_photo,
    summary,
)

VARIANTS = {"shared": {"eot_shared_draw": True}, "independent": {"eot_shared_draw": False}}


def per_photo_detection(rec: dict) -> list[float]:
    """Per photo: the share of the 11 attacks under which it is still detected."""
    dets = [v["detected"] for k, v in rec["suite"].items() if k != "none"]
    return [statistics.fmean(map(float, col)) for col in zip(*dets, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=60, help="held-out crops (20 bundled photos)")
    ap.add_argument("--marks", type=Path, required=True, help="folder of the marks (resumable)")
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="score the photos already marked by both variants; sign nothing",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgd_signer_shared_draw.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from neuralmark.components.benchmark.forgery_targets import forgery_targets
    from neuralmark.components.imageio import quantize_8bit
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.pgd_signer import PGDSigner
    from neuralmark.components.metrics import psnr

    photos = forgery_targets(args.photos, 256, photo_share=1.0)
    key = WatermarkKey("neuralmark-benchmark", 7)  # the benchmark's key
    shipped = PGDSigner.from_bundle(BUNDLE)
    methods = {name: configured(shipped, o) for name, o in VARIANTS.items()}
    args.marks.mkdir(parents=True, exist_ok=True)
    for m in methods.values():
        m.decoder_for(key)
    for i in [] if args.evaluate_only else range(len(photos.images)):
        order = list(methods) if i % 2 == 0 else list(methods)[::-1]
        for name in order:
            path = args.marks / f"{name}-{i:03d}.pt"
            if path.is_file():
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            marked = quantize_8bit(methods[name].embed(photos.images[i : i + 1], key))
            timing = {
                "wall_ms": 1000 * (time.perf_counter() - wall),
                "cpu_ms": 1000 * (time.process_time() - cpu),
            }
            torch.save({"marked": marked, **timing}, path)
            print(f"{i} {photos.names[i]} {name}: {json.dumps(timing)}", flush=True)

    done = [
        i
        for i in range(len(photos.images))
        if all((args.marks / f"{n}-{i:03d}.pt").is_file() for n in methods)
    ]
    clean = photos.images[done]
    results: dict = {
        "photos": len(done),
        "names": [photos.names[i] for i in done],
        "key": "neuralmark-benchmark/7",
        "variants": {},
    }
    for name, m in methods.items():
        saved = [torch.load(args.marks / f"{name}-{i:03d}.pt") for i in done]
        marked = torch.cat([s["marked"] for s in saved])
        rec = {
            "overrides": VARIANTS[name],
            "photos": len(done),
            "ms": [s["wall_ms"] for s in saved],
            "cpu_ms": [s["cpu_ms"] for s in saved],
            "steps": [shipped.config.pgd_steps] * len(done),
            "psnr": psnr(marked, clean).tolist(),
            "suite": suite_per_photo(m, marked, key),
        }
        results["variants"][name] = rec
    shared, indep = results["variants"]["shared"], results["variants"]["independent"]
    table = {
        name: {**summary(rec), "cpu_ms_256_median": statistics.median(rec["cpu_ms"])}
        for name, rec in results["variants"].items()
    }
    worst = table["independent"]["worst_attack"]
    table["shared_minus_independent"] = {
        "mean_bit_accuracy": paired_interval(
            [a - b for a, b in zip(per_photo_mean(shared), per_photo_mean(indep), strict=True)]
        ),
        "mean_detection": paired_interval(
            [
                a - b
                for a, b in zip(
                    per_photo_detection(shared), per_photo_detection(indep), strict=True
                )
            ]
        ),
        f"bit_accuracy_on_{worst}": paired_interval(
            [
                a - b
                for a, b in zip(
                    shared["suite"][worst]["bit_accuracy"],
                    indep["suite"][worst]["bit_accuracy"],
                    strict=True,
                )
            ]
        ),
        "clean_detected_both_or_neither": sum(
            a == b
            for a, b in zip(
                shared["suite"]["none"]["detected"], indep["suite"]["none"]["detected"], strict=True
            )
        ),
    }
    results["summary"] = table
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
