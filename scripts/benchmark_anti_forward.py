"""Throughput of the anti_forward stamp and scanner on this CPU: stamp, scan, smoothed scan.

For every image size (256², 400²) and batch size (1, 32) it times:

- ``stamp``: ``method.embed(images, key)``;
- ``scan``: ``method.verify`` with smoothing off (the calibrated scan test only);
- ``certify_n<N>``: ``method.certify(images, n=N)``, the cost randomized
  smoothing adds (``n0`` selection + N estimation noisy scanner passes per
  image), for each N of ``--smoothing-n`` (100 and 1000), so the growth with
  the number of noise samples is visible;
- ``scan_smoothed_n<N>``: ``method.verify`` with smoothing on, on stamped
  images, when the model is calibrated and noise-trained (an uncalibrated model
  never reaches the certification step, so timing it would only repeat
  ``scan``); the share of verdicts that carried a certificate is printed.

It loads the shipped bundle ``components/pretrained/anti_forward`` when present,
else builds the method from its default config and warns that the weights are
untrained (timings are still meaningful: same networks, same sizes). Images are
photographs shipped with scikit-image, resized to each size. Times are the
median of ``--repeats`` runs after one warm-up run; peak memory is the process's
maximum resident set size so far (``resource.getrusage``), so it only grows
down the table. Each row also gives CPU milliseconds per image
(``time.process_time``): on a shared machine wall time also counts the time
other processes hold the cores, CPU time does not. The load average is printed
at the start and the end; run it on a quiet machine for final wall figures.

Usage: ``python scripts/benchmark_anti_forward.py [--sizes 256,400] [--batches 1,32]
[--smoothing-n 100,1000] [--repeats 5] [--threads 1] [--set KEY=VALUE] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from neuralmark.components.methods import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build, load_bundle  # noqa: E402

BUNDLE = ROOT / "components/pretrained/anti_forward"
#: issue #5: per 256² image at batch 32, without smoothing
TARGETS_MS = {"stamp": 20.0, "scan": 10.0}
TARGET_SIZE, TARGET_BATCH = 256, 32


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _override(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value (bare words stay strings)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def photos(size: int, count: int) -> torch.Tensor:
    """``count`` photographs (scikit-image's bundled ones, cycled) as count×3×size×size."""
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
    base = []
    for name in names:
        img = torch.from_numpy(getattr(data, name)()).float() / 255  # h w c
        t = img.permute(2, 0, 1)[None, :3]  # 1 3 h w
        side = min(t.shape[-2:])
        t = t[..., :side, :side]
        base.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False).clamp(0, 1))
    return torch.cat([base[i % len(base)] for i in range(count)])  # count 3 size size


def _anti_forward_class() -> type:
    """The method class without registry discovery (which imports every method module)."""
    import importlib

    module = importlib.import_module("neuralmark.components.methods.anti_forward")
    return next(v for v in vars(module).values()
                if isinstance(v, type) and getattr(v, "key", None) == "anti_forward")


def load_method(bundle: Path, variant: str | None) -> tuple[Any, bool]:
    """The shipped bundle, or the default config (untrained) with a warning.

    Goes through the registry (``load_bundle`` / ``build``); if another method
    module fails to import (a shared checkout mid-edit), falls back to the
    anti_forward class itself, which is what the registry would return.
    """
    if (bundle / "config.json").is_file():
        try:
            method = load_bundle(bundle)
        except ImportError:
            method = _anti_forward_class().from_bundle(bundle)
        if variant and method.config.variant != variant:
            method = method.with_config(variant=variant)
        return method, True
    warnings.warn(f"no bundle at {bundle}: building anti_forward from its default config; "
                  "the weights are UNTRAINED (timings are still meaningful, detection is not)",
                  stacklevel=2)
    values = {"variant": variant} if variant else {}
    try:
        return build("anti_forward", values), False
    except ImportError:
        cls = _anti_forward_class()
        return cls(cls.Config(**values)), False


