"""Embed-speed levers of ``pgd_signer``, each measured for time and quality (issue #17).

Usage (the model card's "Embed speed (ps6)" levers table; session ps7's variants are
``"blockdct eot.jpeg_impl=\"blockdct\""`` and ``eot_attacks_per_view=2``)::

    OMP_NUM_THREADS=1 nice -n 10 python scripts/pgd_signer_embed_levers.py --limit 16 \\
        --variant "only_on eot_only_on=true" --variant "stop2 eot_only_on=true early_stop=2" \\
        --cache /tmp/levers --out /tmp/levers.json
    # speed, the variants taking turns (quality not re-measured):
    OMP_NUM_THREADS=1 nice -n 10 python scripts/pgd_signer_embed_levers.py --timing-only \
        --interleaved-rounds 3 --timing-1024 0 --variant "only_on eot_only_on=true" \
        --out /tmp/timing.json

Every variant is the shipped bundle with config changes (``with_config``: the same weights,
the same keyed decoder); ``today`` (no change) always runs first. Per variant, on the
first ``--limit`` held-out sample-test photos at 256² (``load_heldout``, the benchmark's
photos), one photo per ``embed`` call as a user signs one: the wall ms of each call (the
key's decoder built before, its cost reported once), the PGD steps it ran (decoder
forwards), PSNR of the 8-bit mark, and for each entry of ``BENCHMARK_SUITE`` the bit
accuracy and detection (``verify``, p ≤ the method's alpha 1e-6) per photo, with the attack
draws ``run_suite`` makes (same seeds, batches of 8), so the means are the benchmark's.
Then ``--timing-1024`` photos of the same split at 1024² are embedded and timed.
The decoder and the verification do not change between variants, so neither does the
false-positive rate (measured in the card's benchmark section); it is not re-measured here.
The paired 95 % t-interval of each variant's per-photo difference to ``today`` (mean
over the 11 attacks, and the attack worst for ``today``) is printed beside the means.
Wall times of variants run one after the other follow the machine's load;
``--interleaved-rounds R`` times the variants in turns (wall and CPU ms, ``<out>.timing.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "components" / "pretrained" / "pgd_signer"


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name field=json field=json"`` → (name, overrides); ``eot.jpeg_impl=…`` names a
    field of a nested config."""
    name, *pairs = text.split()
    return name, {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}


def configured(shipped, overrides: dict):
    """The shipped bundle with ``overrides`` (dotted keys change one field of a nested
    config and keep its others)."""
    if not overrides:
        return shipped
    changes: dict = {}
    for key, value in overrides.items():
        head, _, field = key.partition(".")
        if field:
            nested = changes.setdefault(head, getattr(shipped.config, head).model_dump())
            nested[field] = value
        else:
            changes[key] = value
    return shipped.with_config(**changes)


def timed_embeds(m, images: torch.Tensor, key) -> tuple[torch.Tensor, list[float], list[int]]:
    """Embed one photo per call → (marked N×3×H×W, ms per call, PGD steps per call)."""
    decoder = m.decoder_for(key)
    calls = [0]
    hook = decoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    out, ms, steps = [], [], []
    try:
        for i in range(len(images)):
            calls[0] = 0
            t = time.perf_counter()
            out.append(m.embed(images[i:i + 1], key))
            ms.append(1000 * (time.perf_counter() - t))
            steps.append(calls[0])
    finally:
        hook.remove()
    return torch.cat(out), ms, steps


