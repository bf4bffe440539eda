"""Train ``pgd_signer``'s residual embedder for one key and measure PGD refining from it
(issue #17).

Usage (the model card's "Session ps9" embedder table)::

    OMP_NUM_THREADS=1 python scripts/pgd_signer_embedder.py --minutes 10 --messages 7 \\
        --weights /tmp/embedder.safetensors --baseline /tmp/levers.json \\
        --variant "emb0 pgd_steps=0" --variant "emb4 pgd_steps=4" \\
        --variant "plain4 pgd_steps=4 --no-embedder" --out /tmp/embedder.json

Training (``train_embedder``): the shipped bundle, the benchmark's key
(``neuralmark-benchmark``), the sample dataset's train split at 256² (95 photos, none held out),
``--messages`` (default every message), batches of ``--batch`` photos × ``--views`` views, for
``--minutes`` (or ``--steps``); an existing ``--weights`` file is reused instead. Then each
variant (config overrides of the shipped bundle, as in ``pgd_signer_embed_levers.py``; a
trailing ``--no-embedder`` signs from zero) signs the 15 held-out sample-test photos at 256²
with message 7, one photo per ``embed`` call (CPU and wall ms per call), 8-bit marks, then
``BENCHMARK_SUITE`` with the benchmark's draws (``suite_per_photo``), detection at p ≤ 1e-6.
``--baseline``: a ``pgd_signer_embed_levers.py`` output whose ``--baseline-variant`` (default
``shared``: today's signing) signed the same photos with the same key: the paired 95 %
t-intervals of each variant's per-photo differences to it are printed.
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
    ROOT,
    configured,
    paired_interval,
    per_photo_mean,
    suite_per_photo,
    summary,
)


def parse_variant(text: str) -> tuple[str, dict, bool]:
    """``"name field=json ... [--no-embedder]"`` → (name, overrides, with embedder)."""
    name, *pairs = text.split()
    use = "--no-embedder" not in pairs
    pairs = [p for p in pairs if p != "--no-embedder"]
    return name, {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}, use


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="embedder file (reused if there)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=100_000, help="training steps (at most)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--messages", type=int, nargs="*", default=None)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--limit", type=int, default=15, help="held-out photos")
    ap.add_argument("--baseline", type=Path, default=None)
    ap.add_argument("--baseline-variant", default="shared")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgd_signer_embedder.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from neuralmark.components.benchmark.images import load_heldout
    from neuralmark.components.data.manifest import load_split
    from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
    from neuralmark.components.imageio import quantize_8bit
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.pgd_signer import PGDSigner
    from neuralmark.components.methods.pgd_signer.embedder import (
        load_embedder,
        save_embedder,
        train_embedder,
    )
    from neuralmark.components.metrics import psnr

    manifest = build_sample_dataset(ROOT / "data" / "sample", SampleDataConfig())
    key = WatermarkKey("neuralmark-benchmark", 7)  # the benchmark's key
    shipped = PGDSigner.from_bundle(BUNDLE)
    results: dict = {"key": "neuralmark-benchmark/7", "variants": {}}
    if args.weights.is_file():
        net = load_embedder(args.weights)
        results["training"] = {"reused": str(args.weights)}
    else:
        train = load_split(manifest, "train", size=shipped.config.working_size)
        log: list[dict] = []

        def note(rec: dict) -> None:
            log.append(rec)
            print(f"train {json.dumps(rec)}", flush=True)

        cpu = time.process_time()
        net = train_embedder(
            shipped,
            key,
            train,
            args.steps,
            args.batch,
            args.views,
            args.lr,
            args.width,
            time_budget_s=60 * args.minutes,
            messages=args.messages,
            log=note,
        )
        save_embedder(net, args.weights)
        results["training"] = {
            "photos": len(train),
            "log": log,
            "cpu_s": time.process_time() - cpu,
            "bytes": args.weights.stat().st_size,
            "params": sum(p.numel() for p in net.parameters()),
        }
    clean = load_heldout(manifest, 256, args.limit).images
    for text in args.variant:
        name, overrides, use = parse_variant(text)
        m = configured(shipped, overrides)
        m.decoder_for(key)
        marked, wall, cpu = [], [], []
        for i in range(len(clean)):
            t, c = time.perf_counter(), time.process_time()
            marked.append(m.embed(clean[i : i + 1], key, embedder=net if use else None))
            wall.append(1000 * (time.perf_counter() - t))
            cpu.append(1000 * (time.process_time() - c))
        marked = quantize_8bit(torch.cat(marked))
        rec = {
            "overrides": overrides,
            "embedder": use,
            "photos": len(clean),
            "ms": wall,
            "cpu_ms": cpu,
            "steps": [m.config.pgd_steps] * len(clean),
            "psnr": psnr(marked, clean).tolist(),
            "suite": suite_per_photo(m, marked, key),
        }
        results["variants"][name] = rec
        row = {**summary(rec), "cpu_ms_256_median": statistics.median(cpu)}
        print(f"{name}: {json.dumps(row)}", flush=True)
    table = {}
    if args.baseline:
        base = json.loads(args.baseline.read_text())["variants"][args.baseline_variant]
        results["variants"]["today"] = base
        worst = summary(base)["worst_attack"]
        for name, rec in results["variants"].items():
            row = {
                **summary(rec),
                "cpu_ms_256_median": statistics.median(rec.get("cpu_ms", [float("nan")])),
            }
            row["paired_mean_diff"] = paired_interval(
                [a - b for a, b in zip(per_photo_mean(rec), per_photo_mean(base), strict=True)]
            )
            row[f"paired_diff_on_{worst}"] = paired_interval(
                [
                    a - b
                    for a, b in zip(
                        rec["suite"][worst]["bit_accuracy"],
                        base["suite"][worst]["bit_accuracy"],
                        strict=True,
                    )
                ]
            )
            table[name] = row
    results["summary"] = table
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