def time_call(fn: Callable[[], Any], repeats: int,
              warmup: int = 1) -> tuple[float, float, Any]:
    """Median wall seconds and median CPU seconds of ``fn()`` over ``repeats`` runs.

    CPU seconds (``time.process_time``, all threads of this process) are what a
    run costs when the machine is shared: wall time then also counts the time
    other processes hold the cores.
    """
    out = None
    for _ in range(warmup):
        out = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--variant", choices=("baseline", "rs", "rs_aug"), default=None,
                    help="override the bundle's variant (or pick the default config's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (JSON value), e.g. --set score_noise_samples=1")
    ap.add_argument("--sizes", type=_ints, default=[256, 400])
    ap.add_argument("--batches", type=_ints, default=[1, 32])
    ap.add_argument("--smoothing-n", type=_ints, default=[100, 1000],
                    help="estimation noise samples to time certification at ('' skips)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per stamp/scan figure")
    ap.add_argument("--smoothing-repeats", type=int, default=1,
                    help="timed runs per smoothing figure (they are long)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 by default: the machine is shared)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    method, trained = load_method(args.bundle, args.variant)
    if args.set:
        method = method.with_config(**dict(_override(item) for item in args.set))
    c = method.config
    key = WatermarkKey("benchmark-secret", 1 if c.message_bits else None)
    calibrated = bool(getattr(method, "calibration", {}).get("clean_statistics"))
    plain = method.with_config(smoothing=False)
    noise_trained = c.train_sigma > 0 and c.sigma > 0
    source = f"bundle {args.bundle}" if trained else "(default config, UNTRAINED)"
    print(f"anti_forward {source}: variant {c.variant}, working size {c.working_size}², "
          f"σ {c.sigma:g}, n0 {c.n0}, calibrated {calibrated}")
    load_start = os.getloadavg()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"load average {load_start[0]:.2f} (other processes share the CPU)")

    results: list[dict[str, Any]] = []
    header = (f"{'size':>5} {'batch':>5}  {'operation':<20}{'ms/image':>10}{'images/s':>10}"
              f"{'CPU ms/image':>14}{'peak RSS MB':>13}  target")
    print(header)
    print("-" * len(header))

    def record(size: int, batch: int, op: str, seconds: float, cpu_seconds: float,
               note: str = "", **extra: Any) -> None:
        ms = seconds / batch * 1000
        cpu_ms = cpu_seconds / batch * 1000
        target = TARGETS_MS.get(op) if (size, batch) == (TARGET_SIZE, TARGET_BATCH) else None
        verdict = "" if target is None else (
            f"≤ {target:g} ms: wall {'met' if ms <= target else 'NOT met'}, "
            f"CPU {'met' if cpu_ms <= target else 'NOT met'}")
        row = {"size": size, "batch": batch, "operation": op, "ms_per_image": ms,
               "images_per_second": batch / seconds, "seconds_per_call": seconds,
               "cpu_ms_per_image": cpu_ms,
               "peak_rss_mb": peak_rss_mb(), "target_ms": target,
               "target_met_wall": None if target is None else ms <= target,
               "target_met_cpu": None if target is None else cpu_ms <= target, **extra}
        results.append(row)
        print(f"{size:>5} {batch:>5}  {op:<20}{ms:>10.2f}{batch / seconds:>10.1f}"
              f"{cpu_ms:>14.2f}{row['peak_rss_mb']:>13.0f}  {verdict}{note}", flush=True)

    for size in args.sizes:
        for batch in args.batches:
            images = photos(size, batch)
            seconds, cpu, stamped = time_call(lambda x=images: method.embed(x, key),
                                              args.repeats)
            record(size, batch, "stamp", seconds, cpu)
            seconds, cpu, _ = time_call(lambda x=stamped: plain.verify(x, key), args.repeats)
            record(size, batch, "scan", seconds, cpu)
            if not noise_trained:
                continue
            for n in args.smoothing_n:
                seconds, cpu, _ = time_call(
                    lambda n=n, x=stamped: method.certify(
                        x, n=n, generator=torch.Generator().manual_seed(0)),
                    args.smoothing_repeats, warmup=0)
                record(size, batch, f"certify_n{n}", seconds, cpu, noise_samples=c.n0 + n)
                if not calibrated:
                    continue
                smoothed = method.with_config(smoothing=True, n=n)
                seconds, cpu, verdicts = time_call(
                    lambda s=smoothed, x=stamped: s.verify(x, key), args.smoothing_repeats,
                    warmup=0)
                share = sum("certificate" in v.extra for v in verdicts) / len(verdicts)
                record(size, batch, f"scan_smoothed_n{n}", seconds, cpu,
                       note=f"  ({share:.0%} of images certified)", certified_share=share)
    load_end = os.getloadavg()
    print(f"load average at the end: {load_end[0]:.2f}")
    if noise_trained and not calibrated:
        print("note: the model is not calibrated, so verify never reaches certification; "
              "certify_n* rows are the whole cost smoothing adds to a scan.")
    if not noise_trained:
        print(f"note: variant {c.variant} has no noise (σ = 0 at training): no smoothing rows.")

    out = {"method": "anti_forward", "bundle": str(args.bundle) if trained else None,
           "trained": trained, "calibrated": calibrated,
           "config": c.model_dump(mode="json"), "overrides": args.set,
           "threads": torch.get_num_threads(),
           "cpu": {"processor": platform.processor() or platform.machine(),
                   "cores": os.cpu_count()},
           "torch": torch.__version__, "repeats": args.repeats,
           "load_average": {"start": load_start[0], "end": load_end[0]},
           "smoothing_repeats": args.smoothing_repeats,
           "targets_ms": {f"{op}_{TARGET_SIZE}_batch{TARGET_BATCH}": ms
                          for op, ms in TARGETS_MS.items()},
           "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
