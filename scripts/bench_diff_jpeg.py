"""Differentiable JPEGs of the EoT chain: kornia's codec against ``jpeg_blockdct`` (issue #17).

Usage (the pgd_signer model card, session ps7)::

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_diff_jpeg.py --limit 15 --out /tmp/jpeg.json

On the first ``--limit`` held-out sample-test photos at 256² (``load_heldout``, the
benchmark's photos, 8-bit), at qualities 50 / 75 / 90: the forward mean absolute error of
each codec to the other and to PIL's real JPEG at the same quality, and the cosine between
the two codecs' input gradients of a random projection of the output (one seeded N(0, 1)
weight per photo). Then the CPU ms of one forward + backward at 256², batch 1 and 4 (the
codecs taking turns, median of ``--repeats``), and kornia's own time split by operator
(``torch.profiler``, the ten largest by self CPU time), which says why it is slow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from neuralmark.components.attacks.image import JPEG

ROOT = Path(__file__).resolve().parents[1]


def agreement(codecs: dict, x: torch.Tensor, quality: float) -> dict:
    """Per-photo forward MAEs (to each other and to PIL) and gradient cosines."""
    q = torch.full((len(x),), quality)
    real = JPEG(quality).apply(x, {})  # PIL (libjpeg) round trip
    outs, grads = {}, {}
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(quality)))
    for name, codec in codecs.items():
        xg = x.clone().requires_grad_(True)
        y = codec(xg, q)
        grads[name] = torch.autograd.grad((y * w).sum(), xg)[0].flatten(1)
        outs[name] = y.detach()
    (a, ya), (b, yb) = outs.items()
    mae = lambda u, v: (u - v).abs().flatten(1).mean(1)  # noqa: E731
    cos = torch.nn.functional.cosine_similarity(grads[a], grads[b])
    return {f"mae_{a}_{b}": mae(ya, yb).tolist(), f"mae_{a}_pil": mae(ya, real).tolist(),
            f"mae_{b}_pil": mae(yb, real).tolist(), "mae_input_pil": mae(x, real).tolist(),
            "grad_cosine": cos.tolist()}


def timing(codecs: dict, size: int, batches: tuple[int, ...], repeats: int) -> dict:
    """Median CPU ms of forward + backward per codec and batch size, codecs in turns."""
    out: dict[str, list[float]] = {}
    for b in batches:
        x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        q = torch.linspace(50, 95, b)
        for r in range(repeats + 1):
            for name, codec in codecs.items():
                xg = x.clone().requires_grad_(True)
                t = time.process_time()
                codec(xg, q).sum().backward()
                if r:                                   # round 0 warms up
                    out.setdefault(f"{name}_b{b}", []).append(1000 * (time.process_time() - t))
    return {k: statistics.median(v) for k, v in out.items()}


def kornia_profile(size: int, batch: int) -> list[dict]:
    """kornia's codec, forward + backward, by operator (self CPU ms per call, share)."""
    import kornia
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(batch, 3, size, size, requires_grad=True)
    q = torch.linspace(50, 95, batch)
    kornia.enhance.jpeg_codec_differentiable(x, q).sum().backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            kornia.enhance.jpeg_codec_differentiable(x, q).sum().backward()
    rows = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in rows)
    top = sorted(rows, key=lambda e: -e.self_cpu_time_total)[:10]
    return [{"op": e.key, "calls_per_codec_call": e.count // 3,
             "self_cpu_ms": e.self_cpu_time_total / 3000,
             "share": e.self_cpu_time_total / total} for e in top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=15, help="held-out photos at 256²")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_diff_jpeg.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    import kornia

    from neuralmark.components.attacks.jpeg_codec import jpeg_blockdct
    from neuralmark.components.benchmark.images import load_heldout
    from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
    from neuralmark.components.imageio import quantize_8bit

    manifest = build_sample_dataset(ROOT / "data" / "sample", SampleDataConfig())
    photos = quantize_8bit(load_heldout(manifest, 256, args.limit).images)
    codecs = {"blockdct": jpeg_blockdct, "kornia": kornia.enhance.jpeg_codec_differentiable}
    result: dict = {"photos": len(photos), "agreement": {}, "summary": {}}
    for quality in (50.0, 75.0, 90.0):
        rec = agreement(codecs, photos, quality)
        result["agreement"][str(int(quality))] = rec
        result["summary"][str(int(quality))] = {
            **{k: statistics.fmean(v) for k, v in rec.items()},
            "grad_cosine_min": min(rec["grad_cosine"])}
    result["cpu_ms_fwd_bwd_256"] = timing(codecs, 256, (1, 4), args.repeats)
    result["kornia_profile_b4"] = kornia_profile(256, 4)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "agreement"}, indent=1))


if __name__ == "__main__":
    main()