def interleaved_timing(methods: dict, images: dict[int, torch.Tensor], key, rounds: int
                       ) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU (process) ms of one-photo ``embed`` calls, the variants taking turns
    (photo ``r`` of each size in round ``r``), so a change of machine load hits them alike."""
    out: dict[str, dict[str, list[float]]] = {name: {} for name in methods}
    for r in range(rounds):
        for size, photos in images.items():
            x = photos[r % len(photos):r % len(photos) + 1]
            for name, m in methods.items():
                m.decoder_for(key)
                wall, cpu = time.perf_counter(), time.process_time()
                m.embed(x, key)
                out[name].setdefault(f"wall_ms_{size}", []).append(
                    1000 * (time.perf_counter() - wall))
                out[name].setdefault(f"cpu_ms_{size}", []).append(
                    1000 * (time.process_time() - cpu))
    return out


def suite_per_photo(m, marked: torch.Tensor, key,
                    batch_size: int = 8, seed: int = 0) -> dict[str, dict[str, list]]:
    """Per attack label: per-photo bit accuracy and detection (run_suite's draws)."""
    from neuralmark.components.attacks.registry import (
        BENCHMARK_SUITE,
        attack_seed,
        build_attack,
        label,
    )

    out: dict[str, dict[str, list]] = {}
    for name, strengths in BENCHMARK_SUITE:
        for strength in strengths:
            attack = build_attack(name, strength)
            lab = label(name, strength)
            g = torch.Generator().manual_seed(attack_seed(seed, lab))
            acc, det = [], []
            for s in range(0, len(marked), batch_size):
                chunk = marked[s:s + batch_size]
                with torch.no_grad():
                    # one draw per batch, as run_suite makes it (it applies the same draw
                    # to the clean photos; their rows are not needed here)
                    attacked = attack.apply(chunk, attack.sample(len(chunk), g))
                    verdicts = m.verify(attacked, key)
                acc += [float(v.bit_accuracy) for v in verdicts]
                det += [bool(v.detected) for v in verdicts]
            out[lab] = {"bit_accuracy": acc, "detected": det}
    return out


def paired_interval(diff: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences."""
    from scipy import stats

    n = len(diff)
    mean = statistics.fmean(diff)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diff) / n ** 0.5
    return mean, mean - half, mean + half


def summary(rec: dict) -> dict:
    """Means over photos: PSNR, clean, per attack, mean and worst over the 11 attacks."""
    attacks = {k: v for k, v in rec["suite"].items() if k != "none"}
    per_attack = {k: statistics.fmean(v["bit_accuracy"]) for k, v in attacks.items()}
    worst = min(per_attack, key=per_attack.get)
    return {"embed_ms_256_median": statistics.median(rec["ms"]),
            "embed_ms_256_mean": statistics.fmean(rec["ms"]),
            "steps_mean": statistics.fmean(rec["steps"]),
            "embed_ms_1024_median": (statistics.median(rec["ms_1024"])
                                     if rec.get("ms_1024") else None),
            "psnr": statistics.fmean(rec["psnr"]),
            "clean_bit_accuracy": statistics.fmean(rec["suite"]["none"]["bit_accuracy"]),
            "clean_detected": sum(rec["suite"]["none"]["detected"]),
            "mean_bit_accuracy": statistics.fmean(per_attack.values()),
            "worst_attack": worst, "worst_bit_accuracy": per_attack[worst],
            "mean_detection": statistics.fmean(
                statistics.fmean(v["detected"]) for v in attacks.values()),
            "per_attack": per_attack}


def per_photo_mean(rec: dict) -> list[float]:
    accs = [v["bit_accuracy"] for k, v in rec["suite"].items() if k != "none"]
    return [statistics.fmean(col) for col in zip(*accs, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=16, help="held-out photos at 256²")
    ap.add_argument("--variant", action="append", default=[],
                    help='"name field=json ..." (repeatable); "today" always runs first')
    ap.add_argument("--timing-1024", type=int, default=2, help="photos timed at 1024²")
    ap.add_argument("--interleaved-rounds", type=int, default=0,
                    help="then time every variant in turns, this many rounds at 256² and "
                         "1024² (wall and CPU ms)")
    ap.add_argument("--timing-only", action="store_true",
                    help="only the interleaved timing (quality from --cache, if there)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder of per-variant results: a variant already there is reused")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgd_signer_embed_levers.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from neuralmark.components.benchmark.images import load_heldout
    from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
    from neuralmark.components.imageio import quantize_8bit
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.pgd_signer import PGDSigner
    from neuralmark.components.metrics import psnr

    manifest = build_sample_dataset(ROOT / "data" / "sample", SampleDataConfig())
    clean = load_heldout(manifest, 256, args.limit).images
    big = (load_heldout(manifest, 1024, args.timing_1024).images
           if args.timing_1024 else None)
    key = WatermarkKey("neuralmark-benchmark", 7)  # the benchmark's key
    shipped = PGDSigner.from_bundle(BUNDLE)
    variants = [("today", {})] + [parse_variant(v) for v in args.variant]
    results: dict = {"photos": len(clean), "key": "neuralmark-benchmark/7", "variants": {}}
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    for name, overrides in [] if args.timing_only else variants:
        cached = args.cache / f"{name}.json" if args.cache else None
        if cached and cached.is_file():
            rec = json.loads(cached.read_text())
            if rec["overrides"] == overrides and rec["photos"] == len(clean):
                results["variants"][name] = rec
                print(f"{name}: cached", flush=True)
                continue
        m = configured(shipped, overrides)
        t = time.perf_counter()
        m.decoder_for(key)
        rec = {"overrides": overrides, "photos": len(clean),
               "key_decoder_ms": 1000 * (time.perf_counter() - t)}
        marked, rec["ms"], rec["steps"] = timed_embeds(m, clean, key)
        marked = quantize_8bit(marked)
        rec["psnr"] = psnr(marked, clean).tolist()
        rec["suite"] = suite_per_photo(m, marked, key)
        if big is not None:
            _, rec["ms_1024"], rec["steps_1024"] = timed_embeds(m, big, key)
        results["variants"][name] = rec
        if cached:
            cached.write_text(json.dumps(rec))
        print(f"{name}: {json.dumps(summary(rec))}", flush=True)

    if args.interleaved_rounds:
        methods = {name: configured(shipped, o) for name, o in variants}
        photos = {256: clean, 1024: load_heldout(manifest, 1024, args.interleaved_rounds).images}
        results["timing"] = interleaved_timing(methods, photos, key, args.interleaved_rounds)
        print(json.dumps({n: {k: statistics.median(v) for k, v in t.items()}
                          for n, t in results["timing"].items()}), flush=True)
        args.out.with_suffix(".timing.json").write_text(json.dumps(results["timing"]))
    if "today" not in results["variants"]:
        args.out.write_text(json.dumps(results, indent=1))
        return
    base = results["variants"]["today"]
    base_worst = summary(base)["worst_attack"]
    table = {}
    for name, rec in results["variants"].items():
        row = summary(rec)
        row["paired_mean_diff"] = paired_interval(
            [a - b for a, b in zip(per_photo_mean(rec), per_photo_mean(base), strict=True)])
        row[f"paired_diff_on_{base_worst}"] = paired_interval(
            [a - b for a, b in zip(rec["suite"][base_worst]["bit_accuracy"],
                                   base["suite"][base_worst]["bit_accuracy"], strict=True)])
        table[name] = row
    results["summary"] = table
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
